"""Reproduce the layout of Table 1 of Çiçek et al. 2016 (3D U-Net) on this machine.

Every configuration is trained on each case's sparse annotation for the *same wall-clock
budget* (``--budget`` seconds of training per run), then predicts the whole volume, and is
scored against the expert mask on the voxels that were **not annotated** (the paper's
semi-automatic setting). The IoU (Jaccard) and Dice of each structure are averaged over the
structures of a case; the last columns average the cases.

Configurations (``--configs``)
------------------------------
``unet3d_bn``    3D U-Net with batch normalisation (the paper's network)
``unet3d_nobn``  3D U-Net without batch normalisation
``unet2d``       2D U-Net applied slice by slice
``fcn``          2D FCN-8s
``threshold``    reference row: the intensity window fitted on the annotated voxels
                 (:func:`napari_medseg.synthetic.threshold_from_annotation`); no training

Cases (``--cases``)
-------------------
``brain1``, ``breast1``, ``prostate_phantom``: the bundled real MRI cases with their default
annotation (:func:`napari_medseg.sample_data.real_case_annotation`: a few axial slices and a
region-of-interest box). ``synthetic0``: :func:`~napari_medseg.synthetic.make_synthetic_case`
with seed 0, one structure, slices per axis (1, 1, 1). ``synthetic1``: seed 1, three
structures, slices per axis (3, 2, 1).

Runs are sequential and in-process (never in parallel, so that they do not compete for
the CPU). Run from the repository root::

    .venv/bin/python benchmarks/paper_table.py --budget 120 --json-out paper_table.json

A full table is ``len(cases) * (len(configs) - 1)`` trainings of ``--budget`` seconds each
(plus prediction): 20 runs, about 45 minutes with the default 120 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_medseg.errors import MedsegError, MedsegInputError

#: Mean IoU of the paper (Çiçek et al. 2016, Table 1, semi-automatic setting, Xenopus
#: kidney, 3-fold cross-validation). A different data set: a landmark, not a target.
PAPER_IOU: dict[str, float] = {"unet3d_bn": 0.863, "unet2d": 0.796}

#: Configuration name -> (TrainConfig overrides, description).
CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "unet3d_bn": ({"arch": "unet3d", "batch_norm": True}, "3D U-Net, batch norm"),
    "unet3d_nobn": ({"arch": "unet3d", "batch_norm": False}, "3D U-Net, no batch norm"),
    "unet2d": ({"arch": "unet2d"}, "2D U-Net"),
    "fcn": ({"arch": "fcn"}, "FCN-8s (2D)"),
    "threshold": ({}, "threshold fitted on annotation"),
}

REAL = ("brain1", "breast1", "prostate_phantom")
#: Synthetic case name -> (seed, n_structures, slices_per_axis).
SYNTHETIC: dict[str, tuple[int, int, tuple[int, int, int]]] = {
    "synthetic0": (0, 1, (1, 1, 1)),
    "synthetic1": (1, 3, (3, 2, 1)),
}
CASES: tuple[str, ...] = (*REAL, *SYNTHETIC)


@dataclass
class Case:
    """One benchmark case: image, sparse annotation and the expert mask that scores it."""

    name: str
    image: np.ndarray
    annotation: np.ndarray
    expert: np.ndarray
    spacing: tuple[float, ...]
    class_names: list[str]

    @property
    def structures(self) -> list[int]:
        """The structure labels of the expert mask."""
        return [int(v) for v in np.unique(self.expert) if v != 0]


@dataclass
class Run:
    """The score of one configuration on one case."""

    case: str
    config: str
    iou: float
    dice: float
    classes: dict[str, dict[str, float]]
    steps: int | None
    train_seconds: float
    predict_seconds: float
    stop_reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dictionary."""
        return {
            "case": self.case,
            "config": self.config,
            "iou": self.iou,
            "dice": self.dice,
            "classes": self.classes,
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 3),
            "predict_seconds": round(self.predict_seconds, 3),
            "stop_reason": self.stop_reason,
        }


