"""The ``medseg`` command: train, predict, evaluate, demo and gui, headless."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .errors import MedsegError, MedsegInputError
from .progress import ProgressBar

EXIT_USER_ERROR = 2


def _train_detail(p) -> tuple[float, str]:
    text = f"step {p.step} loss {p.loss:.3f} {p.elapsed:4.0f}s"
    return p.fraction, f"{text} {p.message}".strip()


def _tile_detail(t) -> tuple[float, str]:
    return t.index / max(1, t.total), f"tile {t.index}/{t.total} {t.message}".strip()


def _bar_callback(label: str, describe):
    bar = ProgressBar(label)

    def update(item) -> None:
        bar.update(*describe(item))

    return bar, update


def _train_config(args: argparse.Namespace):
    """TrainConfig from the shared training options (60 s unless a budget or count is given)."""
    from .training import TrainConfig

    budget = args.time_budget
    if budget is None and args.iterations is None:
        budget = 60.0
    return TrainConfig(
        arch=args.arch,
        time_budget=budget,
        iterations=args.iterations,
        device=args.device,
        seed=args.seed,
        base_channels=getattr(args, "base_channels", None),
        flips=args.flips,
        ensemble=args.ensemble,
        planes=args.planes,
        group_norm=args.group_norm,
        mixed_precision=not args.full_precision,
        freeze_batch_norm=args.freeze_batch_norm,
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``crossval``: flips, ensembles, 2D planes, group norm."""
    parser.add_argument(
        "--flips",
        choices=["auto", "on", "off"],
        default="auto",
        help="flip and turn training patches by right angles (auto: only when one structure "
        "is painted, since with several a mirror image can swap them)",
    )
    parser.add_argument(
        "--ensemble",
        type=int,
        default=1,
        metavar="N",
        help="train N networks, each with its own seed and 1/N of the time, and average "
        "them (steadier results; default 1)",
    )
    parser.add_argument(
        "--planes",
        choices=["one", "three"],
        default="one",
        help="2D networks: take slices across the first axis only (one, the default) or "
        "across all three and average the three passes (three)",
    )
    parser.add_argument(
        "--group-norm",
        action="store_true",
        help="normalise over groups of channels within each patch instead of batch norm "
        "(better on the three-tissue brain, worse on single structures; see the README)",
    )
    parser.add_argument(
        "--freeze-batch-norm",
        type=float,
        default=None,
        metavar="FRACTION",
        help="for the last FRACTION of the run, batch norm uses the statistics prediction "
        "uses while the weights learn on (default: 0.3 with several structures, 0 with one)",
    )
    _add_precision_option(parser)


