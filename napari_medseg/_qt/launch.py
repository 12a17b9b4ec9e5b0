"""``medseg gui``: open napari with the plugin's four widgets docked."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from napari.viewer import Viewer
from qtpy.QtCore import QTimer

logger = logging.getLogger(__name__)

PLUGIN = "napari-medseg"

#: (display name in napari.yaml, widget class path), in workflow order.
WIDGETS: tuple[tuple[str, str], ...] = (
    ("1 · Annotate", "napari_medseg._qt.annotate_widget:AnnotateWidget"),
    ("2 · Train", "napari_medseg._qt.train_widget:TrainWidget"),
    ("3 · Predict", "napari_medseg._qt.predict_widget:PredictWidget"),
    ("4 · Metrics", "napari_medseg._qt.metrics_widget:MetricsWidget"),
)


def _widget_class(path: str) -> Any:
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def dock_widgets(viewer: Viewer) -> dict[str, Any]:
    """Dock the four widgets on the right of ``viewer`` as tabs, Annotate in front.

    Uses the plugin's manifest when it is installed (so napari's Plugins menu knows them),
    otherwise instantiates the classes directly.

    Returns
    -------
    dict
        The widgets by display name.
    """
    widgets: dict[str, Any] = {}
    first_dock = None
    for i, (title, path) in enumerate(WIDGETS):
        try:
            dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title, tabify=i > 0)
        except Exception:  # noqa: BLE001 - plugin not registered (source checkout)
            logger.debug("plugin widget %r not found; docking the class directly", title)
            widget = _widget_class(path)(viewer)
            dock = viewer.window.add_dock_widget(widget, name=title, area="right", tabify=i > 0)
        widgets[title] = widget
        first_dock = first_dock or dock
    if first_dock is not None:
        first_dock.raise_()
        # Tabs added later become current once the window is shown; raise again then.
        QTimer.singleShot(0, first_dock.raise_)
    return widgets


def open_paths(viewer: Viewer, paths: Sequence[str]) -> None:
    """Open each path with the plugin's reader; a file that fails is reported, not fatal."""
    from napari.utils.notifications import show_error

    for path in paths:
        try:
            viewer.open(path, plugin=PLUGIN)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other files
            cause = exc.__cause__ or exc
            show_error(f"could not open {path}: {cause}")
            logger.error("could not open %s: %s", path, cause)


def launch_gui(paths: Sequence[str] = (), *, run: bool = True) -> Viewer:
    """Start napari with ``paths`` open (or the synthetic sample) and the widgets docked.

    The first time, MedSeg also becomes napari's reader for the medical file types the
    user chose no reader for (:mod:`napari_medseg._napari.precedence`), and says so.

    Parameters
    ----------
    paths : sequence of str
        Files or DICOM folders to open with the plugin's reader.
    run : bool
        Enter the Qt event loop (``napari.run()``); False returns at once (tests, scripts).

    Returns
    -------
    napari.viewer.Viewer
        The viewer.
    """
    import napari

    from .._napari.precedence import announce_reader_precedence

    viewer = napari.Viewer(title="napari-medseg")
    # Files dropped on the window open with MedSeg, unless the user chose another reader.
    announce_reader_precedence()
    if paths:
        open_paths(viewer, paths)
    else:
        try:
            viewer.open_sample(PLUGIN, "synthetic")
        except Exception:  # noqa: BLE001 - plugin not registered: add the layers ourselves
            from .._napari.sample import synthetic

            for data, kwargs, layer_type in synthetic():
                getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    dock_widgets(viewer)
    if run:
        napari.run()
    return viewer
