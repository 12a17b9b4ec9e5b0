"""Medical data fidelity and safety: bad inputs are refused with why, faults lose nothing.

Covers: annotation/image mismatches, unusable annotations, NaN / constant / 2D / RGB / 4D
images through the API and the CLI, processes killed while saving, full disks, stopping
training, memory release, and painting while training runs.

Model-file safety is in ``test_checkpoint.py``, autosave in ``test_autosave.py``, the
end-to-end CLI in ``test_cli.py``. NaN loss and GPU out-of-memory retry are tested in
``test_training_inference.py``.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch

import napari_medseg.training.loop as loop
import napari_medseg.training.optimisation as optimisation
from napari_medseg import _passes as passes
from napari_medseg import api, inference
from napari_medseg._atomic import TEMP_PREFIX
from napari_medseg.annotation import validate_annotation
from napari_medseg.checkpoint import TrainedModel, load_model, save_model
from napari_medseg.cli import main
from napari_medseg.errors import MedsegError, MedsegInputError
from napari_medseg.inference import PredictConfig, predict, predict_volume
from napari_medseg.io import read_volume, write_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train
from napari_medseg.volume import Volume

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 16, 16)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_case(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright cube and a sparse annotation of one axial slice."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.uint8)
    z, y, x = shape
    truth[z // 4 : 3 * z // 4, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = 1
    image = (truth * 2.0 + rng.normal(0, 0.3, shape)).astype(np.float32)
    annotation = np.zeros(shape, np.uint8)
    annotation[z // 2] = truth[z // 2] + 1
    return image, annotation


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(iterations=2, time_budget=None, base_channels=4, device="cpu", seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.set_num_threads(1)
    image, annotation = tiny_case()
    return run_to_completion(train(image, annotation, tiny_config(iterations=1)))


@pytest.fixture
def no_training(monkeypatch):
    """Fail if a network is built: proves a refusal happens before any training."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built for input that should have been refused")

    monkeypatch.setattr(optimisation, "build_network", refuse)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def assert_cli_refused(capsys, argv: list[str], *patterns: str) -> str:
    """Run ``medseg argv``: exit code 2, one error line naming the command, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"medseg {argv[0]}: error: "), err
    assert err.rstrip().endswith(errors[0]), err  # nothing after the message
    for pattern in patterns:
        assert pattern in errors[0], errors[0]
    return errors[0]


# ---- annotation and image disagree ---------------------------------------------------


def test_annotation_of_another_shape_is_refused_before_training(no_training):
    image, annotation = tiny_case()
    with pytest.raises(MedsegInputError, match=r"annotation shape \(8, 16, 15\) differs"):
        next(train(image, annotation[:, :, :-1], tiny_config()))
    with pytest.raises(MedsegInputError, match="annotation shape"):
        api.train_volume(Volume(image), Volume(annotation[:-1]), tiny_config())


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ({"spacing": (2.0, 1.0, 1.0)}, "annotation spacing (2, 1, 1) differs from image spacing"),
        ({"origin": (0.0, 0.0, 5.0)}, "annotation origin (0, 0, 5) differs from image origin"),
    ],
)
def test_annotation_with_another_geometry_is_refused_before_training(
    no_training, geometry, message
):
    image, annotation = tiny_case()
    with pytest.raises(MedsegInputError) as refused:
        api.train_volume(Volume(image), Volume(annotation, **geometry), tiny_config())
    assert message in str(refused.value)


def test_sub_micrometre_geometry_noise_is_accepted():
    """Float round-off from file headers must not be taken for another geometry."""
    image = Volume(np.zeros(SHAPE), (2.0, 0.7, 0.7), (10.0, -5.0, 3.0))
    noisy = Volume(np.zeros(SHAPE), (2.0000001, 0.7000001, 0.7), (10.00001, -5.0, 3.0))
    api.check_same_geometry(image, noisy, "annotation")


def test_annotation_with_another_orientation_is_refused():
    image, annotation = tiny_case()
    flipped = np.diag([1.0, -1.0, 1.0])
    with pytest.raises(MedsegInputError, match="direction|orientation"):
        api.check_same_geometry(Volume(image), Volume(annotation, direction=flipped), "annotation")


def test_annotation_file_with_another_geometry_is_refused_by_train_files(tmp_path, no_training):
    image, annotation = tiny_case()
    write_volume(tmp_path / "image.nrrd", image, spacing=(3.0, 0.8, 0.8))
    write_volume(tmp_path / "ann.nrrd", annotation, spacing=(1.0, 0.8, 0.8), labels=True)
    with pytest.raises(MedsegInputError, match="annotation spacing .* differs"):
        api.train_files(tmp_path / "image.nrrd", tmp_path / "ann.nrrd", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


# ---- annotations that cannot be trained on -------------------------------------------


def test_annotation_without_any_annotated_voxel_is_refused(no_training):
    image, annotation = tiny_case()
    with pytest.raises(MedsegInputError, match="no annotated voxel: paint at least one slice"):
        next(train(image, np.zeros_like(annotation), tiny_config()))


@pytest.mark.parametrize(("value", "what"), [(1, "background"), (2, "structure 1")])
def test_annotation_with_only_one_class_is_refused(no_training, value, what):
    image, annotation = tiny_case()
    only = np.where(annotation > 0, value, 0).astype(np.uint8)
    with pytest.raises(MedsegInputError, match=f"only one class \\({what}\\)"):
        next(train(image, only, tiny_config()))


def test_label_values_outside_the_declared_classes_are_refused():
    _, annotation = tiny_case()
    annotation[0, 0, 0] = 4  # structure 3, with 2 declared structures (3 classes)
    with pytest.raises(MedsegInputError, match="value 4 .*outside the 2 declared structure"):
        validate_annotation(annotation, annotation.shape, n_classes=3)
    assert validate_annotation(annotation, annotation.shape, n_classes=4) == 4


def test_train_with_class_names_refuses_values_outside_them(no_training):
    image, annotation = tiny_case()
    annotation[0, 0, 0] = 4
    with pytest.raises(MedsegInputError, match="outside"):
        next(train(image, annotation, tiny_config(), class_names=["cube"]))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda a: a.astype(np.int16) - 1, "negative values"),
        (lambda a: a.astype(np.float32) + 0.5, "whole numbers"),
        (lambda a: np.where(a > 0, a, np.nan).astype(np.float32), "whole numbers"),
    ],
)
def test_annotation_with_impossible_values_is_refused(no_training, bad, message):
    image, annotation = tiny_case()
    with pytest.raises(MedsegInputError, match=message):
        next(train(image, bad(annotation), tiny_config()))


# ---- images with NaN, constant, 2D, RGB, 4D ------------------------------------------


def test_image_with_nan_and_infinite_voxels_trains_and_predicts():
    image, annotation = tiny_case()
    image[0] = np.nan
    image[1, :4] = np.inf
    image[2, :4] = -np.inf
    model = run_to_completion(train(image, annotation, tiny_config()))
    assert np.isfinite(model.config.history["final_loss"])
    norm = model.config.normalization
    assert all(np.isfinite([norm.lower, norm.upper, norm.mean, norm.std]))
    result = predict_volume(model, image, PredictConfig(device="cpu", probabilities=True))
    assert result.labels.shape == SHAPE
    assert np.isfinite(result.probabilities).all()


def test_image_without_any_finite_voxel_is_refused(no_training):
    _, annotation = tiny_case()
    for fill in (np.nan, np.inf):
        with pytest.raises(MedsegInputError, match="no finite voxel"):
            next(train(np.full(SHAPE, fill, np.float32), annotation, tiny_config()))


def test_prediction_on_an_image_without_finite_voxels_is_refused(model):
    with pytest.raises(MedsegInputError, match="finite"):
        predict_volume(model, np.full(SHAPE, np.nan, np.float32))


def test_constant_image_is_handled():
    _, annotation = tiny_case()
    constant = np.full(SHAPE, 7.0, np.float32)
    model = run_to_completion(train(constant, annotation, tiny_config()))
    assert np.isfinite(model.config.history["final_loss"])
    assert model.config.normalization.std > 0
    result = predict_volume(model, constant, PredictConfig(device="cpu", probabilities=True))
    assert result.labels.shape == SHAPE and np.isfinite(result.probabilities).all()


def test_2d_image_trains_and_predicts_in_2d(model):
    image, annotation = tiny_case()
    model2d = run_to_completion(train(image[4], annotation[4], tiny_config(), spacing=(0.5, 0.5)))
    assert model2d.config.spacing == (0.5, 0.5, 0.5)
    assert predict_volume(model2d, image[4]).labels.shape == image[4].shape
    assert predict_volume(model, image[4]).labels.shape == image[4].shape  # 3D model, 2D image


@pytest.mark.parametrize("shape", [(2, 8, 16, 16), (8, 16, 16, 3), (1, 2, 3, 4, 5), (16,)])
def test_images_with_other_dimensions_are_refused_by_train_and_predict(model, shape, no_training):
    image = np.zeros(shape, np.float32)
    annotation = np.ones(shape, np.uint8)
    with pytest.raises(MedsegInputError, match=f"has {len(shape)} dimensions"):
        next(train(image, annotation, tiny_config()))
    with pytest.raises(MedsegInputError, match=f"has {len(shape)} dimensions"):
        next(predict(model, image))


def test_rgb_and_4d_files_are_refused_on_read(tmp_path):
    rgb = np.zeros((4, 8, 8, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(MedsegInputError, match="RGB or vector components"):
        read_volume(tmp_path / "rgb.mha")
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(MedsegInputError, match="RGB"):
        read_volume(tmp_path / "photo.tif")
    write_volume(tmp_path / "time.nii.gz", np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(MedsegInputError, match="4 dimensions"):
        read_volume(tmp_path / "time.nii.gz")


def test_2d_rgb_file_is_refused_on_read(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "photo.mha"))
    with pytest.raises(MedsegInputError, match="RGB"):
        read_volume(tmp_path / "photo.mha")


def test_nifti_keeps_non_finite_voxels(tmp_path):
    image = np.ones((2, 3, 4), np.float32)
    image[0, 0, :2] = (np.nan, np.inf)
    back = read_volume(write_volume(tmp_path / "nan.nii.gz", image)).array
    assert np.isnan(back[0, 0, 0]) and np.isinf(back[0, 0, 1])


# ---- the same through the CLI --------------------------------------------------------


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Small image files (NRRD keeps NaN) and a matching annotation."""
    image, annotation = tiny_case()
    spacing = (2.0, 0.5, 0.5)
    out = {"dir": tmp_path}

    def put(name, array, **kwargs):
        out[name] = write_volume(tmp_path / name, array, spacing=spacing[-array.ndim :], **kwargs)

    put("image.nrrd", image)
    put("annotation.nrrd", annotation, labels=True)
    with_nan = image.copy()
    with_nan[0] = np.nan
    with_nan[1, 0] = np.inf
    put("nan.nrrd", with_nan)
    put("allnan.nrrd", np.full(SHAPE, np.nan, np.float32))
    put("constant.nrrd", np.full(SHAPE, 3.0, np.float32))
    put("image2d.nrrd", image[4])
    put("annotation2d.nrrd", annotation[4], labels=True)
    out["4d.nii.gz"] = write_volume(tmp_path / "4d.nii.gz", np.stack([image, image]))
    rgb = np.zeros((*SHAPE, 3), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.mha"))
    out["rgb.mha"] = tmp_path / "rgb.mha"
    return out


def _train_argv(image, annotation, out):
    return ["train", str(image), str(annotation), "--out", str(out), "--iterations", "1",
            "--device", "cpu"]  # fmt: skip


@pytest.mark.parametrize("name", ["nan.nrrd", "constant.nrrd"])
def test_cli_handles_nan_and_constant_images(files, capsys, name):
    model_path = files["dir"] / "m.safetensors"
    assert main(_train_argv(files[name], files["annotation.nrrd"], model_path)) == 0
    seg = files["dir"] / "seg.nrrd"
    assert main(["predict", str(model_path), str(files[name]), "--out", str(seg)]) == 0
    written = read_volume(seg)
    assert written.shape == SHAPE and written.spacing == (2.0, 0.5, 0.5)
    assert "Traceback" not in capsys.readouterr().err


def test_cli_handles_2d_images(files, capsys):
    model_path = files["dir"] / "m2d.safetensors"
    assert main(_train_argv(files["image2d.nrrd"], files["annotation2d.nrrd"], model_path)) == 0
    seg = files["dir"] / "seg2d.nrrd"
    assert main(["predict", str(model_path), str(files["image2d.nrrd"]), "--out", str(seg)]) == 0
    written = read_volume(seg)
    assert written.shape == SHAPE[1:] and written.spacing == (0.5, 0.5)


def test_cli_refuses_an_image_without_finite_voxels(files, capsys):
    argv = _train_argv(files["allnan.nrrd"], files["annotation.nrrd"], files["dir"] / "m")
    assert_cli_refused(capsys, argv, "no finite voxel")
    assert not (files["dir"] / "m").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("4d.nii.gz", "4 dimensions (time or channels)"), ("rgb.mha", "RGB or vector components")],
)
def test_cli_refuses_4d_and_rgb_images(files, capsys, model, name, message):
    out = files["dir"] / "m.safetensors"
    assert_cli_refused(capsys, _train_argv(files[name], files["annotation.nrrd"], out), message)
    save_model(out, model)
    seg = files["dir"] / "seg.nrrd"
    assert_cli_refused(capsys, ["predict", str(out), str(files[name]), "--out", str(seg)], message)
    assert not seg.exists()


