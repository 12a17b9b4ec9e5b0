"""The ``medseg`` command: train, predict, evaluate, demo and gui, headless."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from . import __version__
from .cli_dicom import add_dicom_seg_option, add_parsers, add_series_uid_option, check_dicom_inputs
from .errors import MedsegError, MedsegInputError
from .options import add_arguments, config_from_args
from .progress import Progress, ProgressBar, show
from .run_report import describe_validation
from .training import TrainConfig
from .training.warm import WARM_START_BUDGET, with_warm_budget

EXIT_USER_ERROR = 2
OUT_OF_MEMORY = "not enough memory: close other programs or use a smaller volume"


def _bar(label: str) -> tuple[ProgressBar, Callable[[Progress], None]]:
    bar = ProgressBar(label)
    return bar, show(bar)


def _class_names(args: argparse.Namespace) -> list[str] | None:
    return args.class_names.split(",") if args.class_names else None


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the options given (60 s unless a budget or a step count is given)."""
    only_steps = args.iterations is not None and args.time_budget is None
    return config_from_args(TrainConfig, args, **({"time_budget": None} if only_steps else {}))


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train_files

    config = _train_config(args)
    if args.init is not None and args.time_budget is None and args.iterations is None:
        config = with_warm_budget(config)
    check_dicom_inputs(args.image, args.series_uid, annotation=args.annotation)
    bar, update = _bar("train")
    stop = threading.Event()
    try:
        with _first_interrupt_stops(stop, "train"):
            model = train_files(
                args.image,
                args.annotation,
                args.out,
                config,
                class_names=_class_names(args),
                on_progress=update,
                init=args.init,
                stop=stop,
                series_uid=args.series_uid,
            )
    finally:
        bar.close()
    history = model.config.history
    members = history.get("ensemble", 1)
    arch = model.config.arch if members == 1 else f"{members} x {model.config.arch}"
    rounds = history.get("rounds", [])
    start = f", round {len(rounds)} continued from {args.init}" if args.init else ""
    print(
        f"saved {args.out}: {arch}, {model.config.n_classes} classes, "
        f"{history['steps']} steps in {history['seconds']:.0f} s on {history['device']}, "
        f"final loss {history['final_loss']:.4f} ({history['stop_reason']}){start}"
    )
    line, warning = describe_validation(history)
    if line:
        print(line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 130 if stop.is_set() else 0  # interrupted, and what was trained is saved


def cmd_predict(args: argparse.Namespace) -> int:
    from .cli_cohort import cmd_predict_cohort, single_image

    if args.out_dir is not None:  # a cohort of scans, on dask.distributed
        return cmd_predict_cohort(args)
    from .api import check_predict_paths, predict_file
    from .inference import PredictConfig
    from .out_of_core import label_counts

    args.image = single_image(args)  # one image, --out FILE
    config = config_from_args(PredictConfig, args)
    if config.regions != "all" and not args.annotation:
        raise MedsegInputError(f"--regions {config.regions} needs --annotation (the painting)")
    paths = (args.model, args.image, args.out, args.probabilities, args.uncertainty)
    check_predict_paths(*paths, annotation=args.annotation)  # before the annotation is read
    check_dicom_inputs(args.image, args.series_uid, args.dicom_seg, annotation=args.annotation)
    annotation = None
    if args.annotation:
        from .io import read_volume

        annotation = read_volume(args.annotation)  # once: kept voxels and suggestions
    bar, update = _bar("predict")
    try:
        prediction = predict_file(
            args.model,
            args.image,
            args.out,
            config,
            probabilities_path=args.probabilities,
            uncertainty_path=args.uncertainty,
            annotation=annotation,
            on_progress=update,
            series_uid=args.series_uid,
            dicom_seg_path=args.dicom_seg,
        )
    finally:
        bar.close()
    found = label_counts(prediction.labels, 1)  # a .zarr output: read slab by slab
    counts = {k: int(found[k]) for k in range(1, len(found))}
    kept = ""
    if args.annotation:
        kept = f"; {prediction.kept_voxels:,} painted voxels kept from {args.annotation}"
        if prediction.cleared_voxels:
            kept += f"; {prediction.cleared_voxels:,} voxels apart from the painting cleared"
    print(f"saved {args.out} (voxels per structure: {counts or 'none'}{kept})")
    if prediction.apart:
        from .checkpoint import read_model_config
        from .regions import describe_apart

        names = read_model_config(args.model).class_names[1:]
        note = describe_apart(prediction.apart, names, "--regions touching")
        if note:
            print(note)
    for path in (args.probabilities, args.uncertainty, args.dicom_seg):
        if path:
            print(f"saved {path}")
    if prediction.uncertainty is not None and prediction.uncertainty.ndim == 3:
        from .painted_slices import describe_slices, planes_to_paint

        painted = annotation.array if annotation is not None else None
        suggested = planes_to_paint(prediction.uncertainty, painted, count=3)
        if suggested:
            print(
                f"the model is least sure on {describe_slices(suggested)}: paint one of them next"
            )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .api import evaluate_files

    result = evaluate_files(args.segmentation, args.expert_mask, exclude_annotation=args.exclude)
    stray = [k for k, m in result.classes.items() if m.n_reference == 0 and m.n_predicted > 0]
    if stray:
        listed = ", ".join(str(k) for k in stray)
        print(
            f"medseg evaluate: warning: the segmentation holds label(s) {listed} that the expert "
            "mask lacks (is it an annotation? those paint structure k as k+1)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format_table())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    config = config_from_args(TrainConfig, args)  # the demo's budget, device and seed
    run_demo(case=args.case, time_budget=config.time_budget, device=config.device,
             seed=config.seed)
    return 0


def cmd_crossval(args: argparse.Namespace) -> int:
    """``medseg crossval``: k-fold cross-validation over the annotated slices."""
    from .api import crossval_files
    from .crossval import CrossValConfig

    config = config_from_args(CrossValConfig, args, train=_train_config(args))
    check_dicom_inputs(args.image, args.series_uid, annotation=args.annotation)
    stop = threading.Event()
    bar, update = _bar("crossval")
    try:
        with _first_interrupt_stops(stop, "crossval"):
            result = crossval_files(
                args.image,
                args.annotation,
                config,
                class_names=_class_names(args),
                on_progress=update,
                stop=stop,
                series_uid=args.series_uid,
            )
    finally:
        bar.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(result.format_table())
    return 0 if result.complete else 130


@contextmanager
def _first_interrupt_stops(stop: threading.Event, command: str) -> Iterator[None]:
    """The first Ctrl-C sets ``stop`` (the run ends after its current step and keeps what it
    has); a second one interrupts. Only in the main thread, where signals arrive."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            f"\nmedseg {command}: stopping after the current step (Ctrl-C again to abort)",
            file=sys.stderr,
        )

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def cmd_gui(args: argparse.Namespace) -> int:
    try:
        from ._qt.launch import launch_gui
    except ImportError as exc:
        raise MedsegInputError(
            f"the GUI needs napari and Qt ({exc}); install with: pip install 'napari-medseg[gui]'"
        ) from None
    launch_gui(list(args.files))
    return 0


ANNOTATION_HELP = "sparse annotation: 0 = not annotated, 1 = background, k+1 = structure k"

#: Examples shown under each command's --help.
EXAMPLES = {
    "train": [
        "medseg train ct.nii.gz ct_annotation.nii.gz --out model.safetensors",
        "medseg train ct.nii.gz ct_annotation.nii.gz --out model.safetensors "
        f"--init model.safetensors   # one more slice painted: a {WARM_START_BUDGET:g} s round",
        "medseg train dicom_folder/ annotation.nii.gz --out model.safetensors --series-uid UID",
        "medseg train mri.nrrd mri_annotation.nrrd --out m.safetensors --arch unet2d "
        "--class-names tumour,oedema --time-budget 120",
    ],
    "predict": [
        "medseg predict model.safetensors ct.nii.gz --out ct_seg.nii.gz",
        "medseg predict model.safetensors dicom_folder/ --out seg.nrrd --probabilities p.npy",
        "medseg predict model.safetensors dicom_folder/ --series-uid UID --out seg.nrrd "
        "--dicom-seg seg_dicom/seg.dcm",
        "medseg predict model.safetensors scans/ 'more/*.nrrd' --out-dir segs/ "
        "--metrics-against experts/",
        "medseg predict model.safetensors scans/ --out-dir segs/ --scheduler tcp://host:8786",
    ],
    "evaluate": [
        "medseg evaluate ct_seg.nii.gz ct_expert.nii.gz",
        "medseg evaluate ct_seg.nii.gz ct_expert.nii.gz --exclude ct_annotation.nii.gz --json",
    ],
}


def _examples(command: str) -> str:
    from .io import SUPPORTED_EXTENSIONS

    formats = ", ".join(SUPPORTED_EXTENSIONS)
    lines = "\n".join(f"  {line}" for line in EXAMPLES[command])
    return f"files: {formats}, or a DICOM folder\n\nexamples:\n{lines}"


def _add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train", help="train a network on a sparse annotation", epilog=_examples("train"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="the image to learn from (any format medseg reads)")
    p.add_argument("annotation", help=ANNOTATION_HELP)
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--class-names", default=None, help="comma-separated structure names")
    p.add_argument(
        "--init",
        default=None,
        metavar="MODEL",
        help="continue from this model (a warm start: its network and normalisation are "
        f"kept, a newly painted structure is added; default budget {WARM_START_BUDGET:g} s); "
        "may be --out itself",
    )
    add_series_uid_option(p)
    add_arguments(p, TrainConfig, help_overrides={"time_budget": _TIME_HELP})
    p.set_defaults(func=cmd_train)


_TIME_HELP = (
    f"wall-clock training time (default: {TrainConfig().time_budget:g} s, "
    f"{WARM_START_BUDGET:g} s with --init, none with --iterations only)"
)


def _add_predict_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .cli_cohort import add_cohort_options
    from .inference import PredictConfig

    p = sub.add_parser(
        "predict", help="segment an image with a trained model", epilog=_examples("predict"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model file written by medseg train (.safetensors)")
    p.add_argument(
        "image", nargs="+", metavar="IMAGE", help="the image to segment; with --out-dir, any "
        "number of images, folders of scans (a DICOM series folder is one) or glob patterns",
    )  # fmt: skip
    outputs = p.add_mutually_exclusive_group(required=True)
    outputs.add_argument("--out", help="segmentation to write (0 = background, k = structure k)")
    add_cohort_options(p, outputs)  # --out-dir DIR and the cohort's options (cli_cohort.py)
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
    add_series_uid_option(p)
    add_dicom_seg_option(p)
    add_arguments(p, PredictConfig, exclude=("probabilities", "uncertainty"))
    p.set_defaults(func=cmd_predict)


def _add_evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate", help="compare a segmentation with an expert mask",
        epilog=_examples("evaluate"), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("segmentation", help="0 = background, k = structure k")
    p.add_argument("expert_mask", help="the reference, same convention and grid")
    p.add_argument(
        "--exclude",
        default=None,
        metavar="ANNOTATION",
        help="score only voxels this annotation leaves at 0 (not annotated)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="the whole loop headless on bundled sample data")
    p.add_argument(
        "--case",
        default="synthetic",
        help="synthetic, brain1, breast1, prostate_phantom or brain_tissue (default: synthetic)",
    )
    p.add_argument("--time-budget", type=float, default=60.0, metavar="SECONDS",
                   help="training time (default: 60)")
    add_arguments(p, TrainConfig, names=("device", "seed"))
    p.set_defaults(func=cmd_demo)


def _add_crossval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .crossval import CrossValConfig

    p = sub.add_parser(
        "crossval",
        help="estimate accuracy without an expert mask: k-fold cross-validation "
        "over the annotated slices",
        description="Split the annotated slices that show a structure into k folds; for each "
        "fold train on the others and score IoU/Dice on the held-out slices (the "
        "semi-automatic setup of Cicek et al. 2016). The time budget is per fold.",
    )
    p.add_argument("image", help="the image to learn from")
    p.add_argument("annotation", help=ANNOTATION_HELP)
    p.add_argument("--class-names", default=None, help="comma-separated structure names")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_series_uid_option(p)
    add_arguments(p, CrossValConfig, names=("folds",))
    add_arguments(
        p,
        TrainConfig,
        help_overrides={
            "time_budget": "training time per fold (default: 60 s unless --iterations is given)",
            "iterations": "training steps per fold",
            "seed": "seed of fold 0 (fold f uses seed + f; default: 0)",
        },
    )
    p.set_defaults(func=cmd_crossval)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``medseg`` (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Semi-automatic 3D segmentation from a few annotated slices "
        "(sparse annotation: 0 = not annotated, 1 = background, k+1 = structure k).",
    )
    parser.add_argument("--version", action="version", version=f"napari-medseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    _add_predict_parser(sub)
    _add_evaluate_parser(sub)
    _add_demo_parser(sub)
    _add_crossval_parser(sub)
    add_parsers(sub)  # medseg dicom-series
    from .cli_export import add_parsers as add_export_parsers

    add_export_parsers(sub)  # medseg export-model
    from .cli_nnunet import add_parsers as add_nnunet_parsers

    add_nnunet_parsers(sub)  # medseg export-nnunet, import-nnunet
    p = sub.add_parser("gui", help="open napari with the plugin's widgets docked")
    p.add_argument("files", nargs="*", help="images or annotations to open")
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
    except MemoryError:
        print(f"medseg {args.command}: error: {OUT_OF_MEMORY}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
