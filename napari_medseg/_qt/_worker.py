"""Run core computations off the GUI thread and report errors the same way everywhere.

Everything heavy (training, inference, metrics with surface distances, reading/writing a
model) runs in a napari ``thread_worker`` created here. Callbacks are connected to the
worker's Qt signals, so they always run on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from napari.qt.threading import FunctionWorker, GeneratorWorker, create_worker
from napari.utils.notifications import show_error

from ..errors import MedsegError, MedsegInputError

logger = logging.getLogger(__name__)

Callback = Callable[..., Any] | None


class WorkerFailure(Exception):
    """Wraps a ``RuntimeError`` raised in a worker thread.

    superqt's generator worker takes a ``RuntimeError`` escaping the generator for a sign
    that the worker object was deleted and silently drops it (no ``errored``, no
    ``finished``). Torch reports most failures as ``RuntimeError``, so they are re-raised
    wrapped in this class and reach the widget like any other error.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def error_message(exc: BaseException) -> str:
    """One line for the user: the message of a user mistake, the type and message otherwise."""
    if isinstance(exc, WorkerFailure):
        exc = exc.original
    if isinstance(exc, MedsegError):
        return str(exc) or type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def report_error(exc: BaseException, status: Any = None, *, prefix: str = "") -> str:
    """Show ``exc`` in ``status`` (a :class:`~._common.StatusLabel`) and as a napari notification.

    User mistakes (:class:`MedsegInputError`) are shown as their message only; unexpected
    errors are also logged with their traceback (console), never shown as a dialog.

    Returns
    -------
    str
        The message shown.
    """
    message = prefix + error_message(exc)
    original = exc.original if isinstance(exc, WorkerFailure) else exc
    if not isinstance(original, MedsegInputError):
        logger.error("napari-medseg: %s", message, exc_info=original)
    if status is not None:
        status.error(message)
    show_error(message)
    return message


def _connect(
    worker: FunctionWorker | GeneratorWorker,
    on_yield: Callback,
    on_return: Callback,
    on_error: Callback,
    on_finish: Callback,
    on_abort: Callback,
) -> None:
    if on_yield is not None and isinstance(worker, GeneratorWorker):
        worker.yielded.connect(on_yield)
    if on_return is not None:
        worker.returned.connect(on_return)
    if on_error is not None:
        worker.errored.connect(on_error)
    if on_finish is not None:
        worker.finished.connect(on_finish)
    if on_abort is not None and isinstance(worker, GeneratorWorker):
        worker.aborted.connect(on_abort)


def run_generator(
    factory: Callable[[], Generator[Any, Any, Any]],
    *,
    name: str,
    on_yield: Callback = None,
    on_return: Callback = None,
    on_error: Callback = None,
    on_finish: Callback = None,
    on_abort: Callback = None,
) -> GeneratorWorker:
    """Drive the generator made by ``factory()`` in a worker thread.

    Parameters
    ----------
    factory : callable
        Called **in the worker thread**; returns the core generator (e.g.
        ``lambda: train(image, annotation, config, stop=stop)``).
    name : str
        What napari shows if the window is closed while it runs.
    on_yield, on_return, on_error, on_finish, on_abort : callable, optional
        Connected to ``yielded`` (each yielded value), ``returned`` (the generator's
        return value), ``errored`` (the exception), ``finished`` (always, last) and
        ``aborted`` (the window was closed / ``worker.quit()``: nothing is returned).

    Returns
    -------
    GeneratorWorker
        The started worker.
    """

    def guarded() -> Generator[Any, Any, Any]:
        try:
            result = yield from factory()
        except RuntimeError as exc:
            raise WorkerFailure(exc) from exc
        return result

    guarded.__qualname__ = guarded.__name__ = name
    worker = create_worker(guarded, _start_thread=False, _ignore_errors=True)
    _connect(worker, on_yield, on_return, on_error, on_finish, on_abort)
    worker.start()
    return worker


def run_function(
    func: Callable[[], Any],
    *,
    name: str,
    on_return: Callback = None,
    on_error: Callback = None,
    on_finish: Callback = None,
) -> FunctionWorker:
    """Call ``func()`` in a worker thread; see :func:`run_generator` for the callbacks."""

    def guarded() -> Any:
        try:
            return func()
        except RuntimeError as exc:
            raise WorkerFailure(exc) from exc

    guarded.__qualname__ = guarded.__name__ = name
    worker = create_worker(guarded, _start_thread=False, _ignore_errors=True)
    _connect(worker, None, on_return, on_error, on_finish, None)
    worker.start()
    return worker


class StopSwitch:
    """The stop event of the run in progress and the button that sets it (GUI thread only).

    The core generators take a :class:`threading.Event`; setting it makes them end after the
    current step or tile and return what they have.
    """

    def __init__(self, stop_button: Any) -> None:
        self.button = stop_button
        self.event: threading.Event | None = None

    def arm(self) -> threading.Event:
        """A fresh event for a new run."""
        self.event = threading.Event()
        return self.event

    def request(self, status: Any, message: str) -> None:
        """Set the event (if a run is going), disable the button and say so in ``status``."""
        if self.event is not None:
            self.event.set()
            self.button.setEnabled(False)
            status.info(message)

    def disarm(self) -> None:
        """Forget the event once the run has finished."""
        self.event = None