# --------------------------------------------------------------------------- cases


def load_case(name: str) -> Case:
    """Load a benchmark case by name (see the module docstring).

    Parameters
    ----------
    name : str
        One of :data:`CASES`, or ``"brain_tissue"`` (the three-tissue template, painted on
        3 slices per axis; not in the default table).

    Returns
    -------
    Case
    """
    if name in SYNTHETIC:
        from napari_medseg.synthetic import make_synthetic_case

        seed, n_structures, slices = SYNTHETIC[name]
        syn = make_synthetic_case(n_structures=n_structures, seed=seed, slices_per_axis=slices)
        return Case(
            name,
            syn.image,
            syn.annotation,
            syn.expert_mask,
            tuple(syn.spacing),
            list(syn.class_names),
        )
    from napari_medseg.sample_data import (
        BRAIN_TISSUE,
        load_real_case,
        real_case_annotation,
        slices_per_axis_annotation,
    )

    real = load_real_case(name)
    # the tissue template is painted on every axis; the scans on a few axial slices + a box
    painted = slices_per_axis_annotation if name == BRAIN_TISSUE else real_case_annotation
    return Case(
        name,
        np.asarray(real.image.array),
        painted(real),
        np.asarray(real.label.array),
        tuple(float(s) for s in real.image.spacing),
        list(real.class_names),
    )


# --------------------------------------------------------------------------- runs


def mean_dice(labels: np.ndarray, case: Case, mask: np.ndarray | None = None) -> float:
    """Mean Dice over the structures against the expert mask (on ``mask`` only), rounded."""
    from napari_medseg.metrics import evaluate

    result = evaluate(labels, case.expert, spacing=case.spacing, mask=mask,
                      surface_distances=False)
    return round(float(result.mean.dice), 4)


def _score(case: Case, segmentation: np.ndarray) -> tuple[float, float, dict]:
    from napari_medseg.metrics import evaluate

    result = evaluate(
        segmentation,
        case.expert,
        spacing=case.spacing,
        labels=case.structures,
        mask=case.annotation == 0,
        surface_distances=False,
    )
    classes = {
        str(k): {"iou": m.jaccard, "dice": m.dice} for k, m in sorted(result.classes.items())
    }
    return result.mean.jaccard, result.mean.dice, classes


def run_one(case: Case, config: str, budget: float, device: str, seed: int) -> Run:
    """Train (unless ``threshold``), predict and score one configuration on one case.

    Parameters
    ----------
    case : Case
        The case.
    config : str
        One of :data:`CONFIGS`.
    budget : float
        Training wall-clock seconds.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    seed : int
        Training seed.

    Returns
    -------
    Run
    """
    if config == "threshold":
        from napari_medseg.synthetic import threshold_from_annotation

        start = time.perf_counter()
        segmentation = threshold_from_annotation(case.image, case.annotation)
        seconds = time.perf_counter() - start
        iou, dice, classes = _score(case, segmentation)
        return Run(case.name, config, iou, dice, classes, None, 0.0, seconds, None)

    from napari_medseg.inference import PredictConfig, predict
    from napari_medseg.progress import run_to_completion
    from napari_medseg.training import TrainConfig, train

    overrides, _ = CONFIGS[config]
    train_config = TrainConfig(
        time_budget=budget, iterations=None, device=device, seed=seed, **overrides
    )
    start = time.perf_counter()
    model = run_to_completion(
        train(
            case.image,
            case.annotation,
            train_config,
            spacing=case.spacing,
            class_names=case.class_names,
        )
    )
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    prediction = run_to_completion(predict(model, case.image, PredictConfig(device=device)))
    predict_seconds = time.perf_counter() - start
    iou, dice, classes = _score(case, prediction.labels)
    history = model.config.history
    return Run(
        case.name,
        config,
        iou,
        dice,
        classes,
        int(history.get("steps", 0)),
        train_seconds,
        predict_seconds,
        history.get("stop_reason"),
    )


