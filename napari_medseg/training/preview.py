"""A live preview while training: the current model's labels on the slice the user looks at.

The viewer tells a :class:`PreviewRequest` which slice it shows (from the GUI thread); every
few seconds the training thread segments that slice with the weights the run would keep
(:class:`LivePreview`, between two steps, at most :data:`PREVIEW_SHARE` of the run) and hands
a :class:`SlicePreview` out with its progress report. Nothing here touches Qt.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..sampling import pad_to_patch

#: Seconds between two previews, at least.
PREVIEW_SECONDS = 3.0
#: The most of a run's time spent on previews.
PREVIEW_SHARE = 0.1


@dataclass(frozen=True)
class SlicePreview:
    """The labels (``0`` background, ``k`` structure ``k``) of one slice after ``step`` steps."""

    axis: int
    index: int
    labels: np.ndarray
    step: int


class PreviewRequest:
    """The slice to preview, ``(axis, index)`` in array order; set from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slice: tuple[int, int] | None = None

    def show(self, axis: int, index: int) -> None:
        """Preview this slice from now on."""
        with self._lock:
            self._slice = (int(axis), int(index))

    def current(self) -> tuple[int, int] | None:
        """The slice asked for (``None``: none yet)."""
        with self._lock:
            return self._slice


def slab_windows(
    shape: Sequence[int], patch: Sequence[int], axis: int, index: int
) -> list[tuple[int, ...]]:
    """Starts of patch-sized windows covering slice ``index`` across ``axis`` of a volume of
    ``shape`` (at least patch-sized): one window deep, side by side elsewhere."""
    ranges = []
    for a, (size, p) in enumerate(zip(shape, patch)):
        if a == axis:
            ranges.append([int(np.clip(index - p // 2, 0, size - p))])
        else:
            ranges.append(sorted({min(s, size - p) for s in range(0, size, p)}))
    return list(itertools.product(*ranges))


def predict_slice(
    predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, patch: Sequence[int],
    axis: int, index: int, batch: int = 4,
) -> np.ndarray:
    """The classes of slice ``index`` across ``axis`` of ``image`` ``(C, z, y, x)``, from
    ``predict`` (``(B, C, *patch)`` images to ``(B, *patch)`` classes)."""
    shape = image.shape[1:]
    padded = pad_to_patch(image, patch, float(image.min()), lead=1)
    offset = [(p - s) // 2 if p > s else 0 for p, s in zip(patch, shape)]
    starts = slab_windows(padded.shape[1:], patch, axis, index + offset[axis])
    plane = np.zeros([s for a, s in enumerate(padded.shape[1:]) if a != axis], np.uint16)
    for first in range(0, len(starts), batch):
        chunk = starts[first:first + batch]
        windows = [padded[(slice(None), *(slice(s, s + p) for s, p in zip(st, patch)))]
                   for st in chunk]
        for st, classes in zip(chunk, predict(np.stack(windows))):
            cut = np.take(classes, index + offset[axis] - st[axis], axis=axis)
            where = tuple(slice(s, s + p) for a, (s, p) in enumerate(zip(st, patch)) if a != axis)
            plane[where] = cut
    inside = tuple(slice(o, o + s) for a, (o, s) in enumerate(zip(offset, shape)) if a != axis)
    return plane[inside]


class LivePreview:
    """When to preview during a run, and the preview itself."""

    def __init__(self, request: PreviewRequest, image: np.ndarray, patch: Sequence[int]):
        self.request, self.image, self.patch = request, image, tuple(int(p) for p in patch)
        self.wait = PREVIEW_SECONDS
        self.last = time.perf_counter()

    def due(self) -> bool:
        """Whether a preview is to be made now."""
        return self.request.current() is not None and time.perf_counter() - self.last >= self.wait

    def make(self, predict: Callable[[np.ndarray], np.ndarray], step: int) -> SlicePreview | None:
        """Segment the requested slice now (``None`` when none is asked for, or it is outside
        the volume)."""
        asked = self.request.current()
        if asked is None or not 0 <= asked[0] < 3:
            return None
        axis, index = asked
        if not 0 <= index < self.image.shape[axis + 1]:
            return None
        began = time.perf_counter()
        labels = predict_slice(predict, self.image, self.patch, axis, index)
        took = time.perf_counter() - began
        self.last = time.perf_counter()
        self.wait = max(PREVIEW_SECONDS, took / PREVIEW_SHARE)
        return SlicePreview(axis, index, labels, step)
