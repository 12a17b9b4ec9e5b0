"""Training that continues from an earlier model (a warm start) and the rounds it records."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.checkpoint import load_model, save_model
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train
from napari_medseg.training.warm import grown_state


def tiny(**overrides) -> TrainConfig:
    settings = dict(iterations=3, time_budget=None, base_channels=4, device="cpu", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def case():
    return make_synthetic_case(shape=(16, 24, 24), n_structures=2, seed=3)


@pytest.fixture(scope="module")
def first(case):
    """A model of the first round: only structure 1 painted."""
    annotation = case.annotation.copy()
    annotation[annotation == 3] = 0
    model = run_to_completion(train(case.image, annotation, tiny(), spacing=case.spacing))
    return model, annotation


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def test_a_warm_start_begins_from_the_earlier_weights(case, first, monkeypatch):
    model, annotation = first
    seen = {}
    import napari_medseg.training.optimisation as optimisation

    real_step = optimisation.Optimisation.step

    def step(self, images, targets, lr):  # the weights as the first step finds them
        seen.setdefault("state", {k: v.clone() for k, v in self.network.state_dict().items()})
        return real_step(self, images, targets, lr)

    monkeypatch.setattr(optimisation.Optimisation, "step", step)
    run_to_completion(train(case.image, annotation, tiny(seed=5), init=model))
    for name, tensor in _weights(model).items():
        assert torch.equal(seen["state"][name], tensor), name


def test_a_new_structure_grows_the_output_and_keeps_the_known_classes(case, first):
    model, _ = first
    grown = run_to_completion(
        train(case.image, case.annotation, tiny(), spacing=case.spacing, init=model,
              class_names=["tube", "blob"])
    )
    assert grown.config.n_classes == 3 and model.config.n_classes == 2
    assert grown.config.class_names == ["background", "tube", "blob"]
    assert grown.config.arch == model.config.arch
    labels = run_to_completion(predict(grown, case.image, PredictConfig(device="cpu"))).labels
    assert labels.max() <= 2


def test_growing_copies_the_earlier_classes_and_keeps_fresh_ones():
    fresh = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3), "w": torch.ones(2)}
    earlier = {"head.weight": torch.ones(2, 4), "head.bias": torch.full((2,), 5.0),
               "w": torch.full((2,), 7.0)}
    state = grown_state(fresh, earlier)
    assert state["head.weight"][:2].eq(1).all() and state["head.weight"][2].eq(0).all()
    assert state["head.bias"].tolist() == [5.0, 5.0, 0.0]
    assert state["w"].tolist() == [7.0, 7.0]
    with pytest.raises(ValueError, match="larger"):
        grown_state({"w": torch.zeros(1)}, {"w": torch.zeros(2)})


def test_the_network_and_normalisation_come_from_the_earlier_model(case, first):
    model, annotation = first
    brighter = case.image * 3.0 + 10.0
    again = run_to_completion(
        train(brighter, annotation, tiny(arch="unet2d", base_channels=8), init=model)
    )
    assert again.config.arch == "unet3d"
    assert again.config.network.base_channels == model.config.network.base_channels
    assert again.config.normalization == model.config.normalization
    assert again.config.patch_shape == model.config.patch_shape


def test_rounds_are_recorded_and_survive_a_save(case, first, tmp_path):
    model, annotation = first
    assert [r["start"] for r in model.config.history["rounds"]] == ["scratch"]
    second = run_to_completion(train(case.image, case.annotation, tiny(), init=model))
    rounds = load_model(save_model(tmp_path / "m.safetensors", second)).config.history["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [r["start"] for r in rounds] == ["scratch", "continued"]
    assert rounds[0]["annotation_checksum"] != rounds[1]["annotation_checksum"]
    assert rounds[1]["painted_voxels"] == int(np.count_nonzero(case.annotation))
    assert rounds[1]["steps"] == 3 and rounds[1]["stop_reason"] == "finished"
    assert set(rounds[1]["painted_slices"]) == {"z", "y", "x"}


def test_an_ensemble_continues_member_by_member(case):
    ensemble = run_to_completion(train(case.image, case.annotation, tiny(ensemble=2)))
    again = run_to_completion(train(case.image, case.annotation, tiny(), init=ensemble))
    assert again.config.network.members == 2
    assert again.config.history["member_steps"] == [3, 3]


def test_medseg_train_init_continues_and_may_replace_its_model(case, tmp_path, capsys):
    from napari_medseg.cli import main
    from napari_medseg.io import write_volume
    from napari_medseg.volume import Volume

    write_volume(tmp_path / "img.nii.gz", Volume(case.image, spacing=case.spacing))
    write_volume(tmp_path / "ann.nrrd", Volume(case.annotation, spacing=case.spacing))
    model = tmp_path / "m.safetensors"
    common = ["--iterations", "2", "--device", "cpu", "--base-channels", "4"]
    assert main(["train", str(tmp_path / "img.nii.gz"), str(tmp_path / "ann.nrrd"),
                 "--out", str(model), *common]) == 0
    assert main(["train", str(tmp_path / "img.nii.gz"), str(tmp_path / "ann.nrrd"),
                 "--out", str(model), "--init", str(model), *common]) == 0
    assert f"round 2 continued from {model}" in capsys.readouterr().out
    rounds = load_model(model).config.history["rounds"]
    assert [r["start"] for r in rounds] == ["scratch", "continued"]


def test_medseg_train_init_refuses_a_missing_model_before_training(case, tmp_path, capsys):
    from napari_medseg.cli import main
    from napari_medseg.io import write_volume
    from napari_medseg.volume import Volume

    write_volume(tmp_path / "img.nii.gz", Volume(case.image, spacing=case.spacing))
    write_volume(tmp_path / "ann.nrrd", Volume(case.annotation, spacing=case.spacing))
    code = main(["train", str(tmp_path / "img.nii.gz"), str(tmp_path / "ann.nrrd"),
                 "--out", str(tmp_path / "m.safetensors"), "--init", str(tmp_path / "no.st")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no.st" in err[0]


def test_ctrl_c_during_medseg_train_saves_the_model_so_far(case, tmp_path):
    """A real SIGINT to a real `medseg train`: it stops after the current step, saves the
    model trained so far, says so, and exits 130."""
    import os
    import signal
    import subprocess
    import sys

    from napari_medseg.io import write_volume
    from napari_medseg.volume import Volume

    write_volume(tmp_path / "img.nii.gz", Volume(case.image, spacing=case.spacing))
    write_volume(tmp_path / "ann.nrrd", Volume(case.annotation, spacing=case.spacing))
    model = tmp_path / "m.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_medseg.cli", "train", str(tmp_path / "img.nii.gz"),
         str(tmp_path / "ann.nrrd"), "--out", str(model), "--time-budget", "600",
         "--device", "cpu", "--base-channels", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = process.stderr.readline()  # the progress bar's first line: training runs
        assert first.startswith("train ["), first
        os.kill(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "stopping after the current step" in err and "Traceback" not in err
    assert f"saved {model}" in out and "(stopped)" in out
    assert load_model(model).config.history["stop_reason"] == "stopped"
