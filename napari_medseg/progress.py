"""Driving progress generators: run them to the end, relay them, or show a text progress bar.

Every progress item the core yields (:class:`~napari_medseg.training.TrainProgress`,
:class:`~napari_medseg.inference.TileProgress`, :class:`~napari_medseg.crossval.CrossValProgress`)
has a ``fraction`` (0..1) and a ``describe()`` that gives its one line of text: front ends
print that and never format progress themselves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator
from typing import Any, Protocol, TextIO, TypeVar

R = TypeVar("R")
T = TypeVar("T")
U = TypeVar("U")


class Progress(Protocol):
    """What every progress item offers a front end."""

    @property
    def fraction(self) -> float: ...

    def describe(self) -> str: ...


def relay(generator: Generator[T, None, R], wrap: Callable[[T], U]) -> Generator[U, None, R]:
    """Forward another generator's items, each turned by ``wrap``, and return its value.

    Closing the relay closes the inner generator too (a stopped run releases what it holds).
    """
    try:
        while True:
            try:
                item = next(generator)
            except StopIteration as done:
                value: R = done.value
                return value
            yield wrap(item)
    finally:
        generator.close()


def run_to_completion(
    generator: Generator[Any, None, R], on_item: Callable[[Any], None] | None = None
) -> R:
    """Exhaust a progress generator and return its return value.

    ``on_item`` is called with every yielded item.
    """
    while True:
        try:
            item = next(generator)
        except StopIteration as done:
            value: R = done.value
            return value
        if on_item is not None:
            on_item(item)


class ProgressBar:
    """A one-line text progress bar (redrawn in place on a terminal, sparse lines otherwise)."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_print = 0.0
        self._last_decile = -1

    def update(self, fraction: float, detail: str = "") -> None:
        """Show ``fraction`` (0..1) done, with a short detail text."""
        fraction = min(1.0, max(0.0, fraction))
        filled = int(round(self.width * fraction))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%} {detail}"
        )
        now = time.monotonic()
        if self.tty:
            if now - self._last_print > 0.1 or fraction >= 1.0:
                self.stream.write("\r" + line.ljust(100)[:120])
                self.stream.flush()
                self._last_print = now
        else:
            decile = int(fraction * 10)
            if decile != self._last_decile:
                self.stream.write(line + "\n")
                self.stream.flush()
                self._last_decile = decile

    def close(self) -> None:
        """End the bar's line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def show(bar: ProgressBar) -> Callable[[Progress], None]:
    """A callback that shows each progress item on ``bar``."""
    return lambda item: bar.update(item.fraction, item.describe())


def drive(generator: Generator[Any, None, R], bar: ProgressBar) -> R:
    """Run a progress generator to the end, showing each item on ``bar``."""
    try:
        return run_to_completion(generator, show(bar))
    finally:
        bar.close()
