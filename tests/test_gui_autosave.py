"""Crash recovery in the Annotate widget: autosave, offer back, restore, discard.

Run under an X server: ``xvfb-run -a pytest tests/test_gui_autosave.py``. Every test
autosaves into its own temporary folder (``MEDSEG_AUTOSAVE_DIR``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from napari_medseg.colors import CLASS_NAMES_KEY

pytestmark = pytest.mark.gui

WAIT_MS = 30_000


@pytest.fixture
def autosave_dir(tmp_path, monkeypatch):
    folder = tmp_path / "autosave"
    monkeypatch.setenv("MEDSEG_AUTOSAVE_DIR", str(folder))
    return folder


def _annotate(viewer, qtbot):
    from napari_medseg._qt.annotate_widget import AnnotateWidget

    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    qtbot.waitUntil(lambda: widget.check_worker is None, timeout=WAIT_MS)
    return widget


def _synthetic_image_viewer(make_napari_viewer):
    """A viewer with only the tiny synthetic image (no file behind it)."""
    from napari_medseg._napari.sample import layer_tuples
    from napari_medseg.synthetic import make_synthetic_case
    from napari_medseg.volume import Volume

    case = make_synthetic_case(shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0), seed=0)
    viewer = make_napari_viewer()
    data, kwargs, _ = layer_tuples(
        "synthetic", Volume(case.image, case.spacing), case.expert_mask, ["tube"]
    )[0]
    viewer.add_image(data, **kwargs)
    return viewer


def _paint(layer, value, z, y, x):
    """Paint a block like a brush stroke would (undoable, emits ``paint``)."""
    index = np.nonzero(np.ones((len(z), len(y), len(x)), bool))
    layer.data_setitem((index[0] + z[0], index[1] + y[0], index[2] + x[0]), value)


def test_autosave_then_restore_in_a_new_viewer(make_napari_viewer, qtbot, autosave_dir):
    viewer = _synthetic_image_viewer(make_napari_viewer)
    widget = _annotate(viewer, qtbot)
    assert widget.autosave_check.isChecked()
    assert not widget.restore_offered and not widget.restore_banner.isVisibleTo(widget)
    assert widget.autosave_now() is None  # no annotation layer yet: nothing to save

    widget.class_names_edit.setText("tube")
    layer = widget.create_annotation_layer()
    qtbot.waitUntil(lambda: widget.check_worker is None, timeout=WAIT_MS)
    widget.autosave_now()  # an empty layer is not saved (nothing to recover)
    qtbot.waitUntil(lambda: widget.autosave_worker is None, timeout=WAIT_MS)
    assert not list(autosave_dir.glob("*.npz"))

    _paint(layer, 2, range(5, 7), range(10, 14), range(10, 14))
    _paint(layer, 1, range(5, 6), range(0, 3), range(0, 32))
    assert widget.autosave.soon.isActive()  # saves shortly after painting stops
    painted = np.array(layer.data, copy=True)
    worker = widget.autosave_now()  # the timers' slot, called directly
    assert worker is not None
    qtbot.waitUntil(lambda: widget.autosave_worker is None, timeout=WAIT_MS)
    files = list(autosave_dir.glob("*.npz"))
    assert len(files) == 1 and widget.autosave_path == files[0]
    assert "autosaved" in widget.autosave_label.text()
    assert widget.autosave_now() is None  # unchanged since: nothing to do

    # "the app was killed": a new viewer on the same image offers the painting back
    second = _synthetic_image_viewer(make_napari_viewer)
    restorer = _annotate(second, qtbot)
    assert restorer.restore_offered and restorer.restore_banner.isVisibleTo(restorer)
    n = int(np.count_nonzero(painted))
    assert f"Restore autosaved annotation ({n:,} voxels, saved " in restorer.restore_button.text()
    mtime = files[0].stat().st_mtime_ns
    restorer.class_names_edit.setText("something else")
    other = restorer.create_annotation_layer()  # an empty new layer must not overwrite it
    _paint(other, 1, range(0, 1), range(0, 2), range(0, 2))
    assert restorer.autosave_now() is None  # paused while the restore is offered
    assert "paused" in restorer.autosave_label.text()
    assert files[0].stat().st_mtime_ns == mtime

    restorer.restore_button.click()
    qtbot.waitUntil(lambda: not restorer.restore_offered, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: restorer.restore_worker is None, timeout=WAIT_MS)
    restored = restorer.annotation_picker.layer()
    assert restored is other
    np.testing.assert_array_equal(restored.data, painted)
    assert restored.metadata[CLASS_NAMES_KEY] == ["tube"]  # the names painted with it
    assert not restorer.status.is_error, restorer.status.text()
    assert "restored" in restorer.status.text()
    restored.undo()  # the restore is one undoable edit
    assert restored.data[0, 0, 0] == 1 and not restored.data[5].any()


def test_restore_creates_the_layer_and_discard_deletes(make_napari_viewer, qtbot, autosave_dir):
    viewer = _synthetic_image_viewer(make_napari_viewer)
    widget = _annotate(viewer, qtbot)
    widget.class_names_edit.setText("tube, blob")
    layer = widget.create_annotation_layer()
    _paint(layer, 3, range(2, 4), range(5, 9), range(5, 9))
    painted = np.array(layer.data, copy=True)
    widget.autosave_now()
    qtbot.waitUntil(lambda: widget.autosave_worker is None, timeout=WAIT_MS)

    # a new session without any annotation layer: restoring creates it
    second = _synthetic_image_viewer(make_napari_viewer)
    restorer = _annotate(second, qtbot)
    assert restorer.restore_offered and restorer.annotation_picker.layer() is None
    restorer.class_names_edit.setText("x")
    restorer.restore_autosave()
    qtbot.waitUntil(lambda: not restorer.restore_offered, timeout=WAIT_MS)
    new = second.layers["synthetic annotation"]
    np.testing.assert_array_equal(new.data, painted)
    assert new.metadata[CLASS_NAMES_KEY] == ["tube", "blob"]  # names come back too
    assert restorer.class_names_edit.text() == "tube, blob"
    np.testing.assert_allclose(new.scale, (2.0, 1.0, 1.0))
    # the annotation shown is the autosave: another widget on this viewer offers nothing
    assert not _annotate(second, qtbot).restore_offered

    # a third session discards it: the file is gone and nothing is offered any more
    third = _synthetic_image_viewer(make_napari_viewer)
    discarder = _annotate(third, qtbot)
    assert discarder.restore_offered
    discarder.discard_button.click()
    assert not discarder.restore_offered and not list(autosave_dir.glob("*.npz"))
    assert "discarded" in discarder.status.text()
    fourth = _annotate(third, qtbot)
    assert not fourth.restore_offered


def test_autosave_can_be_switched_off(make_napari_viewer, qtbot, autosave_dir):
    viewer = _synthetic_image_viewer(make_napari_viewer)
    widget = _annotate(viewer, qtbot)
    layer = widget.create_annotation_layer()
    widget.autosave_check.setChecked(False)
    assert not widget.autosave.timer.isActive()
    _paint(layer, 2, range(1, 2), range(1, 3), range(1, 3))
    assert not widget.autosave.soon.isActive()
    assert widget.autosave_now() is None and not autosave_dir.exists()
    widget.autosave_check.setChecked(True)
    assert widget.autosave.timer.isActive()
    assert widget.autosave_now() is not None
    qtbot.waitUntil(lambda: widget.autosave_worker is None, timeout=WAIT_MS)
    assert len(list(autosave_dir.glob("*.npz"))) == 1


KILLED_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from napari_medseg.autosave import AutosaveStore
    from napari_medseg.autosave_keys import autosave_key, save_snapshot

    path = sys.argv[1]
    image = np.load(path)
    annotation = np.zeros(image.shape, np.uint8)
    annotation[3, 4:10, 5:9] = 2
    annotation[3, :2, :] = 1
    store = AutosaveStore()
    key = autosave_key(path, image)
    save_snapshot(store, key, annotation, spacing=(1.0, 1.0, 1.0), class_names=["tube"],
                  image_name="scan")
    gui = sorted(m for m in sys.modules if m.split(".")[0] in ("qtpy", "PyQt5", "PyQt6",
                                                               "PySide2", "PySide6", "napari"))
    print("saved", key, gui, flush=True)
    i = 0
    while True:  # keep painting and autosaving until killed (maybe in the middle of a save)
        i += 1
        annotation[0, 0, :] = 0
        annotation[0, 0, : i % image.shape[2] + 1] = 1
        save_snapshot(store, key, annotation, spacing=(1.0, 1.0, 1.0), class_names=["tube"],
                      image_name="scan")
        time.sleep(0.002)
    """
)


