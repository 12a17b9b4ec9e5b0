"""OME-Zarr stores opened in napari by the MedSeg reader: lazy, multiscale, placed in mm."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("zarr")

from napari_medseg.io import write_volume, write_zarr, zarr_io  # noqa: E402
from napari_medseg.io.segments import Segments  # noqa: E402

SPACING = (2.5, 0.75, 0.5)
ORIGIN = (-12.0, 3.5, 100.25)


@pytest.fixture
def voxels_read(monkeypatch):
    """Count the voxels every level of a store hands out (one entry per level shape)."""
    counts: dict[tuple[int, ...], int] = {}
    real = zarr_io.ZarrSource.__getitem__

    def counting(self, key):
        block = real(self, key)
        counts[self.shape] = counts.get(self.shape, 0) + block.size
        return block

    monkeypatch.setattr(zarr_io.ZarrSource, "__getitem__", counting)
    return counts


@pytest.mark.gui
def test_multiscale_ome_zarr_opens_lazily_with_its_geometry(
    make_napari_viewer, tmp_path, voxels_read
):
    data = np.random.default_rng(0).normal(100, 20, size=(16, 256, 192)).astype(np.float32)
    path = write_zarr(
        tmp_path / "scan.zarr", data, spacing=SPACING, origin=ORIGIN, chunks=(2, 128, 128), levels=3
    )
    viewer = make_napari_viewer()

    [layer] = viewer.open(str(path), plugin="napari-medseg")

    assert layer.name == "scan" and layer.multiscale and len(layer.data) == 3
    assert all(isinstance(level, da.Array) for level in layer.data)
    assert [level.shape for level in layer.data] == [(16, 256, 192), (16, 128, 96), (16, 64, 48)]
    np.testing.assert_allclose(layer.scale, SPACING)
    np.testing.assert_allclose(layer.translate, ORIGIN)
    index = np.array([3, 4, 5])
    np.testing.assert_allclose(
        layer.data_to_world(index), np.add(ORIGIN, np.multiply(SPACING, index))
    )
    assert layer.metadata["spacing"] == list(SPACING) and layer.metadata["format"] == "zarr"
    viewer.dims.set_current_step(0, 7)
    assert voxels_read.get(data.shape, 0) <= data.size // 4  # never the whole full resolution
    assert voxels_read  # the picture shown was read


@pytest.mark.gui
def test_label_map_store_opens_as_labels_with_names_and_colours(make_napari_viewer, tmp_path):
    labels = np.zeros((6, 32, 32), np.uint8)
    labels[2:4, 5:20, 5:20] = 1
    labels[3:5, 20:30, 10:30] = 2
    segments = Segments.of_structures(["liver", "tumour"])
    path = write_volume(tmp_path / "seg.zarr", labels, spacing=SPACING, segments=segments)
    viewer = make_napari_viewer()

    [layer] = viewer.open(str(path), plugin="napari-medseg")

    assert layer._type_string == "labels" and isinstance(layer.data, da.Array)
    assert list(layer.features["name"]) == ["background", "liver", "tumour"]
    np.testing.assert_allclose(layer.colormap.map(1)[..., :3].ravel(), segments.items[0].color,
                               atol=1 / 255)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
