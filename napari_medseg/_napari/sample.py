"""Sample-data hooks of the napari plugin (File ▸ Open Sample ▸ MedSeg).

Each hook returns napari ``LayerData`` tuples ``(data, kwargs, layer_type)`` whose
``scale`` is the voxel spacing (mm), so anisotropic volumes are shown with their true
proportions and every layer derived from them inherits it. No Qt here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..colors import CLASS_NAMES_KEY, annotation_color_dict, segmentation_color_dict
from ..volume import Volume

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _layer(volume: Volume, name: str, layer_type: str, class_names: list[str],
           **extra: Any) -> LayerData:
    """A layer tuple placed like the plugin's reader places a file (scale, translate/affine,
    geometry in ``metadata``), plus the structure names and display settings."""
    from .reader import layer_data_from_volume

    data, kwargs, _ = layer_data_from_volume(volume, name=name, layer_type=layer_type)
    kwargs["metadata"][CLASS_NAMES_KEY] = list(class_names)
    if volume.array.ndim == 3:
        kwargs["axis_labels"] = ("z", "y", "x")
    kwargs.update(extra)
    return data, kwargs, layer_type


def layer_tuples(
    name: str,
    image: Volume,
    expert_mask: np.ndarray,
    class_names: list[str],
    annotation: np.ndarray | None = None,
) -> list[LayerData]:
    """Image, expert-mask and (optional) annotation layers of one case.

    Parameters
    ----------
    name : str
        Name of the image layer; the others are ``"<name> expert mask"`` and
        ``"<name> annotation"``.
    image : Volume
        The scan (its spacing becomes the layers' scale).
    expert_mask : np.ndarray
        ``0`` background, ``k`` structure ``k``.
    class_names : list of str
        Item ``k - 1`` names structure ``k``.
    annotation : np.ndarray, optional
        Sparse annotation (``0`` unknown, ``1`` background, ``k + 1`` structure ``k``).

    Returns
    -------
    list of (data, kwargs, layer_type)
    """
    array = np.asarray(image.array)
    low, high = np.percentile(array, (0.5, 99.5)) if array.size else (0.0, 1.0)
    high = high if high > low else low + 1
    n = len(class_names)
    layers = [
        _layer(image, name, "image", class_names, contrast_limits=(float(low), float(high))),
        _layer(image.with_array(np.asarray(expert_mask, dtype=np.uint8)), f"{name} expert mask",
               "labels", class_names, opacity=0.5, visible=False,
               colormap=segmentation_color_dict(n)),
    ]
    if annotation is not None:
        layers.append(
            _layer(image.with_array(np.asarray(annotation, dtype=np.uint8)),
                   f"{name} annotation", "labels", class_names, opacity=0.6,
                   colormap=annotation_color_dict(n))
        )
    return layers


def synthetic() -> list[LayerData]:
    """The default synthetic case: image, expert mask and a sparse annotation (deterministic).

    Same volume as ``medseg demo``/``load_sample("synthetic")``: 48 × 64 × 64 voxels, one
    tube-like structure, one painted slice per axis.
    """
    from ..synthetic import make_synthetic_case

    case = make_synthetic_case()
    image = Volume(case.image, case.spacing, metadata={"source": "synthetic"})
    return layer_tuples(
        "synthetic", image, case.expert_mask, list(case.class_names), case.annotation
    )


def nodules() -> list[LayerData]:
    """Nodules among vessels (deterministic): a hard case for comparing networks.

    48 × 64 × 64 voxels; five nodules (the structure) among tubes of the same brightness,
    which one slice cannot tell apart; two painted slices per axis
    (:func:`~napari_medseg.synthetic_nodules.make_nodule_case`).
    """
    from ..synthetic_nodules import make_nodule_case

    case = make_nodule_case(seed=1)
    image = Volume(case.image, case.spacing, metadata={"source": "synthetic nodules"})
    return layer_tuples(
        "nodules", image, case.expert_mask, list(case.class_names), case.annotation
    )


def brain1() -> list[LayerData]:
    """The bundled brain MRI (25 × 256 × 256, 6.5 × 0.78 × 0.78 mm) with its expert mask."""
    from ..sample_data import load_real_case

    case = load_real_case("brain1")
    return layer_tuples("brain1", case.image, case.label.array, list(case.class_names))


def brain_tissue() -> list[LayerData]:
    """Three brain tissues at 2 mm (the MNI ICBM152 template): image, expert mask, annotation.

    81 × 97 × 79 voxels; CSF, grey and white matter, three whole slices painted per axis
    (:func:`~napari_medseg.sample_data.slices_per_axis_annotation`): a multi-structure case
    with real 3D anatomy. An average of 152 brains, not one patient's scan.
    """
    from ..sample_data import BRAIN_TISSUE, load_real_case, slices_per_axis_annotation

    case = load_real_case(BRAIN_TISSUE)
    return layer_tuples(
        "brain tissue",
        case.image,
        case.label.array,
        list(case.class_names),
        slices_per_axis_annotation(case),
    )
