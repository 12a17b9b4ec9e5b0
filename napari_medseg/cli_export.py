"""``medseg export-model``: a trained model as a portable file (ONNX), checked first.

:func:`add_parsers` adds the command to ``medseg``'s parser
(:func:`napari_medseg.cli.build_parser`); the work is :func:`napari_medseg.export_onnx.export_onnx`.
"""

from __future__ import annotations

import argparse
import sys

from .export_onnx import ExportConfig
from .options import add_arguments, config_from_args

_DESCRIPTION = """Export a trained model to ONNX (pip install "napari-medseg[onnx]").
Before the file is saved, a volume is predicted with ONNX Runtime and with torch
through the same tiling; the file is saved only when their labels agree (else exit 1)."""
_EXAMPLES = """examples:
  medseg export-model model.safetensors --onnx model.onnx
  medseg export-model model.safetensors --onnx model.onnx --check-image ct.nii.gz
  medseg export-model model.safetensors --onnx model.onnx --opset 18 --no-check

The file maps normalised intensities "image" (N, 1, D, H, W) to class "probabilities"
(N, K, D, H, W); its metadata_props "medseg_config" and "medseg_onnx" (JSON) hold the
model's config, the normalisation and the tiling prediction uses."""


def cmd_export_model(args: argparse.Namespace) -> int:
    """Export ``args.model`` to ``args.onnx`` and print what was saved and checked."""
    from .export_onnx import export_onnx

    def say(stage: str) -> None:
        print(f"medseg export-model: {stage}...", file=sys.stderr, flush=True)

    result = export_onnx(
        args.model,
        args.onnx,
        config_from_args(ExportConfig, args),
        check_image=args.check_image,
        on_progress=say,
    )
    print(result.describe())
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export-model`` to the subcommands of ``medseg``."""
    p = sub.add_parser(
        "export-model",
        help="save a trained model as an ONNX file, checked with ONNX Runtime",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="a model file written by medseg train (.safetensors)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument(
        "--check-image",
        default=None,
        metavar="IMAGE",
        help="predict this volume in the check (default: a synthetic volume of two tiles)",
    )
    add_arguments(p, ExportConfig)
    p.set_defaults(func=cmd_export_model)
