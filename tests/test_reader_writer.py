"""npe2 reader and writers: layers placed in world coordinates, geometry kept on save."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medseg._napari.reader import get_reader, layer_data_from_volume, layer_name
from napari_medseg._napari.writer import geometry_from_meta, write_image, write_labels
from napari_medseg.errors import MedsegInputError
from napari_medseg.io import GeometryWarning, read_volume, write_volume
from napari_medseg.volume import Volume

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
FLIP_Y = np.diag([1.0, -1.0, 1.0])
# a rotation of 30 degrees in the y-x plane (oblique)
C, S = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = np.array([[1.0, 0.0, 0.0], [0.0, C, -S], [0.0, S, C]])


def world(volume: Volume, index) -> np.ndarray:
    return np.asarray(volume.origin) + volume.direction @ (np.asarray(volume.spacing) * index)


def make_layer(layer_data):
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    return Layer.create(data, kwargs, layer_type)


def scan(direction=None) -> Volume:
    array = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    return Volume(array, (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), direction)


def write_dicom(folder: Path, depth: int = 3) -> list[Path]:
    folder.mkdir()
    image = sitk.GetImageFromArray(np.arange(depth * 20, dtype=np.int16).reshape(depth, 4, 5))
    image.SetSpacing((0.5, 0.5, 2.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(depth):
        piece = image[:, :, k : k + 1]
        for key, value in {
            "0008|0060": "MR",
            "0020|000e": "1.2.3.77",
            "0008|0018": f"1.2.3.77.{k}",
            "0020|0013": str(k + 1),
        }.items():
            piece.SetMetaData(key, value)
        files.append(folder / f"im{k}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(piece)
    return files


# ---- reader --------------------------------------------------------------------------


def test_get_reader_claims_supported_paths_only(tmp_path):
    assert get_reader(str(SAMPLE / "brain1_image.nrrd")) is not None
    assert get_reader("scan.nii.gz") is not None
    assert get_reader("photo.png") is None
    assert get_reader(["scan.nii.gz", "photo.png"]) is None
    assert get_reader([]) is None
    assert get_reader(str(tmp_path)) is None  # folder without DICOM
    files = write_dicom(tmp_path / "dicom")
    assert get_reader(str(tmp_path / "dicom")) is not None
    assert get_reader([str(f) for f in files]) is not None


def test_layer_name_strips_full_extension(tmp_path):
    assert layer_name("/data/case_01.nii.gz") == "case_01"
    assert layer_name("brain.nrrd") == "brain"
    assert layer_name(tmp_path) == tmp_path.name


def test_real_sample_opens_with_world_geometry():
    path = SAMPLE / "brain1_image.nrrd"
    reader = get_reader(str(path))
    [(data, kwargs, layer_type)] = reader(str(path))
    assert layer_type == "image" and kwargs["name"] == "brain1_image"
    assert data.shape == (25, 256, 256)
    assert kwargs["metadata"]["path"] == str(path)
    volume = read_volume(path)
    layer = make_layer((data, kwargs, layer_type))
    np.testing.assert_allclose(layer.scale, volume.spacing)
    for index in [(0, 0, 0), (24, 255, 255), (3, 100, 7)]:
        np.testing.assert_allclose(layer.data_to_world(index), world(volume, index), atol=1e-6)


def test_label_files_open_as_labels_layer():
    path = SAMPLE / "brain1_label.nrrd"
    [(data, kwargs, layer_type)] = get_reader(str(path))(str(path))
    assert layer_type == "labels" and data.dtype.kind in "iu"


@pytest.mark.parametrize("direction", [None, FLIP_Y, OBLIQUE], ids=["aligned", "flip", "oblique"])
def test_layer_places_voxels_at_their_world_position(direction):
    volume = scan(direction)
    if direction is OBLIQUE:
        with pytest.warns(GeometryWarning, match="obliquely"):
            layer_data = layer_data_from_volume(volume, name="v")
    else:
        layer_data = layer_data_from_volume(volume, name="v")
    kwargs = layer_data[1]
    assert ("affine" in kwargs) == (direction is not None)
    layer = make_layer(layer_data)
    for index in [(0, 0, 0), (3, 4, 5), (1, 2, 3)]:
        np.testing.assert_allclose(layer.data_to_world(index), world(volume, index), atol=1e-9)


def test_dicom_files_of_one_series_give_one_layer(tmp_path):
    files = write_dicom(tmp_path / "dicom")
    layers = get_reader([str(f) for f in files])([str(f) for f in files])
    assert len(layers) == 1 and layers[0][0].shape == (3, 4, 5)
    assert layers[0][1]["metadata"]["modality"] == "MR"


def test_bad_file_raises_clear_input_error(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"not a nifti file at all")
    reader = get_reader(str(path))
    with pytest.raises(MedsegInputError, match="broken.nii.gz"):
        reader(str(path))


# ---- writer --------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".tif"])
def test_labels_layer_saved_with_geometry_from_metadata(tmp_path, ext):
    volume = scan(FLIP_Y)
    labels = (volume.array > 0).astype(np.int32)
    layer = make_layer(layer_data_from_volume(volume.with_array(labels), "seg", "labels"))
    data, meta, _ = layer.as_layer_data_tuple()
    [written] = write_labels(str(tmp_path / f"seg{ext}"), data, meta)
    back = read_volume(written)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)


def test_writer_falls_back_to_layer_transforms(tmp_path):
    from napari.layers import Labels

    affine = np.eye(4)
    affine[:3, :3] = OBLIQUE
    layer = Labels(
        np.ones((4, 5, 6), np.uint16),
        scale=(2.0, 0.5, 0.25),
        translate=(1.0, 2.0, 3.0),
        affine=affine,
    )
    data, meta, _ = layer.as_layer_data_tuple()
    assert not meta["metadata"]
    [written] = write_labels(str(tmp_path / "painted"), data, meta)
    assert written.endswith("painted.nii.gz")
    back = read_volume(written)
    for index in [(0, 0, 0), (3, 4, 5), (1, 0, 2)]:
        np.testing.assert_allclose(world(back, index), layer.data_to_world(index), atol=1e-4)


def test_geometry_from_meta_prefers_reader_metadata():
    meta = {
        "metadata": {"spacing": [3, 2, 1], "origin": [0, 0, 5], "direction": np.eye(3)},
        "scale": [1, 1, 1],
    }
    spacing, origin, direction = geometry_from_meta(meta, 3)
    assert spacing == (3.0, 2.0, 1.0) and origin == (0.0, 0.0, 5.0)
    spacing, _, _ = geometry_from_meta({"scale": [4, 4]}, 2)  # wrong-sized metadata ignored
    assert spacing == (4.0, 4.0)


def test_image_writer_keeps_values_and_refuses_rgb(tmp_path):
    volume = scan()
    layer = make_layer(layer_data_from_volume(volume, "img", "image"))
    data, meta, _ = layer.as_layer_data_tuple()
    [written] = write_image(str(tmp_path / "img.mha"), data, meta)
    back = read_volume(written)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.origin == pytest.approx(volume.origin)
    with pytest.raises(MedsegInputError, match="RGB"):
        write_image(str(tmp_path / "rgb.tif"), np.zeros((4, 4, 3), np.uint8), {"rgb": True})


def test_writer_replaces_existing_file_atomically(tmp_path):
    target = tmp_path / "seg.nrrd"
    write_volume(target, np.ones((2, 3, 4), np.uint8))
    write_labels(str(target), np.full((2, 3, 4), 2, np.int64), {"scale": [1, 1, 1]})
    assert read_volume(target).array.max() == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nrrd"]


# ---- napari viewer (needs an X server: xvfb-run -a pytest -m gui) --------------------

needs_display = pytest.mark.skipif(
    sys.platform.startswith("linux")
    and not (
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    ),
    reason="no display; run under xvfb-run",
)

MANIFEST = {
    "name": "medseg-io-test",
    "contributions": {
        "commands": [
            {
                "id": "medseg-io-test.read",
                "title": "Read",
                "python_name": "napari_medseg._napari.reader:get_reader",
            },
            {
                "id": "medseg-io-test.write_labels",
                "title": "Save labels",
                "python_name": "napari_medseg._napari.writer:write_labels",
            },
        ],
        "readers": [
            {
                "command": "medseg-io-test.read",
                "accepts_directories": True,
                "filename_patterns": ["*.nii", "*.nii.gz", "*.nrrd", "*.mha", "*.dcm"],
            }
        ],
        "writers": [
            {
                "command": "medseg-io-test.write_labels",
                "layer_types": ["labels"],
                "filename_extensions": [".nii.gz", ".nrrd", ".mha"],
            }
        ],
    },
}


@pytest.fixture
def medseg_plugin(npe2pm):
    from npe2 import PluginManifest

    with npe2pm.tmp_plugin(manifest=PluginManifest(**MANIFEST)) as plugin:
        yield plugin


@pytest.mark.gui
@needs_display
def test_viewer_survives_bad_file_and_opens_good_one(make_napari_viewer, medseg_plugin, tmp_path):
    viewer = make_napari_viewer()
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(Exception, match="broken.nii.gz") as info:
        viewer.open(str(bad), plugin=medseg_plugin.name)
    chain = [info.value, info.value.__cause__, info.value.__context__]
    assert any(isinstance(e, MedsegInputError) for e in chain)
    assert len(viewer.layers) == 0
    # napari keeps running: a good file opens right after, placed in world coordinates
    good = SAMPLE / "brain1_image.nrrd"
    [layer] = viewer.open(str(good), plugin=medseg_plugin.name)
    volume = read_volume(good)
    np.testing.assert_allclose(layer.data_to_world((3, 4, 5)), world(volume, (3, 4, 5)))
    viewer.dims.ndisplay = 3
    viewer.dims.ndisplay = 2


@pytest.mark.gui
@needs_display
def test_viewer_saves_labels_layer_aligned_with_image(make_napari_viewer, medseg_plugin, tmp_path):
    viewer = make_napari_viewer()
    [image] = viewer.open(str(SAMPLE / "brain1_image.nrrd"), plugin=medseg_plugin.name)
    mask = (np.asarray(image.data) > 100).astype(np.uint8)
    labels = viewer.add_labels(
        mask,
        name="mask",
        scale=image.scale,
        translate=image.translate,
        affine=image.affine,
        metadata=dict(image.metadata),
    )
    target = tmp_path / "mask.nrrd"
    labels.save(str(target), plugin=medseg_plugin.name)
    back = read_volume(target)
    reference = read_volume(SAMPLE / "brain1_image.nrrd")
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.origin, reference.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, reference.direction)


def test_plugin_manifest_wires_reader_and_writer(npe2pm, tmp_path):
    import npe2

    import napari_medseg

    manifest = Path(napari_medseg.__file__).with_name("napari.yaml")
    if not manifest.exists():
        pytest.skip("napari.yaml not present")
    image = str(SAMPLE / "brain1_image.nrrd")
    with npe2pm.tmp_plugin(manifest=str(manifest)) as plugin:
        [(data, kwargs, layer_type)] = npe2.read([image], stack=False, plugin_name=plugin.name)
        assert layer_type == "image" and data.shape == (25, 256, 256)
        mask = (data > 100).astype(np.uint8)
        target = str(tmp_path / "mask.nii.gz")
        written = npe2.write(target, [(mask, kwargs, "labels")], plugin_name=plugin.name)
    assert written == [target]
    back, reference = read_volume(target), read_volume(image)
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.origin, reference.origin, atol=1e-4)
