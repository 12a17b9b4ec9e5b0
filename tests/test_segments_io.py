"""Structure names and colours stored with label maps: Slicer ``.seg.nrrd`` fields (checked
with ``slicerio``, a test-only dependency) and ITK-SNAP label descriptions, written by
``write_volume``, the napari writer and ``predict_file``, read back by the reader."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.colors import BACKGROUND_GREY, CLASS_NAMES_KEY, structure_color
from napari_medseg.errors import MedsegInputError
from napari_medseg.io import read_volume, write_volume
from napari_medseg.io.segments import (
    KIND_KEY,
    Segments,
    format_label_description,
    label_file_for,
    layer_kind,
    parse_label_description,
    read_segments,
)

SPACING = (2.0, 0.8, 0.7)
ORIGIN = (-12.5, 30.0, 4.0)
DIRECTION = np.diag([1.0, -1.0, 1.0])
GEOMETRY = dict(spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
NAMES = ["liver", "tumour"]


def _annotation(shape=(6, 12, 10)) -> np.ndarray:
    annotation = np.zeros(shape, np.uint8)
    annotation[2] = 1
    annotation[2, 3:8, 2:6] = 2
    annotation[4, 8:10, 6:9] = 3
    return annotation


def _rgb(color) -> list[float]:
    return [float(c) for c in color[:3]]


# ---- 3D Slicer ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["annotation", "segmentation"])
def test_seg_nrrd_is_read_by_slicerio_with_names_and_colours(tmp_path, kind):
    slicerio = pytest.importorskip("slicerio")
    data = _annotation() if kind == "annotation" else np.clip(_annotation(), 1, None) - 1
    path = write_volume(tmp_path / "case.seg.nrrd", data, **GEOMETRY,
                        segments=Segments.of_structures(NAMES, kind))  # fmt: skip
    seg = slicerio.read_segmentation(str(path))
    found = {s["labelValue"]: s for s in seg["segments"]}
    offset = 1 if kind == "annotation" else 0
    expected = {k + offset: (name, structure_color(k)) for k, name in enumerate(NAMES, 1)}
    if kind == "annotation":
        expected[1] = ("background", BACKGROUND_GREY)
    assert sorted(found) == sorted(expected)
    for value, (name, color) in expected.items():
        assert found[value]["name"] == name
        assert found[value]["color"] == pytest.approx(_rgb(color), abs=1e-6)
        assert found[value]["layer"] == 0
        mask = np.argwhere(data == value)  # (z, y, x); Slicer's extent is (i, j, k) = (x, y, z)
        low, high = mask.min(axis=0)[::-1], mask.max(axis=0)[::-1]
        assert found[value]["extent"] == [int(v) for pair in zip(low, high) for v in pair]
    assert slicerio.segment_names(seg) == [expected[v][0] for v in sorted(expected)]
    assert np.array_equal(seg["voxels"], data.transpose(2, 1, 0))  # slicerio: IJK order
    # LPS geometry: column j of ijkToLPS is axis j's direction times its spacing
    ijk_to_lps = np.asarray(seg["ijkToLPS"])
    assert ijk_to_lps[:3, 3] == pytest.approx(ORIGIN[::-1])
    assert np.allclose(ijk_to_lps[:3, :3], (DIRECTION * SPACING)[::-1, ::-1])


def test_seg_nrrd_round_trip_through_our_reader(tmp_path):
    segments = Segments.of_structures(NAMES, "annotation")
    path = write_volume(tmp_path / "a.seg.nrrd", _annotation(), **GEOMETRY, segments=segments)
    volume = read_volume(path)
    assert np.array_equal(volume.array, _annotation())
    assert volume.metadata[CLASS_NAMES_KEY] == NAMES
    assert volume.metadata[KIND_KEY] == "annotation"
    back = read_segments(path)
    assert back is not None and back.matches(segments)
    assert not label_file_for(path).exists()  # a .seg.nrrd carries its names itself


def test_a_seg_nrrd_written_by_slicerio_is_read(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    voxels = np.zeros((10, 12, 6), np.uint8)  # IJK
    voxels[2:5, 3:6, 1:3] = 1
    voxels[6:8, 3:6, 1:3] = 4
    segmentation = {
        "voxels": voxels,
        "ijkToLPS": np.diag([0.7, 0.8, 2.0, 1.0]),
        "segments": [
            {"labelValue": 1, "name": "kidney", "color": [0.1, 0.2, 0.3]},
            {"labelValue": 4, "name": "cyst", "color": [0.9, 0.8, 0.7],
             "terminology": {"contextName": "Slicer", "category": ["SCT", "1", "Tissue"],
                             "type": ["SCT", "2", "Cyst"]}},
        ],
    }  # fmt: skip
    path = tmp_path / "foreign.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    volume = read_volume(path)
    assert volume.metadata[KIND_KEY] == "segmentation"
    assert volume.metadata[CLASS_NAMES_KEY] == ["kidney", "structure 2", "structure 3", "cyst"]
    colors = {s["value"]: s["color"] for s in volume.metadata["medseg_segments"]}
    assert colors[4] == pytest.approx([0.9, 0.8, 0.7])


def test_seg_nrrd_holds_3d_label_maps_only(tmp_path):
    with pytest.raises(MedsegInputError, match="3D"):
        write_volume(tmp_path / "flat.seg.nrrd", np.ones((4, 5), np.uint8),
                     segments=Segments.of_structures(["a"]))  # fmt: skip
    assert not list(tmp_path.iterdir())


# ---- ITK-SNAP -------------------------------------------------------------------------------


def test_itksnap_label_description_beside_a_nifti(tmp_path):
    segments = Segments.of_structures(NAMES, "annotation")
    path = write_volume(tmp_path / "seg.nii.gz", _annotation(), **GEOMETRY, segments=segments)
    label_file = tmp_path / "seg.label.txt"
    assert label_file_for(path) == label_file and label_file.is_file()
    rows = [line.split() for line in label_file.read_text().splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip
    assert rows[0][:7] == ["0", "0", "0", "0", "0", "0", "0"]  # hidden, "not annotated"
    red = [str(round(c * 255)) for c in structure_color(1)[:3]]
    assert rows[2] == ["2", *red, "1", "1", "1", '"liver"']
    volume = read_volume(path)
    assert volume.metadata[CLASS_NAMES_KEY] == NAMES
    assert volume.metadata[KIND_KEY] == "annotation"
    colors = {s["value"]: s["color"] for s in volume.metadata["medseg_segments"]}
    assert colors[2] == pytest.approx(_rgb(structure_color(1)), abs=1 / 255)


@pytest.mark.parametrize("name", ["seg.mha", "seg.nrrd", "seg.tif", "seg.npy"])
def test_label_description_beside_other_formats(tmp_path, name):
    segments = Segments.of_structures(NAMES, "segmentation")
    path = write_volume(tmp_path / name, _annotation() // 2, segments=segments)
    assert (tmp_path / "seg.label.txt").is_file()
    assert read_volume(path).metadata[CLASS_NAMES_KEY] == NAMES


def test_a_label_description_exported_by_itksnap_is_read(tmp_path):
    write_volume(tmp_path / "brain.nii.gz", _annotation() // 2, **GEOMETRY)
    (tmp_path / "brain.label.txt").write_text(
        "################################################\n"
        "# ITK-SnAP Label Description File\n"
        "################################################\n"
        '    0     0    0    0        0  0  0    "Clear Label"\n'
        '    1   255    0    0        1  1  1    "grey matter"\n'
        '    2     0  255    0     0.75  1  1    "white matter"\n'
    )
    volume = read_volume(tmp_path / "brain.nii.gz")
    assert volume.metadata[CLASS_NAMES_KEY] == ["grey matter", "white matter"]
    assert volume.metadata[KIND_KEY] == "segmentation"
    colors = {s["value"]: s["color"] for s in volume.metadata["medseg_segments"]}
    assert colors[1] == [1.0, 0.0, 0.0]


def test_a_broken_label_description_warns_and_the_volume_still_reads(tmp_path):
    path = write_volume(tmp_path / "seg.nii.gz", _annotation() // 2)
    (tmp_path / "seg.label.txt").write_text("this is not a label file\n")
    with pytest.warns(UserWarning, match="names and colours not read"):
        volume = read_volume(path)
    assert CLASS_NAMES_KEY not in volume.metadata
    assert np.array_equal(volume.array, _annotation() // 2)


def test_images_do_not_pick_up_label_descriptions(tmp_path):
    path = write_volume(tmp_path / "scan.nii.gz", np.random.default_rng(0).random((4, 5, 6)))
    label_file_for(path).write_text(format_label_description(Segments.of_structures(["x"])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CLASS_NAMES_KEY not in read_volume(path).metadata


def test_names_stay_on_one_line_and_unquoted(tmp_path):
    segments = Segments.of_structures(['left "big"\nlobe', "a\\b", ""], "segmentation")
    assert [s.name for s in segments.items] == ["left 'big' lobe", "a/b", "structure 3"]
    parsed = parse_label_description(format_label_description(segments))
    assert parsed is not None and parsed.class_names == segments.class_names
    path = write_volume(tmp_path / "s.seg.nrrd", _annotation() // 2, segments=segments)
    assert read_volume(path).metadata[CLASS_NAMES_KEY] == segments.class_names


def test_kind_of_a_layer():
    assert layer_kind({KIND_KEY: "annotation"}) == "annotation"
    assert layer_kind({"medseg_image": "ct"}) == "annotation"
    assert layer_kind({}, "brain annotation") == "annotation"
    assert layer_kind({"medseg_model": "m"}, "brain annotation") == "segmentation"
    assert layer_kind({}, "brain expert mask") == "segmentation"


# ---- the writers ----------------------------------------------------------------------------


def test_napari_writer_saves_the_names_and_shown_colours(tmp_path):
    from napari.layers import Labels

    from napari_medseg._napari.writer import write_labels
    from napari_medseg.colors import annotation_color_dict

    colors = annotation_color_dict(2)
    colors[3] = (0.0, 0.5, 1.0, 1.0)  # a colour the user chose for structure 2
    layer = Labels(_annotation(), name="ct annotation", colormap=colors, scale=SPACING,
                   metadata={CLASS_NAMES_KEY: NAMES, "medseg_image": "ct"})  # fmt: skip
    data, meta, _ = layer.as_layer_data_tuple()
    (written,) = write_labels(str(tmp_path / "ann.seg.nrrd"), data, meta)
    back = read_segments(written)
    assert back is not None and back.kind == "annotation" and back.class_names == NAMES
    shown = {s.value: s.color for s in back.items}
    assert shown[3] == pytest.approx((0.0, 0.5, 1.0))
    assert shown[2] == pytest.approx(_rgb(structure_color(1)))
    (plain,) = write_labels(str(tmp_path / "ann"), data, meta)  # .nii.gz added
    assert Path(plain).name == "ann.nii.gz" and (tmp_path / "ann.label.txt").is_file()


def test_napari_writer_without_names_writes_no_label_file(tmp_path):
    from napari_medseg._napari.writer import write_labels

    write_labels(str(tmp_path / "x.nii.gz"), _annotation(), {"name": "x", "metadata": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]


def test_reader_gives_labels_layers_their_names_and_colours(tmp_path):
    from napari_medseg._napari.reader import read_layers

    segments = Segments.of_structures(NAMES, "segmentation")
    path = write_volume(tmp_path / "liver.seg.nrrd", _annotation() // 2, **GEOMETRY,
                        segments=segments)  # fmt: skip
    ((data, kwargs, layer_type),) = read_layers(str(path))
    assert layer_type == "labels" and kwargs["name"] == "liver"
    assert kwargs["metadata"][CLASS_NAMES_KEY] == NAMES
    assert kwargs["features"] == {"index": [0, 1, 2], "name": ["background", *NAMES]}
    assert kwargs["colormap"][2] == pytest.approx((*_rgb(structure_color(2)), 1.0))
    assert kwargs["colormap"][0][3] == 0.0


def test_train_and_predict_files_carry_the_names(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    from napari_medseg import api
    from napari_medseg.training import TrainConfig

    rng = np.random.default_rng(0)
    annotation = _annotation((8, 16, 16))
    image = rng.normal(0, 0.2, annotation.shape).astype(np.float32) + annotation
    image_path = write_volume(tmp_path / "ct.nii.gz", image, **GEOMETRY)
    names = Segments.of_structures(NAMES, "annotation")
    annotation_path = write_volume(
        tmp_path / "ct_annotation.nii.gz", annotation, **GEOMETRY, segments=names
    )
    config = TrainConfig(iterations=2, time_budget=None, device="cpu", seed=0)
    model = api.train_files(image_path, annotation_path, tmp_path / "m.safetensors", config)
    assert model.config.class_names == ["background", *NAMES]
    out = tmp_path / "ct_seg.seg.nrrd"
    api.predict_file(tmp_path / "m.safetensors", image_path, out)
    assert slicerio.segment_names(slicerio.read_segmentation(str(out), skip_voxels=True)) == NAMES


# ---- napari, for real ------------------------------------------------------------------------


@pytest.mark.gui
def test_viewer_shows_the_names_and_colours_of_a_file(make_napari_viewer, tmp_path):
    segments = Segments.of_structures(NAMES, "annotation")
    path = write_volume(tmp_path / "ct_annotation.nii.gz", _annotation(), **GEOMETRY,
                        segments=segments)  # fmt: skip
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-medseg")
    assert type(layer).__name__ == "Labels"
    assert layer.metadata[CLASS_NAMES_KEY] == NAMES
    assert np.asarray(layer.colormap.map(2))[:3] == pytest.approx(
        _rgb(structure_color(1)), abs=1 / 255
    )
    assert np.asarray(layer.colormap.map(1))[:3] == pytest.approx(
        _rgb(BACKGROUND_GREY), abs=1 / 255
    )
    for voxel, shown in [((2, 4, 3), "liver"), ((4, 9, 7), "tumour"), ((4, 0, 0), "not annotated")]:
        position = tuple(float(v) for v in layer.data_to_world(voxel))
        viewer.dims.set_point(range(3), position)  # the slice of the voxel is shown
        assert f"name: {shown}" in layer._get_properties(position, world=True)


@pytest.mark.gui
def test_annotate_widget_takes_the_names_of_a_file_and_renames(make_napari_viewer, tmp_path):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    image = np.random.default_rng(0).normal(0, 1, (6, 12, 10)).astype(np.float32)
    image_path = write_volume(tmp_path / "ct.nii.gz", image, **GEOMETRY)
    names = Segments.of_structures(NAMES, "annotation")
    annotation_path = write_volume(
        tmp_path / "ct_annotation.seg.nrrd", _annotation(), **GEOMETRY, segments=names
    )
    viewer = make_napari_viewer()
    viewer.open(str(image_path), plugin="napari-medseg")
    (layer,) = viewer.open(str(annotation_path), plugin="napari-medseg")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.annotation_picker.set_layer(layer)
    assert widget.class_names_edit.text() == "liver, tumour"
    widget.class_names_edit.setText("organ, lesion")
    widget.class_names_edit.editingFinished.emit()
    assert layer.metadata[CLASS_NAMES_KEY] == ["organ", "lesion"]
    assert list(layer.features["name"]) == ["not annotated", "background", "organ", "lesion"]
    widget.image_picker.set_layer(viewer.layers["ct"])
    made = widget.create_annotation_layer()
    assert made is not None and made.metadata[KIND_KEY] == "annotation"
