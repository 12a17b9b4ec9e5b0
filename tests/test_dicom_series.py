"""A folder holding several DICOM series: the CLI's --series-uid and its one-line refusal,
``medseg dicom-series``, the napari reader (one layer per series), the DICOM series widget,
and the header's display window as the image layer's contrast limits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from test_cli import assert_user_error
from test_io import write_dicom_series

from napari_medseg._napari import reader as reader_module
from napari_medseg._napari.reader import read_layers
from napari_medseg.cli import main
from napari_medseg.errors import MedsegInputError
from napari_medseg.io import (
    SeveralSeriesError,
    find_series,
    read_series,
    read_volume,
    window_limits,
    write_volume,
)

AXIAL_UID = "1.2.826.0.1.3680043.2.1125.9.100"
SCOUT_UID = "1.2.826.0.1.3680043.2.1125.9.200"
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.2.1125.9.1"


def write_series(
    folder: Path,
    array: np.ndarray,
    uid: str,
    description: str,
    *,
    modality: str = "CT",
    window: tuple[list[float], list[float]] | None = None,
    names: list[str] | None = None,
    image: sitk.Image | None = None,
    series_number: int = 1,
) -> list[Path]:
    """One single-frame DICOM file per slice of ``array`` (Hounsfield units, int16), with
    the attributes a scanner writes and a DICOM SEG needs (FrameOfReferenceUID ...).

    ``window``: WindowCenter and WindowWidth values (several: a multi-valued tag).
    ``image``: write this SimpleITK image (its geometry) instead of ``array``.
    """
    if image is None:
        image = sitk.GetImageFromArray(np.asarray(array, dtype=np.int16))
        image.SetSpacing((0.8, 0.7, 2.0))
        image.SetOrigin((-20.0, 10.0, 35.0))
    files = write_dicom_series(folder, image, uid=uid, description=description, names=names)
    for file in files:
        ds = pydicom.dcmread(file)
        ds.Modality = modality
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
        ds.PatientID = "MEDSEG-TEST"
        ds.PatientName = "Test^Phantom"
        ds.SeriesNumber = series_number
        if window is not None:
            ds.WindowCenter = window[0] if len(window[0]) > 1 else window[0][0]
            ds.WindowWidth = window[1] if len(window[1]) > 1 else window[1][0]
        ds.save_as(file)
    return files


def cube_array(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright box in noise (HU) and its mask."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.uint8)
    z, y, x = shape
    truth[z // 4 : 3 * z // 4, y // 4 : 2 * y // 3, x // 4 : 3 * x // 4] = 1
    return (truth * 300.0 + rng.normal(0, 30, shape)).astype(np.int16), truth


@pytest.fixture
def two_series(tmp_path) -> Path:
    """A folder with an axial CT series (8 x 24 x 20, a window in the header, file names
    in reverse slice order) and an MR scout (3 x 16 x 12, no window)."""
    folder = tmp_path / "study"
    axial, _ = cube_array((8, 24, 20))
    write_series(
        folder, axial, AXIAL_UID, "axial", window=([40.0, 50.0], [400.0, 350.0]),
        names=[f"z{7 - k}.dcm" for k in range(8)], series_number=3,
    )  # fmt: skip
    scout, _ = cube_array((3, 16, 12), seed=1)
    write_series(
        folder, scout, SCOUT_UID, "scout", modality="MR",
        names=[f"s{k}.dcm" for k in range(3)], series_number=1,
    )  # fmt: skip
    return folder


# ---- the core: which series, which window ---------------------------------------------


def test_several_series_error_lists_them_for_a_choice(two_series):
    with pytest.raises(SeveralSeriesError) as info:
        read_volume(two_series)
    found = {s.uid: s for s in info.value.series}
    assert set(found) == {AXIAL_UID, SCOUT_UID}
    assert (found[AXIAL_UID].n_slices, found[AXIAL_UID].rows, found[AXIAL_UID].columns) == (
        8, 24, 20,
    )  # fmt: skip
    assert found[SCOUT_UID].modality == "MR" and found[SCOUT_UID].series_number == "1"
    assert found[AXIAL_UID].title == "axial, series 3"
    assert find_series(two_series, SCOUT_UID).files == found[SCOUT_UID].files
    listed, scanned = read_series(found[AXIAL_UID]), read_volume(two_series, series_uid=AXIAL_UID)
    np.testing.assert_array_equal(listed.array, scanned.array)
    assert (listed.spacing, listed.origin) == (scanned.spacing, scanned.origin)
    assert listed.metadata == scanned.metadata


def test_window_limits_from_the_header():
    assert window_limits({"window_center": "40\\50", "window_width": "400\\350"}) == (
        -160.0, 240.0,
    )  # fmt: skip
    assert window_limits({"window_center": "-600", "window_width": "1500"}) == (-1350.0, 150.0)
    assert window_limits({"window_center": 40.0, "window_width": 80.0}) == (0.0, 80.0)
    for bad in ({}, {"window_center": "40"}, {"window_center": "40", "window_width": "0"},
                {"window_center": "x", "window_width": "400"},
                {"window_center": "40", "window_width": "nan"}):  # fmt: skip
        assert window_limits(bad) is None, bad


# ---- the command line ----------------------------------------------------------------


def _fake_model(tmp_path: Path) -> Path:
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not read: the series is checked first")
    return model


def test_predict_refuses_several_series_with_the_option_to_pass(two_series, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    argv = ["predict", str(_fake_model(tmp_path)), str(two_series), "--out", str(out)]
    line = assert_user_error(main(argv), capsys.readouterr().err, "predict", "--series-uid UID")
    assert f'{AXIAL_UID} (CT, "axial", 8 slices)' in line
    assert f'{SCOUT_UID} (MR, "scout", 3 slices)' in line
    assert "2 DICOM series" in line
    assert not out.exists()


def test_train_refuses_several_series_and_an_unknown_uid(two_series, tmp_path, capsys):
    annotation = tmp_path / "annotation.nii.gz"
    write_volume(annotation, np.zeros((8, 24, 20), np.uint8), labels=True)
    model = tmp_path / "m.safetensors"
    argv = ["train", str(two_series), str(annotation), "--out", str(model)]
    assert_user_error(main(argv), capsys.readouterr().err, "train", "--series-uid UID", "scout")
    code = main([*argv, "--series-uid", "9.9.9"])
    assert_user_error(code, capsys.readouterr().err, "train", "series 9.9.9 is not in")
    assert not model.exists()


def test_crossval_refuses_several_series_then_takes_the_one_chosen(two_series, tmp_path, capsys):
    _, truth = cube_array((8, 24, 20))
    annotation = np.zeros(truth.shape, np.uint8)
    for z in (2, 5):
        annotation[z] = truth[z] + 1
    volume = read_volume(two_series, series_uid=AXIAL_UID)
    ann = write_volume(tmp_path / "ann.nii.gz", annotation, reference=volume, labels=True)
    argv = ["crossval", str(two_series), str(ann), "--folds", "2", "--iterations", "1",
            "--device", "cpu", "--json"]  # fmt: skip
    assert_user_error(main(argv), capsys.readouterr().err, "crossval", "--series-uid UID")
    assert main([*argv, "--series-uid", AXIAL_UID]) == 0
    assert '"folds"' in capsys.readouterr().out


def test_series_uid_for_an_image_that_is_not_dicom_is_refused(tmp_path, capsys):
    image = write_volume(tmp_path / "image.nii.gz", np.zeros((4, 8, 8), np.float32))
    argv = ["predict", str(_fake_model(tmp_path)), str(image), "--out",
            str(tmp_path / "s.nii.gz"), "--series-uid", AXIAL_UID]  # fmt: skip
    assert_user_error(main(argv), capsys.readouterr().err, "predict", "applies to a DICOM image")


def test_annotation_folder_of_several_series_is_named_by_a_file(two_series, tmp_path, capsys):
    argv = ["train", str(two_series), str(two_series), "--out", str(tmp_path / "m.safetensors"),
            "--series-uid", AXIAL_UID]  # fmt: skip
    line = assert_user_error(main(argv), capsys.readouterr().err, "train", "annotation folder")
    assert "name one file" in line and "z7.dcm for" in line and "s0.dcm for" in line


def test_series_uid_trains_and_predicts_on_the_chosen_series(two_series, tmp_path, capsys):
    import torch

    volume = read_volume(two_series, series_uid=AXIAL_UID)
    _, truth = cube_array((8, 24, 20))
    annotation = np.zeros(truth.shape, np.uint8)
    annotation[4] = truth[4] + 1
    ann = write_volume(tmp_path / "ann.nii.gz", annotation, reference=volume, labels=True)
    model, seg = tmp_path / "m.safetensors", tmp_path / "seg.nii.gz"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(two_series), str(ann), "--out", str(model), "--series-uid",
                     AXIAL_UID, "--iterations", "2", "--device", "cpu"]) == 0  # fmt: skip
        assert main(["predict", str(model), str(two_series), "--out", str(seg), "--series-uid",
                     AXIAL_UID, "--device", "cpu"]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    result = read_volume(seg)
    assert result.shape == (8, 24, 20)
    np.testing.assert_allclose(result.origin, volume.origin)
    np.testing.assert_allclose(result.spacing, volume.spacing)


def test_dicom_series_command_lists_the_series(two_series, capsys):
    assert main(["dicom-series", str(two_series)]) == 0
    out = capsys.readouterr().out
    axial = next(line for line in out.splitlines() if line.startswith(AXIAL_UID))
    assert axial.split()[1:5] == ["CT", "3", "8", "24"] and axial.rstrip().endswith("axial")
    assert "--series-uid" in out
    assert main(["dicom-series", str(two_series), "--json"]) == 0
    listed = {entry["uid"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed[SCOUT_UID] == {
        "uid": SCOUT_UID, "modality": "MR", "series_number": "1", "description": "scout",
        "slices": 3, "rows": 16, "columns": 12,
    }  # fmt: skip


def test_dicom_series_command_on_a_folder_without_dicom(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code = main(["dicom-series", str(tmp_path)])
    assert_user_error(code, capsys.readouterr().err, "dicom-series", "no DICOM series")


# ---- the napari reader ---------------------------------------------------------------


def test_reader_opens_every_series_as_a_layer_and_says_so(two_series):
    with pytest.warns(UserWarning, match="2 DICOM series: each opened as its own layer"):
        layers = read_layers(str(two_series))
    by_name = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layers}
    assert set(by_name) == {"study · axial, series 3", "study · scout, series 1"}
    axial, kwargs, kind = by_name["study · axial, series 3"]
    assert kind == "image" and axial.shape == (8, 24, 20)
    np.testing.assert_array_equal(axial, read_volume(two_series, series_uid=AXIAL_UID).array)
    assert kwargs["contrast_limits"] == [-160.0, 240.0]  # first values: 40 and 400
    assert kwargs["metadata"]["series_uid"] == AXIAL_UID
    scout, kwargs, _ = by_name["study · scout, series 1"]
    assert scout.shape == (3, 16, 12) and "contrast_limits" not in kwargs


def test_reader_of_one_series_uses_its_window(tmp_path):
    array, _ = cube_array((4, 10, 12))
    write_series(tmp_path / "ct", array, AXIAL_UID, "chest", window=([-600.0], [1500.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [(data, kwargs, kind)] = read_layers(str(tmp_path / "ct"))
    assert kind == "image" and kwargs["contrast_limits"] == [-1350.0, 150.0]


def test_reader_leaves_out_a_series_it_cannot_read(two_series, monkeypatch):
    real = reader_module.read_series

    def failing(info, **kwargs):
        if info.uid == SCOUT_UID:
            raise MedsegInputError("cannot read the scout")
        return real(info, **kwargs)

    monkeypatch.setattr(reader_module, "read_series", failing)
    with pytest.warns(UserWarning, match="left out: scout, series 1 .cannot read the scout"):
        layers = read_layers(str(two_series))
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["study · axial, series 3"]


def test_reader_refuses_series_too_large_together(two_series, monkeypatch):
    monkeypatch.setattr(reader_module, "DEFAULT_MAX_VOXELS", 8 * 24 * 20)
    with pytest.raises(MedsegInputError, match="too large together.*DICOM series widget"):
        read_layers(str(two_series))


# ---- napari: a real viewer and the widget ---------------------------------------------


@pytest.mark.gui
def test_viewer_opens_a_folder_of_several_series_with_the_window(make_napari_viewer, two_series):
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="each opened as its own layer"):
        viewer.open(str(two_series), plugin="napari-medseg")
    assert len(viewer.layers) == 2
    axial = viewer.layers["study · axial, series 3"]
    assert tuple(axial.contrast_limits) == (-160.0, 240.0)
    assert axial.data.shape == (8, 24, 20)
    scout = viewer.layers["study · scout, series 1"]
    data = np.asarray(scout.data)
    assert tuple(scout.contrast_limits) == (float(data.min()), float(data.max()))


@pytest.mark.gui
def test_widget_lists_the_series_and_opens_the_one_picked(make_napari_viewer, qtbot, two_series):
    from napari_medseg._qt.dicom_series_widget import DicomSeriesWidget

    viewer = make_napari_viewer()
    widget = DicomSeriesWidget(viewer)
    qtbot.addWidget(widget)
    widget.set_folder(two_series)
    qtbot.waitUntil(lambda: not widget.is_running and widget.table.rowCount() == 2, timeout=20000)
    cells = {widget.table.item(r, 0).text(): r for r in range(2)}
    assert widget.table.item(cells["scout"], 1).text() == "MR"
    assert widget.table.item(cells["axial"], 5).text() == AXIAL_UID
    widget.table.selectRow(cells["axial"])
    widget.open_selected()
    qtbot.waitUntil(lambda: not widget.is_running and len(viewer.layers) == 1, timeout=20000)
    layer = viewer.layers[0]
    assert layer.name == "study · axial, series 3" and layer.data.shape == (8, 24, 20)
    assert tuple(layer.contrast_limits) == (-160.0, 240.0)
    assert "opened" in widget.job.status.text()


@pytest.mark.gui
def test_widget_says_when_nothing_is_selected(make_napari_viewer, qtbot, tmp_path):
    from napari_medseg._qt.dicom_series_widget import DicomSeriesWidget

    widget = DicomSeriesWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    assert widget.open_selected() is None
    assert widget.job.status.is_error
    (tmp_path / "notes.txt").write_text("no DICOM here")
    widget.set_folder(tmp_path)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=20000)
    assert widget.job.status.is_error and "no DICOM series" in widget.job.status.text()
