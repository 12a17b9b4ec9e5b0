"""Write the sparse annotations of the bundled real cases next to their images.

For each case: a few axial slices painted from the expert label (structure k -> k + 1, the
rest of those slices background = 1) plus a region-of-interest box (the label's bounding box
grown by 2 slices and 20 voxels in plane) outside which everything is marked background.
Voxels left 0 are "not annotated"; scoring on them is the semi-automatic protocol.

    python sample_data/make_real_annotations.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from napari_medseg.io import write_volume  # noqa: E402
from napari_medseg.sample_data import REAL_CASES, load_real_case, real_case_annotation  # noqa: E402


def main() -> None:
    for name in REAL_CASES:
        case = load_real_case(name)
        annotation = real_case_annotation(case)
        out = HERE / f"{name}_annotation.nrrd"
        write_volume(out, annotation, reference=case.image, labels=True)
        print(f"{out.name}: {int((annotation > 0).sum())} of {annotation.size} voxels annotated")


if __name__ == "__main__":
    main()
