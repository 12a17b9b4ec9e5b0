"""``medseg demo``: the whole semi-automatic loop, headless, on bundled sample data."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .checkpoint import TrainedModel
from .device import DeviceName
from .errors import MedsegInputError
from .inference import PredictConfig, predict
from .metrics import EvaluationResult, evaluate
from .progress import ProgressBar, drive
from .training import TrainConfig, train


@dataclass
class DemoCase:
    """An image, its sparse annotation and the expert mask that scores the result."""

    name: str
    image: np.ndarray
    annotation: np.ndarray
    expert_mask: np.ndarray
    spacing: tuple[float, ...]
    class_names: list[str]


def load_demo_case(case: str) -> DemoCase:
    """The synthetic volume, or one of the bundled cases with its default annotation."""
    if case == "synthetic":
        from .synthetic import make_synthetic_case

        syn = make_synthetic_case()
        return DemoCase(
            "synthetic",
            syn.image,
            syn.annotation,
            syn.expert_mask,
            tuple(syn.spacing),
            list(syn.class_names),
        )
    from .sample_data import (
        BRAIN_TISSUE,
        BUNDLED_CASES,
        load_real_case,
        real_case_annotation,
        slices_per_axis_annotation,
    )

    if case not in BUNDLED_CASES:
        raise MedsegInputError(
            f"unknown demo case {case!r}: use synthetic or one of {', '.join(BUNDLED_CASES)}"
        )
    real = load_real_case(case)
    # the tissue template is painted on every axis; the scans on a few axial slices + a box
    painted = slices_per_axis_annotation if case == BRAIN_TISSUE else real_case_annotation
    return DemoCase(
        case,
        np.asarray(real.image.array),
        painted(real),
        np.asarray(real.label.array),
        tuple(real.image.spacing),
        list(getattr(real, "class_names", []) or []),
    )


def threshold_baseline(image: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """A plain intensity classifier fitted on the annotated voxels (for comparison)."""
    from .synthetic import threshold_from_annotation

    return threshold_from_annotation(image, annotation)


def run_demo(
    case: str = "synthetic",
    time_budget: float | None = 60.0,
    device: DeviceName = "auto",
    seed: int = 0,
    print_fn: Callable[[str], object] = print,
) -> tuple[EvaluationResult, EvaluationResult, TrainedModel]:
    """Train on the case's sparse annotation, predict, and score the voxels nobody annotated.

    Returns
    -------
    (network result, threshold baseline result, trained model)
    """
    start = time.perf_counter()
    data = load_demo_case(case)
    annotated = int(np.count_nonzero(data.annotation))
    print_fn(
        f"case {data.name}: image {data.image.shape}, spacing "
        f"{tuple(round(s, 3) for s in data.spacing)} mm, {annotated} annotated voxels "
        f"({100.0 * annotated / data.annotation.size:.1f} %)"
    )
    config = TrainConfig(time_budget=time_budget, device=device, seed=seed)
    model = drive(
        train(
            data.image, data.annotation, config, spacing=data.spacing, class_names=data.class_names
        ),
        ProgressBar("train  "),
    )
    prediction = drive(
        predict(model, data.image, PredictConfig(device=device)),
        ProgressBar("predict"),
    )
    scored = data.annotation == 0
    labels = sorted(int(v) for v in np.unique(data.expert_mask) if v != 0)
    names = model.config.class_names[1:]
    result = evaluate(
        prediction.labels,
        data.expert_mask,
        spacing=data.spacing,
        labels=labels,
        mask=scored,
        class_names=names,
    )
    baseline = evaluate(
        threshold_baseline(data.image, data.annotation),
        data.expert_mask,
        spacing=data.spacing,
        labels=labels,
        mask=scored,
        surface_distances=False,
        class_names=names,
    )
    print_fn("\n3D U-Net, voxels not annotated:")
    print_fn(result.format_table())
    print_fn("\nintensity threshold fitted on the annotation (baseline), same voxels:")
    print_fn(baseline.format_table())
    print_fn(
        f"\nmean Dice {result.mean.dice:.3f} (baseline {baseline.mean.dice:.3f}); "
        f"total {time.perf_counter() - start:.0f} s"
    )
    return result, baseline, model
