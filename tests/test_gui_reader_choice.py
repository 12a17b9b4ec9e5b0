"""Which reader napari picks for medical files, and how MedSeg becomes it without overriding
the user's choice (napari_medseg._napari.precedence, docs/NAPARI.md).

napari's built-in reader also claims ``.nii``, ``.nrrd`` ... (without the voxel spacing), so
with no saved preference a dropped file opens the *Choose reader* dialog. Every test runs
with napari settings of its own in a temporary folder (the ``napari_settings`` fixture of
conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg._napari import precedence
from napari_medseg.io import write_volume
from napari_medseg.volume import Volume

SPACING = (2.0, 1.0, 0.5)


@pytest.fixture
def volume_file(tmp_path):
    path = tmp_path / "scan.nii.gz"
    write_volume(path, Volume(np.arange(60, dtype=np.float32).reshape(3, 4, 5), SPACING))
    return path


def _no_dialog(monkeypatch):
    """Replace the *Choose reader* dialog; returns the list of the paths it was shown for."""
    calls = []
    monkeypatch.setattr(
        "napari._qt.qt_viewer.handle_gui_reading", lambda paths, *a, **k: calls.append(paths)
    )
    return calls


# --- the rules, on napari's settings object ------------------------------------------------


def test_claim_sets_medseg_for_medical_patterns_only(napari_settings):
    claimed = precedence.claim_reader_precedence()

    assert claimed == list(precedence.MEDICAL_PATTERNS)
    saved = napari_settings.plugins.extension2reader
    assert {p: saved[p] for p in claimed} == dict.fromkeys(claimed, "napari-medseg")
    assert not {"*.tif", "*.tiff", "*.npy"} & set(saved)  # general types: the dialog asks
    # napari saves its settings at once: the choice outlives the session
    on_disk = napari_settings.config_path.read_text()
    assert "'*.nii.gz': napari-medseg" in on_disk


def test_a_users_existing_choice_is_kept(napari_settings):
    users = {"*.gz": "napari", "*.nrrd": "other-plugin", "/data/*.mha": "napari"}
    napari_settings.plugins.extension2reader = dict(users)

    claimed = precedence.claim_reader_precedence()

    saved = napari_settings.plugins.extension2reader
    assert {p: saved[p] for p in users} == users
    assert "*.nii.gz" not in claimed and "*.nii.gz" not in saved  # *.gz already decides
    assert "*.nrrd" not in claimed
    # a folder-specific choice stays the more specific one; elsewhere MedSeg reads .mha
    assert "*.mha" in claimed and "*.nii" in claimed


def test_a_removed_preference_stays_removed(napari_settings):
    assert "*.nii" in precedence.claim_reader_precedence()
    saved = dict(napari_settings.plugins.extension2reader)
    del saved["*.nii"]
    napari_settings.plugins.extension2reader = saved  # what Preferences > Plugins does

    assert precedence.claim_reader_precedence() == []
    assert "*.nii" not in napari_settings.plugins.extension2reader
    # a new session reads the same settings folder: still not claimed again
    from napari.settings import NapariSettings

    again = NapariSettings(config_path=napari_settings.config_path)
    assert precedence.claim_reader_precedence(again) == []
    assert "*.nii" not in again.plugins.extension2reader


def test_unclaimed_patterns_honours_wildcards():
    assert precedence.unclaimed_patterns({"*": "napari"}) == []
    assert precedence.unclaimed_patterns({"*.gz": "x"}, ["*.nii.gz", "*.nii"]) == ["*.nii"]
    assert precedence.unclaimed_patterns({}, ["*.nrrd"]) == ["*.nrrd"]


def test_on_activate_without_a_window_changes_nothing(napari_settings, monkeypatch):
    import napari

    monkeypatch.setattr(napari, "current_viewer", lambda: None)
    precedence.on_activate(None)
    assert napari_settings.plugins.extension2reader == {}


# --- in a viewer -----------------------------------------------------------------------------


@pytest.mark.gui
def test_without_a_preference_napari_asks(make_napari_viewer, volume_file, monkeypatch):
    from napari.errors import MultipleReaderError
    from napari.plugins import _npe2

    viewer = make_napari_viewer()
    # the names the Choose reader dialog lists
    assert _npe2.get_readers(str(volume_file))["napari-medseg"] == "MedSeg"
    try:
        viewer.open(volume_file, plugin=None)
    except MultipleReaderError as exc:  # not pytest.raises: its traceback keeps the viewer
        raised = str(exc)
    else:
        raised = ""
    assert "Multiple plugins found" in raised
    calls = _no_dialog(monkeypatch)
    viewer.window._qt_viewer._qt_open([str(volume_file)], stack=False)  # drag and drop
    assert len(calls) == 1
    # scripts name the plugin and get the geometry
    [layer] = viewer.open(volume_file, plugin="napari-medseg")
    np.testing.assert_allclose(layer.scale, SPACING)


@pytest.mark.gui
def test_after_medseg_gui_files_open_with_medseg(
    qtbot, models, mock_app_model, napari_settings, volume_file, monkeypatch
):
    from napari._qt._qapp_model.qactions import init_qactions
    from napari.plugins import _initialize_plugins
    from napari.utils.notifications import notification_manager

    from napari_medseg._qt.launch import launch_gui

    # launch_gui makes its own napari.Viewer: register napari's actions and the plugins into
    # this test's app model (as make_napari_viewer does), not into the process-wide one
    _initialize_plugins.cache_clear()
    init_qactions.cache_clear()
    before = len(notification_manager.records)
    viewer = launch_gui([], run=False)
    try:
        messages = [str(n.message) for n in notification_manager.records[before:]]
        assert any("MedSeg now opens .nii" in m and "Preferences" in m for m in messages)
        assert napari_settings.plugins.extension2reader["*.nii.gz"] == "napari-medseg"

        [layer] = viewer.open(volume_file, plugin=None)  # napari follows the preference
        np.testing.assert_allclose(layer.scale, SPACING)
        calls = _no_dialog(monkeypatch)
        viewer.window._qt_viewer._qt_open([str(volume_file)], stack=False)  # drag and drop
        assert calls == []
        np.testing.assert_allclose(viewer.layers[-1].scale, SPACING)
        assert viewer.layers[-1].metadata["spacing"] == list(SPACING)
    finally:
        viewer.close()


@pytest.mark.gui
def test_activation_in_a_window_claims_and_keeps_the_users_choice(
    make_napari_viewer, napari_settings
):
    napari_settings.plugins.extension2reader = {"*.nii.gz": "napari"}
    make_napari_viewer()

    precedence.on_activate(None)

    saved = napari_settings.plugins.extension2reader
    assert saved["*.nii.gz"] == "napari"
    assert saved["*.nrrd"] == "napari-medseg"


@pytest.mark.gui
def test_choose_reader_dialog_matches_docs_napari_md(make_napari_viewer, volume_file, qtbot):
    from napari._qt.dialogs.qt_reader_dialog import QtReaderDialog
    from napari.plugins import _npe2

    make_napari_viewer()
    dialog = QtReaderDialog(pth=str(volume_file), readers=_npe2.get_readers(str(volume_file)))
    qtbot.addWidget(dialog)

    assert "MedSeg" in [button.text() for button in dialog.reader_btn_group.buttons()]
    # napari keys the remembered choice on the last suffix: *.gz for scan.nii.gz
    assert dialog.persist_checkbox.text().endswith("with a .gz extension")
    assert not dialog.persist_checkbox.isChecked()
