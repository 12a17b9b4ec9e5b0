"""Writing the Predict widget's segmentation to a file, in a worker thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels

from .._common import StatusLabel
from .._worker import report_error, run_function

SEGMENTATION_FILE_FILTER = (
    "NIfTI (*.nii.gz *.nii);;3D Slicer segmentation (*.seg.nrrd);;NRRD (*.nrrd);;"
    "MetaImage (*.mha *.mhd);;TIFF (*.tif *.tiff);;NumPy (*.npy);;"
    "DICOM SEG on the image's series (*.dcm)"
)


def write_segmentation(layer: Labels, path: str | Path, status: StatusLabel) -> Any:
    """Write ``layer`` to ``path`` with the plugin's labels writer; returns the worker.

    The data is copied here (the GUI thread) and written in a worker thread. The writer gets
    the layer's metadata, copied from the image layer, so the file keeps the image's
    geometry (spacing, origin, direction), and the model's structure names with the colours
    shown (Slicer's fields in a ``.seg.nrrd``, else an ITK-SNAP ``.label.txt`` beside the
    file); a ``.dcm`` path is a DICOM SEG on the series the image was read from. The outcome
    is shown in ``status``.
    """
    from ..._napari.writer import write_labels, write_labels_dicom_seg

    data, meta, _ = layer.as_layer_data_tuple()
    data = np.array(data, copy=True)
    target = str(path)
    status.info(f"saving {Path(target).name}…")

    def saved(paths: Any) -> None:
        written = ", ".join(str(p) for p in (paths or [target]))
        status.info(f"segmentation saved to {written}")

    def failed(exc: BaseException) -> None:
        report_error(exc, status, prefix="could not save the segmentation: ")

    def write() -> list[str]:
        if target.lower().endswith(".dcm"):  # a DICOM SEG on the image's own series
            return [write_labels_dicom_seg(target, data, meta)]
        return write_labels(target, data, meta)

    return run_function(
        write,
        name="MedSeg save segmentation",
        on_return=saved,
        on_error=failed,
    )
