"""No PyQt5 deprecation notice under Qt6, and no warning of ours under any binding.

napari 0.9 shows "napari support for the PyQt5 backend is deprecated ..." as a warning
notification the first time its window is shown, when qtpy runs on Qt 5
(``napari._qt.qt_main_window.SHOW_QT_WARNING = qtpy.QT5``). napari's pytest plugin turns
that notice off for every test; this test turns it back to what a user's session gets, shows
a window with the four widgets docked, and reads the notifications and warnings. Under PyQt5
napari's notice is expected (and nothing else); under PyQt6 (scripts/check_qt6.sh) there
must be none.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import napari_medseg

pytestmark = pytest.mark.gui

PACKAGE_DIR = Path(napari_medseg.__file__).resolve().parent


def _is_pyqt5_notice(message: str) -> bool:
    return "PyQt5" in message and "deprecated" in message


def test_no_pyqt5_notice_under_qt6_and_no_warning_of_ours(make_napari_viewer, models, monkeypatch):
    import qtpy
    from napari._qt import qt_main_window
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from napari_medseg._qt.launch import dock_widgets

    monkeypatch.setattr(qt_main_window, "SHOW_QT_WARNING", qtpy.QT5)
    start = len(notification_manager.records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer = make_napari_viewer(show=True)
        widgets = dock_widgets(viewer)
    assert len(widgets) == 4
    assert viewer.window._qt_window.isVisible()  # shown: napari's check has run

    notices = [
        (n.severity, str(n.message))
        for n in notification_manager.records[start:]
        if n.severity >= NotificationSeverity.WARNING
    ]
    pyqt5 = [message for _, message in notices if _is_pyqt5_notice(message)]
    if qtpy.API_NAME == "PyQt5":
        assert pyqt5, "napari 0.9 announces the PyQt5 deprecation: has the check moved?"
    else:
        assert pyqt5 == [], f"{qtpy.API_NAME}: {pyqt5}"
    assert [n for n in notices if not _is_pyqt5_notice(n[1])] == []
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if Path(w.filename).resolve().is_relative_to(PACKAGE_DIR)
    ]
    assert ours == []
