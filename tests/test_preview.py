"""The live preview: the current model's labels of the slice the viewer shows, while training."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train
from napari_medseg.training import preview as preview_module
from napari_medseg.training.preview import PreviewRequest, predict_slice


def _oracle(images: np.ndarray) -> np.ndarray:
    return np.rint(images[:, 0]).astype(np.int64)


@pytest.mark.parametrize("shape", [(12, 40, 50), (3, 10, 7)])  # the second smaller than a patch
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_slice_is_segmented_whole_and_in_place(shape, axis):
    rng = np.random.default_rng(axis)
    volume = rng.integers(0, 3, size=shape).astype(np.float32)
    index = shape[axis] // 2
    got = predict_slice(_oracle, volume[np.newaxis], (4, 16, 16), axis, index)
    assert np.array_equal(got, np.take(volume, index, axis=axis).astype(int))


def test_training_hands_out_previews_of_the_requested_slice(monkeypatch):
    monkeypatch.setattr(preview_module, "PREVIEW_SECONDS", 0.0)
    monkeypatch.setattr(preview_module, "PREVIEW_SHARE", 1e9)  # a preview after every step
    shape = (16, 24, 24)
    truth = np.zeros(shape, np.uint8)
    truth[4:12, 6:18, 6:18] = 1
    image = (truth * 2.0 + np.random.default_rng(0).normal(0, 0.3, shape)).astype(np.float32)
    annotation = np.zeros(shape, np.uint8)
    annotation[8] = truth[8] + 1
    request = PreviewRequest()
    request.show(1, 12)  # a coronal slice
    items = []

    def move_on(progress) -> None:
        items.append(progress)
        if progress.step == 5:
            other = threading.Thread(target=request.show, args=(0, 3))  # as the GUI thread
            other.start()
            other.join()

    config = TrainConfig(iterations=12, time_budget=None, base_channels=4, validation=False)
    run_to_completion(train(image, annotation, config, preview=request), move_on)
    shown = [p.preview for p in items if p.preview is not None]
    assert shown and shown[0].axis == 1 and shown[0].index == 12
    assert shown[0].labels.shape == (16, 24) and shown[0].labels.dtype.kind in "ui"
    assert any(p.axis == 0 and p.index == 3 and p.labels.shape == (24, 24) for p in shown)
    assert [p.step for p in shown] == sorted(p.step for p in shown)


def test_without_a_request_no_preview_is_made(monkeypatch):
    monkeypatch.setattr(preview_module, "PREVIEW_SECONDS", 0.0)
    image = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    annotation = np.zeros(image.shape, np.uint8)
    annotation[4] = 1
    annotation[4, 4:8, 4:8] = 2
    items = []
    config = TrainConfig(iterations=4, time_budget=None, base_channels=4, validation=False)
    run_to_completion(train(image, annotation, config, preview=PreviewRequest()), items.append)
    assert all(p.preview is None for p in items)
