"""Ablation of the 3D U-Net on the three-tissue brain: where does it lose to a threshold?

Trains the default 3D U-Net on ``brain_tissue`` painted on 3 slices per axis (as
``generalisation.py --cases brain``) with one variant of the settings per run, and prints one
JSON line per run: mean and per-tissue Dice on the voxels nobody painted, how much of each
painted class the network gets back on the painted slices themselves, and what the CSF voxels
were called instead (background, CSF, grey, white). ``base`` scores the intensity baselines.

A variant is a JSON object of :class:`~napari_medseg.training.TrainConfig` fields, plus two
keys for settings that are not options of the product, patched in for the measurement only:

- ``"aug"``: :class:`~napari_medseg.augmentation.AugmentConfig` fields, e.g.
  ``{"intensity_scale": 0, "intensity_shift": 0}``;
- ``"norm"``: the normalisation layer in place of batch norm, ``"instance"`` or a number of
  groups for group norm (``"4"``).

Two more keys choose what is trained: ``"budget"`` (seconds, default 120) and ``"case"``,
another case of ``paper_table.load_case`` with its own annotation (``"brain1"``, ``"breast1"``,
...; default the three-tissue brain). For a case of one structure, "CSF" in the output reads
"structure 1".

Each run is its own process (the patches must not leak); run it alone::

    .venv/bin/python benchmarks/brain_tissue_variants.py base
    .venv/bin/python benchmarks/brain_tissue_variants.py '{}' '{"class_weight_power": 0.5}'
    .venv/bin/python benchmarks/brain_tissue_variants.py '{"norm": "4", "seed": 1}'
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time

import numpy as np
from generalisation import _cases  # benchmarks/ is on the path when run as a script
from paper_table import load_case

from napari_medseg.inference import PredictConfig, predict
from napari_medseg.metrics import evaluate
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import nearest_mean_from_annotation, threshold_from_annotation

CSF = 1


def _score(case, segmentation: np.ndarray) -> dict:
    labels = sorted(int(v) for v in np.unique(case.expert_mask) if v)
    scored = case.annotation == 0
    result = evaluate(
        segmentation, case.expert_mask, labels=labels, mask=scored, surface_distances=False
    )
    n_classes = len(labels) + 1
    painted = {
        c: round(float(np.mean(segmentation[case.annotation == c + 1] == c)), 3)
        for c in range(n_classes)
    }
    return {
        "dice": round(result.mean.dice, 4),
        "tissues": {k: round(m.dice, 3) for k, m in result.classes.items()},
        "painted_recovered": painted,
        "painted_csf_called": np.bincount(
            segmentation[case.annotation == CSF + 1], minlength=n_classes
        ).tolist(),
        "unpainted_csf_called": np.bincount(
            segmentation[(case.expert_mask == CSF) & scored], minlength=n_classes
        ).tolist(),
    }


def _patch_norm(norm: str) -> None:
    import torch.nn as nn

    import napari_medseg.models.blocks as blocks

    original = blocks.conv_norm_relu

    def conv_norm_relu(ndim, in_channels, out_channels, kernel_size, batch_norm):
        layers = list(original(ndim, in_channels, out_channels, kernel_size, batch_norm))
        if batch_norm:  # Conv, BatchNorm, ReLU: swap the middle one
            if norm == "instance":
                instance = nn.InstanceNorm3d if ndim == 3 else nn.InstanceNorm2d
                layers[1] = instance(out_channels, affine=True)
            else:
                layers[1] = nn.GroupNorm(int(norm), out_channels)
        return nn.Sequential(*layers)

    blocks.conv_norm_relu = conv_norm_relu


def _loss_by_tenth(trace: list[tuple[float, float]]) -> list[float | None]:
    """Mean training loss over each tenth of the run (spikes and collapses show here)."""
    tenths: list[list[float]] = [[] for _ in range(10)]
    for fraction, loss in trace:
        tenths[min(9, int(fraction * 10))].append(loss)
    return [round(float(np.mean(t)), 3) if t else None for t in tenths]


def _case(name: str):
    """The three-tissue brain as ``generalisation.py`` paints it, or a paper-table case."""
    if name == "brain_tissue":
        return next(c for *_, c in _cases("brain"))
    case = load_case(name)
    case.expert_mask = case.expert
    return case


def _run(variant: dict) -> dict:
    import napari_medseg.training as training
    import napari_medseg.training.plan as plan

    settings = dict(variant)
    if "norm" in settings:
        _patch_norm(str(settings.pop("norm")))
    if "aug" in settings:
        plan.AugmentConfig = functools.partial(plan.AugmentConfig, **settings.pop("aug"))
    budget = float(settings.pop("budget", 120.0))
    case = _case(settings.pop("case", "brain_tissue"))
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    config = training.TrainConfig(time_budget=budget, **settings)
    start = time.perf_counter()
    trace: list[tuple[float, float]] = []
    model = run_to_completion(
        training.train(case.image, case.annotation, config, spacing=case.spacing),
        lambda item: trace.append((item.fraction, item.loss)),
    )
    segmentation = run_to_completion(predict(model, case.image, PredictConfig())).labels
    row = {"variant": variant, "steps": model.config.history["steps"]}
    row["stop_reason"] = model.config.history["stop_reason"]
    row["loss_by_tenth"] = _loss_by_tenth(trace)
    row.update(_score(case, segmentation))
    row["seconds"] = round(time.perf_counter() - start)
    return row


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    if argv == ["base"]:
        case = next(c for *_, c in _cases("brain"))
        for baseline in (threshold_from_annotation, nearest_mean_from_annotation):
            row = {"baseline": baseline.__name__}
            row.update(_score(case, baseline(case.image, case.annotation)))
            print(json.dumps(row), flush=True)
        return 0
    if len(argv) == 2 and argv[0] == "--one":
        print(json.dumps(_run(json.loads(argv[1]))), flush=True)
        return 0
    for text in argv:  # one process per variant
        json.loads(text)  # a typo fails here, before any training
    for text in argv:
        subprocess.run([sys.executable, __file__, "--one", text], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
