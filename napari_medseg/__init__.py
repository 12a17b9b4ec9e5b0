"""napari-medseg: semi-automatic 3D segmentation of medical volumes.

The package root is GUI-free: importing it never imports Qt, napari or magicgui.
The computing core lives in plain modules (:mod:`napari_medseg.io`,
:mod:`napari_medseg.training`, :mod:`napari_medseg.inference`,
:mod:`napari_medseg.metrics`, ...); the napari layer lives in
:mod:`napari_medseg._napari` and the Qt widgets in :mod:`napari_medseg._qt`.
"""

# The one place the version is written: pyproject.toml has hatchling read it from here.
__version__ = "0.1.0"

__all__ = ["__version__"]
