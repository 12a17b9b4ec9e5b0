"""The widgets in napari's menus: Layers ▸ Segment, Layers ▸ Measure and Plugins ▸ MedSeg.

The manifest's ``menus`` contributions place the widget commands; napari names a widget
"<display name> (MedSeg)" in every menu once a plugin declares menu items. Each test walks
the real menu bar of a viewer, triggers the entry and checks that the widget got docked.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui

SEGMENT = ("1 · Annotate (MedSeg)", "2 · Train (MedSeg)", "3 · Predict (MedSeg)")
MEASURE = ("4 · Metrics (MedSeg)",)


def _submenu(menu, title):
    """The submenu called ``title`` (ignoring ``&`` accelerators), refreshed as when opened."""
    for action in menu.actions():
        if action.menu() is not None and action.text().replace("&", "") == title:
            action.menu().aboutToShow.emit()
            return action.menu()
    raise AssertionError(f"no {title!r} submenu in {[a.text() for a in menu.actions()]}")


def _menu(viewer, *path):
    menu = viewer.window._qt_window.menuBar()
    for title in path:
        menu = _submenu(menu, title)
    return menu


def _actions(menu):
    return {action.text(): action for action in menu.actions() if action.isVisible()}


def test_manifest_places_the_widgets_in_napari_layers_menus(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    menus = get_app_model().menus
    commands = {
        menu_id: [getattr(item, "command", None) for item in menus.get_menu(menu_id)]
        for menu_id in ("napari/layers/segment", "napari/layers/measure")
    }
    segment = [c.id for c in commands["napari/layers/segment"] if c is not None]
    measure = [c.id for c in commands["napari/layers/measure"] if c is not None]
    assert [c for c in segment if c.startswith("napari-medseg.")] == [
        "napari-medseg.annotate_widget",
        "napari-medseg.train_widget",
        "napari-medseg.predict_widget",
    ]
    assert [c for c in measure if c.startswith("napari-medseg.")] == [
        "napari-medseg.metrics_widget"
    ]


@pytest.mark.parametrize(
    ("path", "title", "class_name"),
    [
        (("Layers", "Segment"), "1 · Annotate (MedSeg)", "AnnotateWidget"),
        (("Layers", "Segment"), "3 · Predict (MedSeg)", "PredictWidget"),
        (("Layers", "Measure"), "4 · Metrics (MedSeg)", "MetricsWidget"),
        (("Plugins", "MedSeg"), "2 · Train (MedSeg)", "TrainWidget"),
    ],
)
def test_menu_entry_docks_the_widget(make_napari_viewer, models, path, title, class_name):
    viewer = make_napari_viewer()
    actions = _actions(_menu(viewer, *path))
    expected = {"Segment": SEGMENT, "Measure": MEASURE, "MedSeg": SEGMENT + MEASURE}[path[-1]]
    assert set(expected) <= set(actions), sorted(actions)
    assert title not in viewer.window.dock_widgets

    actions[title].trigger()

    assert title in viewer.window.dock_widgets
    assert type(viewer.window.dock_widgets[title]).__name__ == class_name
