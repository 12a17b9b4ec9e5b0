"""Draw the expert outline and a segmentation on brain1's tumour slices (docs figure).

Top row: expert mask (green); bottom row: the segmentation (red). Slices marked with a yellow
bar were painted in the shipped annotation; the others were never seen by the network.

    .venv/bin/medseg train sample_data/brain1_image.nrrd sample_data/brain1_annotation.nrrd \\
        --out brain1.safetensors --time-budget 180
    .venv/bin/medseg predict brain1.safetensors sample_data/brain1_image.nrrd --out seg.nrrd
    .venv/bin/python docs/make_brain1_slices.py seg.nrrd docs/brain1_slices.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from napari_medseg.io import read_volume

ROOT = Path(__file__).resolve().parents[1]
SLICES = range(11, 18)
ZOOM = 4


def _tile(gray: np.ndarray, outline: np.ndarray, colour, painted: bool) -> np.ndarray:
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[find_boundaries(outline)] = colour
    if painted:
        rgb[:3] = (1.0, 1.0, 0.0)
    return np.kron(rgb, np.ones((ZOOM, ZOOM, 1)))


def main(segmentation: str, out: str) -> int:
    """Write the figure to ``out``."""
    image = np.asarray(read_volume(ROOT / "sample_data/brain1_image.nrrd").array, float)
    expert = np.asarray(read_volume(ROOT / "sample_data/brain1_label.nrrd").array) > 0
    painted = np.asarray(read_volume(ROOT / "sample_data/brain1_annotation.nrrd").array)
    seg = np.asarray(read_volume(segmentation).array) > 0
    _, ys, xs = np.nonzero(expert)
    crop = (slice(ys.min() - 8, ys.max() + 9), slice(xs.min() - 8, xs.max() + 9))
    lo, hi = np.percentile(image[SLICES.start : SLICES.stop][(slice(None), *crop)], [1, 99.5])
    rows = []
    for mask, colour in ((expert, (0.0, 1.0, 0.0)), (seg, (1.0, 0.0, 0.0))):
        tiles = []
        for z in SLICES:
            gray = np.clip((image[z][crop] - lo) / (hi - lo), 0, 1)
            tiles.append(_tile(gray, mask[z][crop], colour, bool((painted[z] > 0).all())))
            tiles.append(np.ones((tiles[-1].shape[0], ZOOM, 3)))
        rows.append(np.concatenate(tiles, axis=1))
    figure = np.concatenate([rows[0], np.ones((ZOOM, rows[0].shape[1], 3)), rows[1]], axis=0)
    Image.fromarray((figure * 255).astype(np.uint8)).save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
