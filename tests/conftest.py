"""Shared fixtures. GUI tests (``@pytest.mark.gui``) are skipped when no display exists.

Run them under an X server: ``xvfb-run -a pytest tests/test_gui_*.py``.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GUI tests without a display (creating a QApplication would abort the process)."""
    if _has_display():
        return
    skip = pytest.mark.skip(reason="no display: run GUI tests under xvfb-run")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _private_autosave_dir(request, tmp_path_factory, monkeypatch):
    """GUI tests autosave into a temporary folder, never into the user's cache."""
    if "gui" in request.keywords or request.node.module.__name__.startswith("test_gui"):
        folder = tmp_path_factory.mktemp("autosave")
        monkeypatch.setenv("MEDSEG_AUTOSAVE_DIR", str(folder))


@pytest.fixture(autouse=True)
def napari_settings(request, tmp_path_factory, monkeypatch):
    """napari's settings (reader choices ...) in a temporary folder, never the user's.

    Applies to GUI tests and to tests run after napari was imported; yields the settings
    object (``None`` where not applied).
    """
    gui = "gui" in request.keywords or request.node.module.__name__.startswith("test_gui")
    if not gui and "napari" not in sys.modules:
        yield None
        return
    module = pytest.importorskip("napari.settings")
    settings = module.NapariSettings(
        config_path=tmp_path_factory.mktemp("napari-settings") / "settings.yaml"
    )
    settings._connect_events()
    monkeypatch.setattr(module, "_SETTINGS", settings)
    yield settings


@pytest.fixture
def models():
    """The session-wide model registry, emptied before and after the test."""
    from napari_medseg._qt._state import MODELS

    MODELS.clear()
    yield MODELS
    MODELS.clear()


@pytest.fixture
def synthetic_viewer(make_napari_viewer, models):
    """A napari viewer holding a tiny anisotropic synthetic case.

    Layers: ``"synthetic"`` (image, 16 × 32 × 32, spacing 2 × 1 × 1 mm),
    ``"synthetic expert mask"`` and ``"synthetic annotation"`` (a few painted slices).
    """
    from napari_medseg._napari.sample import layer_tuples
    from napari_medseg.synthetic import make_synthetic_case
    from napari_medseg.volume import Volume

    case = make_synthetic_case(shape=(16, 32, 32), spacing=(2.0, 1.0, 1.0), seed=0)
    image = Volume(case.image, case.spacing)
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in layer_tuples(
        "synthetic", image, case.expert_mask, list(case.class_names), case.annotation
    ):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return viewer


@pytest.fixture
def cube_case() -> tuple[np.ndarray, np.ndarray]:
    """A bright cube in noise (16 x 24 x 24), its middle axial slice painted."""
    rng = np.random.default_rng(0)
    truth = np.zeros((16, 24, 24), np.uint8)
    truth[4:12, 6:18, 6:18] = 1
    image = (truth * 2.0 + rng.normal(0, 0.3, truth.shape)).astype(np.float32)
    annotation = np.zeros(truth.shape, np.uint8)
    annotation[8] = truth[8] + 1
    return image, annotation