def _add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full-precision",
        action="store_true",
        help="compute in float32 even where the device does bf16 natively (a GPU; for "
        "prediction also a CPU with AVX-512 BF16 or AMX): slower, the same numbers everywhere",
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train_files

    config = _train_config(args)
    class_names = args.class_names.split(",") if args.class_names else None
    bar, update = _bar_callback("train", _train_detail)
    try:
        model = train_files(
            args.image,
            args.annotation,
            args.out,
            config,
            class_names=class_names,
            on_progress=update,
        )
    finally:
        bar.close()
    history = model.config.history
    members = history.get("ensemble", 1)
    arch = model.config.arch if members == 1 else f"{members} x {model.config.arch}"
    print(
        f"saved {args.out}: {arch}, {model.config.n_classes} classes, "
        f"{history['steps']} steps in {history['seconds']:.0f} s on {history['device']}, "
        f"final loss {history['final_loss']:.4f} ({history['stop_reason']})"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import predict_file
    from .inference import PredictConfig

    annotation = None
    if args.annotation:
        from .io import read_volume

        annotation = read_volume(args.annotation)  # once: kept voxels and suggestions
    bar, update = _bar_callback("predict", _tile_detail)
    try:
        prediction = predict_file(
            args.model,
            args.image,
            args.out,
            PredictConfig(
                device=args.device,
                mirror=args.mirror,
                mixed_precision=not args.full_precision,
            ),
            probabilities_path=args.probabilities,
            uncertainty_path=args.uncertainty,
            annotation=annotation,
            on_progress=update,
        )
    finally:
        bar.close()
    counts = {
        int(k): int((prediction.labels == k).sum())
        for k in range(1, int(prediction.labels.max()) + 1)
    }
    kept = ""
    if args.annotation:
        kept = f"; {prediction.kept_voxels:,} painted voxels kept from {args.annotation}"
    print(f"saved {args.out} (voxels per structure: {counts or 'none'}{kept})")
    for path in (args.probabilities, args.uncertainty):
        if path:
            print(f"saved {path}")
    if prediction.uncertainty is not None and prediction.uncertainty.ndim == 3:
        from .annotation import slices_to_paint

        painted = annotation.array if annotation is not None else None
        suggested = slices_to_paint(prediction.uncertainty, painted, axis=0, count=3)
        if suggested:
            listed = ", ".join(str(k) for k in suggested)
            print(f"networks disagree most on axial slices {listed}: paint one of them next")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate_files

    result = evaluate_files(args.segmentation, args.expert_mask, exclude_annotation=args.exclude)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(case=args.case, time_budget=args.time_budget, device=args.device, seed=args.seed)
    return 0


def _crossval_detail(p) -> tuple[float, str]:
    if p.phase == "train":
        text = f"fold {p.fold + 1}/{p.folds} train step {p.step} loss {p.loss:.3f}"
    else:
        text = f"fold {p.fold + 1}/{p.folds} predict tile {p.step}"
    return p.fraction, f"{text} {p.elapsed:4.0f}s {p.message}".strip()


def cmd_crossval(args: argparse.Namespace) -> int:
    """``medseg crossval``: k-fold cross-validation over the annotated slices."""
    import signal
    import threading

    import numpy as np

    from .api import check_same_geometry
    from .crossval import CrossValConfig, crossval
    from .io import read_volume
    from .progress import drive

    config = CrossValConfig(folds=args.folds, train=_train_config(args))
    config.check()
    image = read_volume(args.image)
    annotation = read_volume(args.annotation)
    check_same_geometry(image, annotation, "annotation")
    class_names = args.class_names.split(",") if args.class_names else None
    stop = threading.Event()

    def on_interrupt(signum, frame) -> None:  # first Ctrl-C: finish the step, keep folds
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nmedseg crossval: stopping after the current step (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if in_main_thread else None
    try:
        generator = crossval(
            np.asarray(image.array),
            np.asarray(annotation.array),
            config,
            spacing=image.spacing,
            class_names=class_names,
            stop=stop,
        )
        result = drive(generator, ProgressBar("crossval"), _crossval_detail)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format_table())
    return 0 if result.complete else 130


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        from ._qt.launch import launch_gui
    except ImportError as exc:
        raise MedsegInputError(
            f"the GUI needs napari and Qt ({exc}); install with: pip install 'napari-medseg[gui]'"
        ) from None
    launch_gui(list(args.files))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medseg`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Semi-automatic 3D segmentation from a few annotated slices "
        "(sparse annotation: 0 = not annotated, 1 = background, k+1 = structure k).",
    )
    parser.add_argument("--version", action="version", version=f"napari-medseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    devices = ["auto", "cpu", "cuda", "mps"]

    p = sub.add_parser("train", help="train a network on a sparse annotation")
    p.add_argument("image")
    p.add_argument("annotation", help="0 = not annotated, 1 = background, k+1 = structure k")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--arch", choices=["unet3d", "unet2d", "fcn"], default="unet3d")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall-clock training time (default 60 s unless --iterations is given)",
    )
    p.add_argument("--iterations", type=int, default=None, metavar="N")
    p.add_argument("--device", choices=devices, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class-names", default=None, help="comma-separated structure names")
    _add_model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment an image with a trained model")
    p.add_argument("model")
    p.add_argument("image")
    p.add_argument(
        "--out", required=True, help="segmentation to write (0 = background, k = structure k)"
    )
    p.add_argument(
        "--probabilities",
        default=None,
        metavar="FILE",
        help="also write per-class probabilities (.npy or a medical format)",
    )
    p.add_argument(
        "--uncertainty",
        default=None,
        metavar="FILE",
        help="also write where an ensemble's networks disagree, 0-1 (a model trained with "
        "--ensemble 2 or more): the places where painting another slice helps most",
    )
    p.add_argument(
        "--annotation",
        default=None,
        metavar="FILE",
        help="the annotation the model was trained on: painted voxels keep their painted "
        "label in the segmentation (as in the Predict widget), and with --uncertainty the "
        "slices suggested for painting leave out what is already painted",
    )
    p.add_argument("--device", choices=devices, default="auto")
    p.add_argument("--mirror", action="store_true", help="test-time flips (slower, smoother)")
    _add_precision_option(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="compare a segmentation with an expert mask")
    p.add_argument("segmentation")
    p.add_argument("expert_mask")
    p.add_argument(
        "--exclude",
        default=None,
        metavar="ANNOTATION",
        help="score only voxels this annotation leaves at 0 (not annotated)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="the whole loop headless on bundled sample data")
    p.add_argument(
        "--case",
        default="synthetic",
        help="synthetic, brain1, breast1, prostate_phantom or brain_tissue",
    )
    p.add_argument("--time-budget", type=float, default=60.0, metavar="SECONDS")
    p.add_argument("--device", choices=devices, default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "crossval",
        help="estimate accuracy without an expert mask: k-fold cross-validation "
        "over the annotated slices",
        description="Split the annotated slices that show a structure into k folds; for each "
        "fold train on the others and score IoU/Dice on the held-out slices (the "
        "semi-automatic setup of Cicek et al. 2016). The time budget is per fold.",
    )
    p.add_argument("image")
    p.add_argument("annotation", help="0 = not annotated, 1 = background, k+1 = structure k")
    p.add_argument("--folds", type=int, default=3, metavar="K", help="number of folds (default 3)")
    p.add_argument("--arch", choices=["unet3d", "unet2d", "fcn"], default="unet3d")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="training time per fold (default 60 s unless --iterations is given)",
    )
    p.add_argument(
        "--iterations", type=int, default=None, metavar="N", help="training steps per fold"
    )
    p.add_argument("--device", choices=devices, default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of fold 0 (fold f uses seed + f)")
    p.add_argument(
        "--base-channels",
        type=int,
        default=None,
        metavar="N",
        help="width of the network's first level (default: 8)",
    )
    p.add_argument("--class-names", default=None, help="comma-separated structure names")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_model_options(p)
    p.set_defaults(func=cmd_crossval)

    p = sub.add_parser("gui", help="open napari with the plugin's widgets docked")
    p.add_argument("files", nargs="*")
    p.set_defaults(func=cmd_gui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedsegInputError as exc:
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except MedsegError as exc:
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
