"""``medseg export-nnunet`` and ``medseg import-nnunet``: nnU-Net v2 raw datasets.

:func:`add_parsers` adds both subcommands to the ``medseg`` parser; the work is done by
:mod:`napari_medseg.nnunet`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .colors import parse_class_names
from .errors import MedsegInputError
from .nnunet import (
    NnunetExportConfig,
    NnunetImportConfig,
    OnCase,
    export_nnunet,
    import_nnunet,
)
from .options import add_arguments, config_from_args, help_of

__all__ = ["add_parsers", "cmd_export_nnunet", "cmd_import_nnunet"]

_EXPORT_EXAMPLE = """\
example:
  medseg export-nnunet ct1.nii.gz ct1_annotation.nii.gz ct2.nii.gz ct2_annotation.nii.gz \\
      --out nnUNet_raw --dataset-id 501 --dataset-name Liver --channel CT
  nnUNetv2_plan_and_preprocess -d 501 --verify_dataset_integrity
"""
_IMPORT_EXAMPLE = """\
example:
  medseg import-nnunet nnUNet_raw/Dataset501_Liver --out liver_cases --case ct1
"""


def _progress(verb: str) -> OnCase:
    def show(done: int, total: int, case: str) -> None:
        print(f"{verb} {done}/{total}: {case}", flush=True)

    return show


def _pairs(files: Sequence[str]) -> list[tuple[str, str]]:
    if len(files) % 2:
        raise MedsegInputError(
            f"give images and annotations in pairs (IMAGE ANNOTATION ...); got {len(files)} files"
        )
    return [(files[i], files[i + 1]) for i in range(0, len(files), 2)]


def cmd_export_nnunet(args: argparse.Namespace) -> int:
    """Run ``medseg export-nnunet``."""
    config = config_from_args(NnunetExportConfig, args)
    names = parse_class_names(args.class_names) if args.class_names else None
    folder = export_nnunet(
        _pairs(args.files), args.out, config, class_names=names, on_case=_progress("wrote")
    )
    print(f"nnU-Net dataset written: {folder}")
    return 0


def cmd_import_nnunet(args: argparse.Namespace) -> int:
    """Run ``medseg import-nnunet``."""
    config = config_from_args(NnunetImportConfig, args)
    cases = import_nnunet(args.dataset, args.out, config, on_case=_progress("imported"))
    for case in cases:
        print(f"{case.case}: {case.image} {case.annotation}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export-nnunet`` and ``import-nnunet`` to the ``medseg`` subcommands."""
    p = sub.add_parser(
        "export-nnunet",
        help="write images and their sparse annotations as an nnU-Net v2 raw dataset "
        "(unannotated voxels get nnU-Net's ignore label)",
        epilog=_EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="IMAGE ANNOTATION",
                   help="image and sparse annotation of each case, in pairs")  # fmt: skip
    p.add_argument("--out", required=True,
                   help="folder that receives DatasetXXX_NAME (nnU-Net's nnUNet_raw)")  # fmt: skip
    p.add_argument("--dataset-id", dest="dataset_id", type=int, required=True,
                   help=help_of(NnunetExportConfig, "dataset_id"))  # fmt: skip
    add_arguments(p, NnunetExportConfig, exclude=("dataset_id",))
    p.add_argument(
        "--class-names", default=None,
        help="comma-separated structure names (default: those saved with the annotations)",
    )  # fmt: skip
    p.set_defaults(func=cmd_export_nnunet)

    p = sub.add_parser(
        "import-nnunet",
        help="read an nnU-Net v2 raw dataset's cases back as images and sparse annotations",
        epilog=_IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help="the DatasetXXX_NAME folder (with dataset.json)")
    p.add_argument("--out", required=True, help="folder to create for the cases (or an empty one)")
    add_arguments(p, NnunetImportConfig)
    p.set_defaults(func=cmd_import_nnunet)
