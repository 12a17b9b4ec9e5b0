"""The bundled real cases: small MRI volumes with complete expert labels.

The files (NRRD) come from the PyRadiomics test data (BSD-3-Clause, Copyright 2017 Harvard
Medical School); the brain and breast cases come from The Cancer Imaging Archive (TCGA
collections, CC BY 3.0). See ``sample_data/ATTRIBUTION.md``, which must ship with them.

In an editable checkout they live in ``<repo>/sample_data``; in an installed wheel in
``napari_medseg/sample_data`` (force-included by the build). :func:`sample_data_dir` finds
whichever exists.

Label remapping
---------------
Labels are remapped to consecutive values ``0..K`` so that ``k`` is structure ``k``:

* ``brain1``: 0 background, 1 ``tumour``.
* ``breast1``: 0 background, 1 ``lesion``.
* ``prostate_phantom``: file values 0, 1, 7, 8, 9 become 0, 1, 2, 3, 4; the class names
  keep the file value: ``label_1``, ``label_7``, ``label_8``, ``label_9``.
* ``brain_tissue``: 0 background (outside the brain), 1 ``CSF``, 2 ``grey matter``,
  3 ``white matter``.

``brain_tissue`` is not a scan but the MNI ICBM152 2009a template (an average of 152 brains,
skull-stripped T1) at 2 mm, each brain voxel labelled with its most probable tissue; it is
made by ``sample_data/make_brain_tissue.py`` and is the three-tissue, real-3D-structure case
of the benchmarks (painted on a few slices per axis: :func:`slices_per_axis_annotation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .annotation import mark_outside_box_background
from .errors import MedsegError, MedsegInputError
from .synthetic import make_synthetic_case, paint_slices_per_axis, sparse_annotation_from_mask
from .volume import Volume

__all__ = [
    "BRAIN_TISSUE",
    "BUNDLED_CASES",
    "DEFAULT_AXIAL_SLICES",
    "REAL_CASES",
    "SAMPLE_NAMES",
    "RealCase",
    "annotation_from_slices",
    "load_real_case",
    "load_sample",
    "real_case_annotation",
    "sample_data_dir",
    "slices_per_axis_annotation",
]

REAL_CASES: tuple[str, ...] = ("brain1", "breast1", "prostate_phantom")
#: The three-tissue template case (CSF, grey and white matter), painted on every axis.
BRAIN_TISSUE = "brain_tissue"
#: Everything :func:`load_real_case` accepts.
BUNDLED_CASES: tuple[str, ...] = (*REAL_CASES, BRAIN_TISSUE)
#: Everything :func:`load_sample` accepts.
SAMPLE_NAMES: tuple[str, ...] = (*BUNDLED_CASES, "synthetic")

#: Axial (z) slices painted by default in :func:`real_case_annotation`; they are the
#: slices :func:`napari_medseg.synthetic.pick_slices` chooses through the label.
DEFAULT_AXIAL_SLICES: dict[str, tuple[int, ...]] = {
    "brain1": (12, 14, 16),  # tumour on z 11-17
    "breast1": (8, 10),  # lesion on z 8-10: z 9 is left to predict
    "prostate_phantom": (2, 6, 10),  # structures on every z 0-12
    "brain_tissue": (13, 39, 65),  # pick_slices(label, 0, 3); brain on z 0-77
}

# file label value -> (consecutive label, class name), background excluded
_LABEL_MAPS: dict[str, dict[int, tuple[int, str]]] = {
    "brain1": {1: (1, "tumour")},
    "breast1": {1: (1, "lesion")},
    "prostate_phantom": {
        1: (1, "label_1"),
        7: (2, "label_7"),
        8: (3, "label_8"),
        9: (4, "label_9"),
    },
    "brain_tissue": {1: (1, "CSF"), 2: (2, "grey matter"), 3: (3, "white matter")},
}

_MARKER = "brain1_image.nrrd"


@dataclass
class RealCase:
    """One bundled case.

    Attributes
    ----------
    name : str
        Case name, one of :data:`REAL_CASES` (or ``"synthetic"``).
    image : Volume
        The scan, axes ``(z, y, x)``, spacing/origin/direction in that order (mm).
    label : Volume
        ``uint8`` expert label on the same grid: ``0`` background, ``k`` structure ``k``.
    class_names : tuple of str
        Item ``k - 1`` names structure ``k``.
    source_values : dict of int to int
        Consecutive label -> value in the original file.
    default_slices : tuple of int
        Axial slices that :func:`real_case_annotation` paints by default.
    """

    name: str
    image: Volume
    label: Volume
    class_names: tuple[str, ...]
    source_values: dict[int, int] = field(default_factory=dict)
    default_slices: tuple[int, ...] = ()

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size per array axis in mm."""
        return self.image.spacing


