"""Behaviour fingerprint: hashes of model weights and segmentations for fixed seeds.

Trains with ``iterations`` (not a time budget) and a fixed seed on the CPU, predicts, and
prints one JSON line per case with a SHA-256 of the weights and of the labels (and of the
probabilities or uncertainty where asked for). Two commits whose lines are equal behave the
same on these cases: a refactoring must leave them unchanged.

    python benchmarks/fingerprint.py > before.jsonl      # on the old commit
    python benchmarks/fingerprint.py > after.jsonl       # on the new one
    diff before.jsonl after.jsonl

Only public names are used, so the script runs on commits before and after a reshaping.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from napari_medseg.crossval import CrossValConfig, crossval
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.progress import run_to_completion
from napari_medseg.sample_data import load_real_case, real_case_annotation
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train


def _sha(array) -> str:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(str(array.dtype).encode() + str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _weights_sha(network: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(_sha(tensor).encode())
    return digest.hexdigest()[:16]


def _case(name, image, annotation, spacing, train_cfg, predict_cfg, class_names=None) -> dict:
    model = run_to_completion(
        train(image, annotation, train_cfg, spacing=spacing, class_names=class_names)
    )
    prediction = run_to_completion(predict(model, image, predict_cfg))
    history = model.config.history
    row = {
        "case": name,
        "weights": _weights_sha(model.network),
        "labels": _sha(prediction.labels),
        "steps": history["steps"],
        "final_loss": history["final_loss"],
    }
    if prediction.probabilities is not None:
        row["probabilities"] = _sha(prediction.probabilities)
    if prediction.uncertainty is not None:
        row["uncertainty"] = _sha(prediction.uncertainty)
    return row


def _synthetic_cases() -> list[dict]:
    one = make_synthetic_case(shape=(32, 48, 48), n_structures=1, seed=0)
    three = make_synthetic_case(shape=(32, 48, 48), n_structures=3, seed=1)
    base = {"time_budget": None, "device": "cpu", "seed": 0}
    rows = [
        _case("unet3d_one", one.image, one.annotation, one.spacing,
              TrainConfig(iterations=30, **base),
              PredictConfig(device="cpu", probabilities=True, mirror=True)),
        _case("unet3d_three_calibrated", three.image, three.annotation, three.spacing,
              TrainConfig(iterations=40, calibrate_batch_norm=True, **base),
              PredictConfig(device="cpu"), list(three.class_names)),
        _case("unet2d_three_planes", three.image, three.annotation, three.spacing,
              TrainConfig(arch="unet2d", planes="three", iterations=30, **base),
              PredictConfig(device="cpu", probabilities=True)),
        _case("fcn", one.image, one.annotation, one.spacing,
              TrainConfig(arch="fcn", iterations=20, **base), PredictConfig(device="cpu")),
        _case("unet3d_ensemble", one.image, one.annotation, one.spacing,
              TrainConfig(iterations=12, ensemble=2, flips="on", **base),
              PredictConfig(device="cpu", uncertainty=True)),
        _case("unet3d_full_precision", one.image, one.annotation, one.spacing,
              TrainConfig(iterations=15, group_norm=True, **base),
              PredictConfig(device="cpu", mixed_precision=False, overlap=0.25)),
    ]
    return rows


def _brain1() -> dict:
    case = load_real_case("brain1")
    annotation = real_case_annotation(case)
    cfg = TrainConfig(time_budget=None, iterations=20, device="cpu", seed=3)
    return _case("brain1", case.image.array, annotation, case.image.spacing, cfg,
                 PredictConfig(device="cpu"))


def _crossval() -> dict:
    one = make_synthetic_case(shape=(32, 48, 48), n_structures=2, seed=2,
                              slices_per_axis=(2, 1, 1))
    cfg = CrossValConfig(
        folds=2, train=TrainConfig(time_budget=None, iterations=10, device="cpu", seed=0)
    )
    result = run_to_completion(crossval(one.image, one.annotation, cfg, spacing=one.spacing))
    timeless = [
        {k: v for k, v in fold.items() if not k.endswith("_seconds")}
        for fold in result.to_dict()["folds"]
    ]
    folds = json.dumps(timeless, sort_keys=True)
    return {"case": "crossval", "folds": hashlib.sha256(folds.encode()).hexdigest()[:16]}


def _cli() -> dict:
    from napari_medseg.cli import main
    from napari_medseg.io import read_volume, write_volume
    from napari_medseg.volume import Volume

    case = make_synthetic_case(shape=(24, 40, 40), n_structures=2, seed=4)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_volume(folder / "img.nii.gz", Volume(case.image, spacing=case.spacing))
        write_volume(folder / "ann.nrrd", Volume(case.annotation, spacing=case.spacing))
        with contextlib.redirect_stdout(io.StringIO()):
            code = _train_and_predict(main, folder)
        labels = read_volume(folder / "seg.nii.gz").array
    return {"case": "cli", "exit": code, "labels": _sha(labels)}


def _train_and_predict(main, folder: Path) -> int:
    code = main(["train", str(folder / "img.nii.gz"), str(folder / "ann.nrrd"),
                     "--out", str(folder / "m.safetensors"), "--iterations", "15",
                     "--device", "cpu", "--seed", "5"])
    return code + main(["predict", str(folder / "m.safetensors"), str(folder / "img.nii.gz"),
                        "--out", str(folder / "seg.nii.gz"), "--device", "cpu"])


CASES = {"synthetic": _synthetic_cases, "brain1": lambda: [_brain1()],
         "crossval": lambda: [_crossval()], "cli": lambda: [_cli()]}


def main() -> None:
    groups = sys.argv[1:] or list(CASES)
    for row in [row for group in groups for row in CASES[group]()]:
        print(json.dumps(row), flush=True)
    print(json.dumps({"torch": torch.__version__}), file=sys.stderr)


if __name__ == "__main__":
    main()