def test_cli_refuses_annotation_of_another_geometry(files, capsys, tmp_path):
    _, annotation = tiny_case()
    other = write_volume(tmp_path / "other.nrrd", annotation, spacing=(1.0, 0.5, 0.5), labels=True)
    argv = _train_argv(files["image.nrrd"], other, tmp_path / "m.safetensors")
    assert_cli_refused(capsys, argv, "annotation spacing (1, 0.5, 0.5) differs")


def test_cli_refuses_annotation_with_only_one_class(files, capsys, tmp_path):
    _, annotation = tiny_case()
    only = write_volume(tmp_path / "only.nrrd", (annotation > 0).astype(np.uint8),
                        spacing=(2.0, 0.5, 0.5), labels=True)  # fmt: skip
    argv = _train_argv(files["image.nrrd"], only, tmp_path / "m.safetensors")
    assert_cli_refused(capsys, argv, "only one class (background)")


# ---- process killed while saving -----------------------------------------------------

_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    from napari_medseg.checkpoint import ModelConfig, TrainedModel, save_model
    from napari_medseg.io import read_volume, write_volume
    from napari_medseg.models import NetworkConfig, build_network
    from napari_medseg.normalization import IntensityNormalization

    folder, version = sys.argv[1], int(sys.argv[2])
    reference = read_volume(folder + "/reference.nrrd")
    net_config = NetworkConfig(arch="unet3d", base_channels=16, n_classes=2)
    network = build_network(net_config)
    shape = reference.shape
    while True:
        version += 1
        with torch.no_grad():
            for p in network.parameters():
                p.fill_(float(version))
        config = ModelConfig(
            network=net_config,
            class_names=["background", "organ"],
            normalization=IntensityNormalization(0.0, 1.0, 0.5, 0.2),
            spacing=reference.spacing,
            patch_shape=(16, 16, 16),
            history={"version": version},
        )
        save_model(folder + "/model.safetensors", TrainedModel(network, config))
        print("model", version, flush=True)
        write_volume(folder + "/annotation.nii.gz", np.full(shape, version % 200, np.uint8),
                     reference=reference, labels=True)
        print("annotation", version, flush=True)
        write_volume(folder + "/segmentation.nrrd", np.full(shape, version % 200, np.uint8),
                     reference=reference, labels=True)
        print("segmentation", version, flush=True)
    """
)


def _check_saved(folder: Path, reference: Volume, done: dict[str, int]) -> dict[str, int]:
    """Every target loads, is whole, and is the last saved or the one being saved."""
    found = {}
    model = load_model(folder / "model.safetensors")
    version = model.config.history["version"]
    assert all(torch.all(p == float(version)) for p in model.network.parameters())  # whole
    found["model"] = version
    for kind, name in (("annotation", "annotation.nii.gz"), ("segmentation", "segmentation.nrrd")):
        volume = read_volume(folder / name)
        assert volume.shape == reference.shape
        np.testing.assert_allclose(volume.spacing, reference.spacing)
        np.testing.assert_allclose(volume.origin, reference.origin)
        values = np.unique(volume.array)
        assert len(values) == 1, f"{name} mixes two saves"
        found[kind] = int(values[0])
    for kind, version in found.items():
        last = done[kind]
        if kind == "model":
            assert version in (last, last + 1), (kind, version, last)
        else:
            assert version in (last % 200, (last + 1) % 200), (kind, version, last)
    return found


def test_sigkill_while_saving_model_annotation_and_segmentation(tmp_path):
    reference = write_volume(
        tmp_path / "reference.nrrd", np.zeros((32, 96, 96), np.int16), spacing=(2.5, 0.7, 0.7),
        origin=(-10.0, 20.0, 30.0),
    )  # fmt: skip
    reference = read_volume(reference)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(7)
    version = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(tmp_path), str(version)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = []
        try:
            for _ in range(3):  # one complete save of each kind before the first kill
                line = proc.stdout.readline()
                assert line, proc.stderr.read()
                lines.append(line)
            time.sleep(rng.uniform(0.0, 1.0))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        done = {}
        complete = rest.split("\n")[:-1]  # a line cut by the kill reports nothing
        for line in [*lines, *complete]:
            kind, number = line.split()
            done[kind] = int(number)
        found = _check_saved(tmp_path, reference, done)
        version = max(done.values()) + 1
        for name in os.listdir(tmp_path):  # only our hidden temporary names may be left
            assert name.startswith(TEMP_PREFIX) or name in {
                "reference.nrrd", "model.safetensors", "annotation.nii.gz", "segmentation.nrrd"
            }, name  # fmt: skip
        assert found
    # left-over temporary files do not break later saves
    labels = np.ones(reference.shape, np.uint8)
    write_volume(tmp_path / "annotation.nii.gz", labels, reference=reference, labels=True)
    write_volume(tmp_path / "segmentation.nrrd", labels, reference=reference, labels=True)
    assert read_volume(tmp_path / "annotation.nii.gz").array.min() == 1
    assert read_volume(tmp_path / "segmentation.nrrd").array.min() == 1
    model = load_model(tmp_path / "model.safetensors")
    save_model(tmp_path / "model.safetensors", model)
    load_model(tmp_path / "model.safetensors")


# ---- disk full while saving ----------------------------------------------------------


def _raise_disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["fsync", "replace"])
@pytest.mark.parametrize("name", ["annotation.nii.gz", "segmentation.nrrd", "labels.tif"])
def test_disk_full_while_saving_labels_keeps_the_previous_file(tmp_path, monkeypatch, where, name):
    previous = np.ones(SHAPE, np.uint8)
    target = write_volume(tmp_path / name, previous, spacing=(2.0, 0.5, 0.5), labels=True)
    monkeypatch.setattr(os, where, _raise_disk_full)
    with pytest.raises(MedsegError, match=f"could not save .*{name}: disk full"):
        write_volume(target, np.full(SHAPE, 2, np.uint8), spacing=(2.0, 0.5, 0.5), labels=True)
    monkeypatch.undo()
    back = read_volume(target)
    np.testing.assert_array_equal(back.array, previous)
    assert back.spacing == (2.0, 0.5, 0.5)
    assert leftovers(tmp_path) == []


def test_disk_full_while_predicting_keeps_the_previous_segmentation(tmp_path, monkeypatch, model):
    image, _ = tiny_case()
    image_path = write_volume(tmp_path / "image.nrrd", image)
    model_path = save_model(tmp_path / "m.safetensors", model)
    seg = write_volume(tmp_path / "seg.nii.gz", np.full(SHAPE, 1, np.uint8), labels=True)
    before = seg.read_bytes()
    monkeypatch.setattr(os, "replace", _raise_disk_full)
    with pytest.raises(MedsegError, match="disk full"):
        api.predict_file(model_path, image_path, seg, PredictConfig(device="cpu"))
    monkeypatch.undo()
    assert seg.read_bytes() == before and leftovers(tmp_path) == []


# ---- stopping training ---------------------------------------------------------------


def _stop_inside_step(monkeypatch, stop: threading.Event, at_call: int) -> list[int]:
    """Set ``stop`` from inside the loss computation of step ``at_call`` (mid-step)."""
    calls = []
    real = optimisation.masked_cross_entropy

    def loss(logits, target, weights=None):
        calls.append(len(calls) + 1)
        if len(calls) == at_call:
            stop.set()
        return real(logits, target, weights)

    monkeypatch.setattr(optimisation, "masked_cross_entropy", loss)
    return calls


def test_stop_set_during_a_step_ends_training_after_that_step(monkeypatch):
    image, annotation = tiny_case()
    stop = threading.Event()
    calls = _stop_inside_step(monkeypatch, stop, at_call=3)
    gen = train(image, annotation, tiny_config(iterations=None, time_budget=3600.0), stop=stop)
    steps_after_stop = []
    model = run_to_completion(
        gen, lambda p: steps_after_stop.append(p.step) if stop.is_set() else None
    )
    assert steps_after_stop == [3]  # the step that was running finishes, no other starts
    assert len(calls) == 3
    assert model.config.history["steps"] == 3
    assert model.config.history["stop_reason"] == "stopped"


def test_stop_from_another_thread_while_a_step_runs(monkeypatch):
    """The GUI case: training runs in a worker thread, the Stop button is in another."""
    image, annotation = tiny_case()
    stop = threading.Event()
    in_step, resume = threading.Event(), threading.Event()
    real = optimisation.masked_cross_entropy
    calls = []

    def loss(logits, target, weights=None):
        calls.append(1)
        if len(calls) == 2:  # second step: hand over to the "GUI" thread mid-step
            in_step.set()
            assert resume.wait(60)
        return real(logits, target, weights)

    monkeypatch.setattr(optimisation, "masked_cross_entropy", loss)
    gen = train(image, annotation, tiny_config(iterations=None, time_budget=3600.0), stop=stop)
    seen: list[int] = []
    after: list[int] = []
    result: dict[str, TrainedModel] = {}

    def worker() -> None:
        result["model"] = run_to_completion(
            gen, lambda p: (after if stop.is_set() else seen).append(p.step)
        )

    thread = threading.Thread(target=worker)
    thread.start()
    assert in_step.wait(60)
    stop.set()
    resume.set()
    thread.join(120)
    assert not thread.is_alive()
    assert seen == [1] and after == [2]  # at most one more step after stop.set()
    assert result["model"].config.history["stop_reason"] == "stopped"


def test_stop_before_the_first_step_returns_an_untrained_model_without_a_step():
    image, annotation = tiny_case()
    stop = threading.Event()
    stop.set()
    items = []
    model = run_to_completion(train(image, annotation, tiny_config(), stop=stop), items.append)
    assert items == [] and model.config.history["steps"] == 0
    assert model.config.history["stop_reason"] == "stopped"


# ---- memory is released --------------------------------------------------------------


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_memory_does_not_grow_across_training_runs():
    image, annotation = tiny_case((8, 32, 32))
    config = tiny_config(iterations=3, base_channels=8)

    def one_run() -> None:
        model = run_to_completion(train(image, annotation, config))
        predict_volume(model, image, PredictConfig(device="cpu"))
        del model
        gc.collect()

    one_run()  # warm-up: lazy imports, allocator pools, kernels
    tracemalloc.start()
    try:
        traced, rss = [], []
        for _ in range(3):
            one_run()
            traced.append(tracemalloc.get_traced_memory()[0] / 2**20)
            rss.append(_rss_mb())
    finally:
        tracemalloc.stop()
    assert traced[-1] - traced[0] < 2.0, traced  # Python and numpy objects are freed
    assert rss[-1] - rss[0] < 100.0, rss  # loose: allocators keep some pages


def test_release_device_empties_the_cuda_cache_only(monkeypatch):
    from napari_medseg.device import release_device

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    release_device(torch.device("cpu"))
    assert emptied == []
    release_device(torch.device("cuda"))
    assert emptied == [True]


@pytest.mark.parametrize("how", ["done", "stopped", "closed", "failed", "out of memory"])
def test_prediction_releases_its_device_however_it_ends(monkeypatch, model, how):
    released = []
    monkeypatch.setattr(inference, "release_device", lambda device: released.append(device))
    if how == "out of memory":  # the first try fails on its first tile, the retry finishes
        real_forward, calls = passes.forward, []

        def out_of_memory_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise torch.cuda.OutOfMemoryError("simulated")
            return real_forward(*args)

        monkeypatch.setattr(passes, "forward", out_of_memory_once)
    stop = threading.Event()
    image, _ = tiny_case()
    tiles = (8, 16, 16) if how == "out of memory" else (8, 8, 8)  # an OOM halves them
    gen = predict(model, image, PredictConfig(device="cpu", tile_shape=tiles), stop=stop)
    next(gen)
    assert released == ([torch.device("cpu")] if how == "out of memory" else [])
    released.clear()  # not while the tiles are computed, once when a try ends
    if how == "stopped":  # the user pressed Stop: the run ends after the current tile
        stop.set()
        assert not run_to_completion(gen).complete
    elif how == "closed":  # the generator is dropped
        gen.close()
    elif how == "failed":
        with pytest.raises(RuntimeError, match="boom"):
            gen.throw(RuntimeError("boom"))
    else:
        assert run_to_completion(gen).complete
    assert released == [torch.device("cpu")]
    assert all(t.device.type == "cpu" for t in model.network.state_dict().values())


@pytest.mark.parametrize("how", ["closed", "failed", "done"])
def test_training_releases_its_device_memory_however_it_ends(monkeypatch, how):
    """The network leaves the device and the device's cache is emptied (on CUDA:
    ``torch.cuda.empty_cache``, see the test above) however training ends."""
    released = []
    monkeypatch.setattr(optimisation, "release_device", lambda device: released.append(how))
    image, annotation = tiny_case()
    gen = train(image, annotation, tiny_config(iterations=3))
    next(gen)
    if how == "closed":  # the user pressed Stop and the generator is dropped
        gen.close()
    elif how == "failed":
        with pytest.raises(RuntimeError, match="boom"):
            gen.throw(RuntimeError("boom"))
    else:
        run_to_completion(gen)
    assert released == [how]


# ---- the user paints while training runs ---------------------------------------------


def test_training_uses_a_snapshot_of_the_annotation_and_image(monkeypatch):
    image, annotation = tiny_case()
    config = tiny_config(iterations=4)
    untouched = run_to_completion(train(image.copy(), annotation.copy(), config))

    targets_seen = []
    real_sampler = loop.AnnotatedPatchSampler

    class Spy(real_sampler):
        def __init__(self, norm_image, target, *args, **kwargs):
            assert not np.shares_memory(target, annotation)
            assert not np.shares_memory(norm_image, image)
            super().__init__(norm_image, target, *args, **kwargs)

        def batch(self, size, rng=None):
            images, targets = super().batch(size, rng)
            targets_seen.append(np.asarray(targets).copy())
            return images, targets

    monkeypatch.setattr(loop, "AnnotatedPatchSampler", Spy)
    gen = train(image, annotation, config)
    first = next(gen)
    annotation[:] = 0  # the user erases everything ...
    image[:] = np.nan  # ... and the image layer changes, while training runs
    items = [first]
    model = run_to_completion(gen, items.append)

    assert [p.step for p in items if "validation" not in p.message] == [1, 2, 3, 4]
    assert all(np.isfinite(p.loss) for p in items)
    for targets in targets_seen:  # every batch still holds the original labels
        assert set(np.unique(targets)) <= {-1, 0, 1} and (targets >= 0).any()
    original = tiny_case()[1]
    expected_counts = [int((original == 1).sum()), int((original == 2).sum())]
    assert model.config.history["class_voxel_counts"] == expected_counts
    for (name, a), b in zip(
        untouched.network.state_dict().items(), model.network.state_dict().values()
    ):
        assert torch.equal(a, b), f"{name}: painting during training changed the model"