# --------------------------------------------------------------------------- report


def machine_info(device: str) -> dict[str, Any]:
    """CPU model, core count, torch version and the resolved device."""
    import torch

    from napari_medseg.device import resolve_device

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    resolved = resolve_device(device)
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(resolved),
    }
    if resolved.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(resolved)
    return info


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary(runs: Sequence[Run], configs: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Mean IoU and Dice over the cases, per configuration."""
    out: dict[str, dict[str, float | None]] = {}
    for config in configs:
        mine = [r for r in runs if r.config == config]
        out[config] = {
            "mean_iou": float(np.mean([r.iou for r in mine])) if mine else None,
            "mean_dice": float(np.mean([r.dice for r in mine])) if mine else None,
            "paper_iou": PAPER_IOU.get(config),
        }
    return out


def format_tables(runs: Sequence[Run], cases: Sequence[str], configs: Sequence[str]) -> str:
    """The IoU table (with the paper's figures), the Dice table and the run details."""
    by = {(r.case, r.config): r for r in runs}
    means = summary(runs, configs)

    def table(metric: str, with_paper: bool) -> list[str]:
        header = ["configuration", *cases, f"mean {metric}"]
        if with_paper:
            header.append("paper IoU")
        rows = []
        for config in configs:
            row = [CONFIGS[config][1]]
            row += [
                _fmt(getattr(by[(c, config)], metric.lower())) if (c, config) in by else "-"
                for c in cases
            ]
            row.append(_fmt(means[config][f"mean_{metric.lower()}"]))
            if with_paper:
                row.append(_fmt(PAPER_IOU.get(config)))
            rows.append(row)
        return _markdown(header, rows)

    lines = ["### IoU on the voxels not annotated", ""]
    lines += table("IoU", with_paper=True)
    lines += ["", "### Dice on the voxels not annotated", ""]
    lines += table("Dice", with_paper=False)
    lines += ["", "### Training steps within the budget (train s / predict s)", ""]
    rows = []
    for config in configs:
        if config == "threshold":
            continue
        row = [CONFIGS[config][1]]
        for c in cases:
            r = by.get((c, config))
            row.append(
                "-" if r is None else f"{r.steps} ({r.train_seconds:.0f} / {r.predict_seconds:.0f})"
            )
        rows.append(row)
    if rows:
        lines += _markdown(["configuration", *cases], rows)
    return "\n".join(lines)


def _case_lines(loaded: Sequence[Case]) -> list[str]:
    rows = []
    for case in loaded:
        annotated = float(np.count_nonzero(case.annotation)) / case.annotation.size
        rows.append(
            [
                case.name,
                "x".join(str(s) for s in case.image.shape),
                "x".join(f"{s:.3g}" for s in case.spacing),
                ", ".join(case.class_names),
                f"{100 * annotated:.1f} %",
            ]
        )
    return _markdown(["case", "shape (z,y,x)", "spacing mm", "structures", "annotated"], rows)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    from napari_medseg._atomic import atomic_write

    with atomic_write(path, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        prog="paper_table.py",
        description="Table 1 of Cicek et al. 2016 on this machine: each configuration "
        "trained for the same wall-clock budget, scored on the voxels not annotated.",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="training wall-clock seconds per run (default 120)",
    )
    parser.add_argument(
        "--cases",
        type=lambda t: _names(t, CASES, "case"),
        default=list(CASES),
        help=f"comma-separated subset of {','.join(CASES)}",
    )
    parser.add_argument(
        "--configs",
        type=lambda t: _names(t, tuple(CONFIGS), "config"),
        default=list(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)}",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json-out",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write every run and the summary as JSON (updated after each run)",
    )
    parser.add_argument(
        "--replace-in",
        type=Path,
        default=None,
        metavar="FILE",
        help="a --json-out file of an earlier run: the runs made now replace its runs of the "
        "same case and configuration, and the merged table is printed (and written to "
        "--json-out); for re-running only what a change of defaults touches",
    )
    return parser


def load_runs(path: Path) -> tuple[list[Run], list[str], list[str]]:
    """The runs, cases and configurations of a ``--json-out`` file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        runs = [Run(**run) for run in data["runs"]]
        return runs, list(data["cases"]), list(data["configs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MedsegInputError(f"{path}: not a paper_table.py JSON file ({exc})") from exc


def merge_runs(old: Sequence[Run], new: Sequence[Run]) -> list[Run]:
    """``old`` with every run of a (case, configuration) in ``new`` replaced by it."""
    fresh = {(r.case, r.config): r for r in new}
    kept = [fresh.pop((r.case, r.config), r) for r in old]
    return [*kept, *fresh.values()]


def main(argv: Sequence[str] | None = None, print_fn: Callable[[str], None] = print) -> int:
    """Run the benchmark; returns the exit code (2 for a user mistake)."""
    args = build_parser().parse_args(argv)
    if args.budget <= 0:
        print("paper_table.py: error: --budget must be positive", file=sys.stderr)
        return 2
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "benchmarks/paper_table.py", *arguments])
    earlier: tuple[list[Run], list[str], list[str]] = ([], [], [])
    try:
        if args.replace_in is not None:
            earlier = load_runs(args.replace_in)
        machine = machine_info(args.device)
        loaded = [load_case(name) for name in args.cases]
    except MedsegInputError as exc:
        print(f"paper_table.py: error: {exc}", file=sys.stderr)
        return 2
    except MedsegError as exc:
        print(f"paper_table.py: error: {exc}", file=sys.stderr)
        return 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = [
        "## 3D U-Net paper table (Cicek et al. 2016, Table 1 layout), semi-automatic setting",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['torch_threads']} torch threads), torch {machine['torch']}, "
        f"device {machine['device']}" + (f" ({machine['gpu']})" if "gpu" in machine else ""),
        f"- command: `{command}`",
        f"- started {started}; training budget {args.budget:g} s per run (equal wall clock), "
        f"seed {args.seed}",
        "- scored: voxels not annotated, against the expert mask; mean over structures",
        "- paper figures: Xenopus kidney, 3 folds (a different data set; a landmark only)",
        "",
    ]
    for line in [*header, *_case_lines(loaded), ""]:
        print_fn(line)

    runs: list[Run] = []
    todo = [(case, config) for config in args.configs for case in loaded]
    cases = list(dict.fromkeys([*earlier[1], *args.cases]))
    configs = list(dict.fromkeys([*earlier[2], *args.configs]))
    payload: dict[str, Any] = {
        "command": command,
        "started": started,
        "machine": machine,
        "budget_seconds": args.budget,
        "seed": args.seed,
        "cases": cases,
        "configs": configs,
        "paper_iou": PAPER_IOU,
        "complete": False,
        "runs": [],
        "summary": {},
    }
    for number, (case, config) in enumerate(todo, start=1):
        run = run_one(case, config, args.budget, args.device, args.seed)
        runs.append(run)
        steps = "" if run.steps is None else f", {run.steps} steps"
        print(
            f"[{number}/{len(todo)}] {case.name} {config}: IoU {run.iou:.3f} Dice "
            f"{run.dice:.3f} (train {run.train_seconds:.0f} s{steps}, "
            f"predict {run.predict_seconds:.0f} s)",
            file=sys.stderr,
        )
        if args.json_out is not None:
            merged = merge_runs(earlier[0], runs)
            payload["runs"] = [r.to_dict() for r in merged]
            payload["summary"] = summary(merged, configs)
            payload["complete"] = number == len(todo)
            _write_json(args.json_out, payload)

    if args.replace_in is not None:
        print_fn(f"(runs of this command replace theirs in {args.replace_in})")
    print_fn(format_tables(merge_runs(earlier[0], runs), cases, configs))
    if args.json_out is not None:
        print_fn(f"\nwrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