def sample_data_dir() -> Path:
    """Folder that holds the bundled cases.

    Returns
    -------
    Path
        ``napari_medseg/sample_data`` in an installed wheel, else ``<repo>/sample_data``.

    Raises
    ------
    MedsegError
        When neither folder holds the files.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "sample_data", here.parent / "sample_data")
    for folder in candidates:
        if (folder / _MARKER).is_file():
            return folder
    looked = ", ".join(str(c) for c in candidates)
    raise MedsegError(f"bundled sample data not found (looked in {looked})")


def _read_volume(path: Path) -> Volume:
    """Read a file with SimpleITK into a :class:`Volume` in ``(z, y, x)`` order."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    ndim = image.GetDimension()
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(ndim, ndim)
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=tuple(reversed(image.GetSpacing())),
        origin=tuple(reversed(image.GetOrigin())),
        direction=direction[::-1, ::-1].copy(),
        metadata={"source": str(path), "format": path.suffix.lstrip(".")},
    )


def _check_name(name: str, allowed: Sequence[str]) -> str:
    if name not in allowed:
        raise MedsegInputError(f"unknown sample {name!r}; choose one of {', '.join(allowed)}")
    return name


def _remap(array: np.ndarray, mapping: dict[int, tuple[int, str]], name: str) -> np.ndarray:
    values = {int(v) for v in np.unique(array)} - {0}
    unknown = values - set(mapping)
    if unknown:
        raise MedsegError(f"sample {name}: unexpected label values {sorted(unknown)}")
    out = np.zeros(array.shape, dtype=np.uint8)
    for value, (k, _) in mapping.items():
        out[array == value] = k
    return out


def load_real_case(name: str) -> RealCase:
    """Load one bundled real case with its remapped expert label.

    Parameters
    ----------
    name : str
        One of :data:`BUNDLED_CASES`.

    Returns
    -------
    RealCase
        Image and label volumes (axes ``z, y, x``), class names, default slices.
    """
    _check_name(name, BUNDLED_CASES)
    folder = sample_data_dir()
    image = _read_volume(folder / f"{name}_image.nrrd")
    raw_label = _read_volume(folder / f"{name}_label.nrrd")
    if raw_label.shape != image.shape:
        raise MedsegError(f"sample {name}: label shape differs from image shape")
    mapping = _LABEL_MAPS[name]
    label = image.with_array(_remap(raw_label.array, mapping, name))
    label.metadata = dict(raw_label.metadata)
    ordered = sorted(mapping.items(), key=lambda item: item[1][0])
    return RealCase(
        name=name,
        image=image,
        label=label,
        class_names=tuple(n for _, (_, n) in ordered),
        source_values={k: v for v, (k, _) in ordered},
        default_slices=DEFAULT_AXIAL_SLICES[name],
    )


def _synthetic_sample() -> RealCase:
    case = make_synthetic_case()
    image = Volume(case.image, case.spacing, metadata={"source": "synthetic"})
    label = image.with_array(case.expert_mask)
    names = case.class_names
    return RealCase(
        name="synthetic",
        image=image,
        label=label,
        class_names=names,
        source_values={k: k for k in range(1, len(names) + 1)},
        default_slices=tuple(case.annotated_slices.get(0, ())),
    )


