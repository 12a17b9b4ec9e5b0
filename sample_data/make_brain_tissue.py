"""Make the 2 mm three-tissue brain volume (``brain_tissue_*.nrrd``) from the ICBM152 template.

Source: the MNI ICBM152 2009a nonlinear symmetric template (1 mm, skull-stripped T1 and grey
and white matter probability maps), as bundled in the nilearn wheel on PyPI
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``).
Nothing is downloaded at run time: point this script at the folder holding those three files,
e.g. after ``pip download --no-deps nilearn==0.14.1`` and unzipping the wheel::

    python sample_data/make_brain_tissue.py path/to/nilearn/datasets/data

What it does:

1. averages 2 x 2 x 2 blocks of the 1 mm T1 and of the probability maps (2 mm voxels);
2. the brain is where at least half of a block lies inside the template's brain (T1 > 0);
3. inside it, each voxel gets the most probable tissue: cerebrospinal fluid
   (``1 - p_grey - p_white``), grey matter or white matter; outside it, 0;
4. crops to the brain's bounding box plus 3 voxels, and writes the T1 as ``uint8`` and the
   labels (0 background, 1 CSF, 2 grey matter, 3 white matter) as gzip NRRD.

Attribution and licence: ``sample_data/ATTRIBUTION.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_medseg.io import write_volume  # noqa: E402
from napari_medseg.volume import Volume  # noqa: E402

PATTERN = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
MARGIN = 3


def _read(folder: Path, kind: str):
    import SimpleITK as sitk

    return sitk.ReadImage(str(folder / PATTERN.format(kind)))


def _array(image) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image).astype(np.float32)


def _pool(array: np.ndarray) -> np.ndarray:
    """Mean of 2 x 2 x 2 blocks (a trailing odd plane is dropped)."""
    even = tuple((n // 2) * 2 for n in array.shape)
    a = array[: even[0], : even[1], : even[2]]
    return a.reshape(even[0] // 2, 2, even[1] // 2, 2, even[2] // 2, 2).mean(axis=(1, 3, 5))


def make(folder: Path) -> tuple[Volume, np.ndarray]:
    """The 2 mm T1 (``uint8``) and tissue labels (``uint8``, 0-3), cropped to the brain.

    The T1 keeps the template's orientation and world position (origin at the centre of the
    first 2 mm block).
    """
    source = _read(folder, "t1")
    t1, grey, white = _array(source), _array(_read(folder, "gm")), _array(_read(folder, "wm"))
    inside = t1 > 0
    csf = np.clip(255.0 - grey - white, 0.0, None) * inside
    image = _pool(t1)
    brain = _pool(inside.astype(np.float32)) >= 0.5
    tissue = np.argmax(np.stack([_pool(csf), _pool(grey), _pool(white)]), axis=0) + 1
    labels = (tissue * brain).astype(np.uint8)
    hits = np.argwhere(brain)
    low = np.maximum(hits.min(axis=0) - MARGIN, 0)
    high = np.minimum(hits.max(axis=0) + 1 + MARGIN, brain.shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    # first 2 mm voxel = centre of a 2 x 2 x 2 block of 1 mm voxels; SimpleITK is (x, y, z)
    corner = [2.0 * float(v) + 0.5 for v in reversed(low)]
    origin_xyz = source.TransformContinuousIndexToPhysicalPoint(corner)
    direction = np.asarray(source.GetDirection(), dtype=float).reshape(3, 3)[::-1, ::-1]
    volume = Volume(
        np.round(image[crop]).astype(np.uint8),
        spacing=(2.0, 2.0, 2.0),
        origin=tuple(reversed(origin_xyz)),
        direction=direction.copy(),
    )
    return volume, labels[crop]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__)
        return 2
    volume, labels = make(Path(argv[0]))
    write_volume(HERE / "brain_tissue_image.nrrd", volume, labels=False)
    write_volume(HERE / "brain_tissue_label.nrrd", labels, reference=volume, labels=True)
    counts = np.bincount(labels.ravel(), minlength=4)
    print(f"brain_tissue: {volume.shape} voxels of 2 mm; label voxels {counts.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