def test_autosave_survives_sigkill(make_napari_viewer, qtbot, autosave_dir, tmp_path):
    if sys.platform == "win32":
        pytest.skip("SIGKILL is POSIX")
    path = tmp_path / "scan.npy"
    image = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    np.save(path, image)
    env = dict(os.environ, MEDSEG_AUTOSAVE_DIR=str(autosave_dir))
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED_SCRIPT, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("saved"), line + process.stderr.read()
        assert line.rstrip().endswith("[]"), f"the autosave helper imported a GUI: {line}"
        time.sleep(0.3)  # let it write a few more autosaves
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-medseg")
    assert viewer.layers[0].source.path is not None
    widget = _annotate(viewer, qtbot)
    assert widget.image_picker.layer() is viewer.layers[0]
    assert widget.restore_offered, widget.status.text()
    assert "Restore autosaved annotation (" in widget.restore_button.text()
    widget.restore_button.click()
    qtbot.waitUntil(lambda: not widget.restore_offered, timeout=WAIT_MS)
    layer = widget.annotation_picker.layer()
    assert layer is not None and layer.data.shape == image.shape
    expected = np.zeros(image.shape, np.uint8)
    expected[3, 4:10, 5:9] = 2
    expected[3, :2, :] = 1
    restored = np.array(layer.data)
    # the killed process was painting row (0, 0) between saves: any complete save will do
    row = restored[0, 0].copy()
    restored[0, 0] = 0
    np.testing.assert_array_equal(restored, expected)
    assert set(np.unique(row)) <= {0, 1}
    assert layer.metadata[CLASS_NAMES_KEY] == ["tube"]
