"""File formats: which format a file (or store folder) name stands for."""

from __future__ import annotations

from pathlib import Path

#: Format of each file extension read or written.
FORMATS: dict[str, str] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".dcm": "dicom",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".zarr": "zarr",
}
#: Extensions of formats stored as a folder rather than a file (zarr stores).
STORE_EXTENSIONS: tuple[str, ...] = (".zarr",)
#: File extensions :func:`~napari_medseg.io.read_volume` understands; it also reads a
#: DICOM folder and the stores of :data:`STORE_EXTENSIONS`.
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(e for e in FORMATS if e not in STORE_EXTENSIONS)


def extension_of(path: str | Path) -> str:
    """The lower-case extension of ``path``, with ``.nii.gz`` kept whole.

    Parameters
    ----------
    path : str or Path
        A file name.

    Returns
    -------
    str
        For example ``".nii.gz"``, ``".nrrd"``, or ``""`` when there is none.
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix
