"""Write the deterministic synthetic case to NIfTI files.

Usage::

    python sample_data/generate_synthetic.py OUTDIR [--structures N] [--seed S]
        [--shape Z Y X] [--spacing Z Y X]

Writes ``synthetic_image.nii.gz`` (float32), ``synthetic_label.nii.gz`` (expert mask,
uint8: 0 background, k structure k) and ``synthetic_annotation.nii.gz`` (sparse annotation,
uint8: 0 unknown, 1 background, k+1 structure k) with the voxel spacing in the header.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

try:
    from napari_medseg.synthetic import make_synthetic_case
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from napari_medseg.synthetic import make_synthetic_case


def write_nifti(array: np.ndarray, spacing: Sequence[float], path: Path) -> None:
    """Write a ``(z, y, x)`` array with its spacing (mm, same order) as NIfTI."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    sitk.WriteImage(image, str(path), useCompression=True)


def generate(
    outdir: Path,
    n_structures: int = 1,
    seed: int = 0,
    shape: Sequence[int] = (48, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> list[Path]:
    """Generate the synthetic case and write its three files into ``outdir``.

    Returns
    -------
    list of Path
        The image, label and annotation files written.
    """
    case = make_synthetic_case(shape=shape, n_structures=n_structures, spacing=spacing, seed=seed)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, array in (
        ("image", case.image),
        ("label", case.expert_mask),
        ("annotation", case.annotation),
    ):
        path = outdir / f"synthetic_{suffix}.nii.gz"
        write_nifti(array, case.spacing, path)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder to write the NIfTI files into")
    parser.add_argument("--structures", type=int, default=1, choices=(1, 2, 3))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X")
    )
    args = parser.parse_args(argv)
    for path in generate(args.outdir, args.structures, args.seed, args.shape, args.spacing):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