def load_sample(name: str) -> RealCase:
    """Load a sample by name: a real case or ``"synthetic"`` (the default synthetic case).

    Parameters
    ----------
    name : str
        One of :data:`SAMPLE_NAMES`.

    Returns
    -------
    RealCase
        Image, expert label and class names.
    """
    _check_name(name, SAMPLE_NAMES)
    return _synthetic_sample() if name == "synthetic" else load_real_case(name)


def annotation_from_slices(label: np.ndarray, slices: Sequence[int], axis: int = 0) -> np.ndarray:
    """Sparse annotation with full slices painted from a complete label.

    Parameters
    ----------
    label : np.ndarray
        Expert label map: ``0`` background, ``k`` structure ``k``.
    slices : sequence of int
        Indices of the slices to paint along ``axis``.
    axis : int
        Axis of the slices (``0`` = axial for ``z, y, x`` volumes).

    Returns
    -------
    np.ndarray
        ``uint8``: ``label + 1`` on the painted slices, ``0`` (unknown) elsewhere.
    """
    return sparse_annotation_from_mask(label, {axis: list(slices)})


def _roi_box(label: np.ndarray, margin: Sequence[int]) -> list[tuple[int, int]]:
    """Bounding box of the foreground expanded by ``margin`` voxels, clipped to the array."""
    if len(margin) != label.ndim:
        raise MedsegInputError(f"roi_margin {tuple(margin)} needs {label.ndim} values")
    box = []
    for axis, (size, extra) in enumerate(zip(label.shape, margin)):
        other = tuple(a for a in range(label.ndim) if a != axis)
        hits = np.flatnonzero(np.any(label != 0, axis=other))
        box.append((max(0, int(hits[0]) - int(extra)), min(size, int(hits[-1]) + 1 + int(extra))))
    return box


def real_case_annotation(
    name: str | RealCase,
    axial_slices: Sequence[int] | None = None,
    roi_margin: Sequence[int] | None = (2, 20, 20),
) -> np.ndarray:
    """The sparse annotation the benchmarks use on a real case.

    The chosen axial slices are painted in full from the expert label (structure ``k`` ->
    ``k + 1``, the rest ``1``), and every voxel outside a region-of-interest box — the
    bounding box of the label's foreground grown by ``roi_margin`` voxels — is marked
    background (``1``), as a user would by drawing a box around the structure.

    Parameters
    ----------
    name : str or RealCase
        A name from :data:`REAL_CASES`, or an already loaded case.
    axial_slices : sequence of int, optional
        Slices along z to paint; default :data:`DEFAULT_AXIAL_SLICES` of the case.
    roi_margin : sequence of int, optional
        Margin in voxels ``(z, y, x)``; ``None`` leaves the outside of the box unknown.

    Returns
    -------
    np.ndarray
        ``uint8`` annotation on the case's grid.
    """
    case = name if isinstance(name, RealCase) else load_real_case(name)
    label = np.asarray(case.label.array)
    slices = case.default_slices if axial_slices is None else tuple(axial_slices)
    annotation = annotation_from_slices(label, slices, axis=0)
    if roi_margin is not None and np.any(label):
        mark_outside_box_background(annotation, _roi_box(label, roi_margin))
    return annotation


def slices_per_axis_annotation(
    name: str | RealCase, slices_per_axis: Sequence[int] = (3, 3, 3)
) -> np.ndarray:
    """A sparse annotation painting whole slices along every axis, as on ``brain_tissue``.

    Along each axis ``a``, ``slices_per_axis[a]`` slices are chosen evenly through the
    label's foreground and painted in full from the expert label (structure ``k`` ->
    ``k + 1``, the rest ``1``): :func:`napari_medseg.synthetic.paint_slices_per_axis`.

    Parameters
    ----------
    name : str or RealCase
        A name from :data:`BUNDLED_CASES`, or an already loaded case.
    slices_per_axis : sequence of int
        Slices to paint along ``z``, ``y`` and ``x``.

    Returns
    -------
    np.ndarray
        ``uint8`` annotation on the case's grid.
    """
    case = name if isinstance(name, RealCase) else load_real_case(name)
    return paint_slices_per_axis(np.asarray(case.label.array), slices_per_axis)[0]
