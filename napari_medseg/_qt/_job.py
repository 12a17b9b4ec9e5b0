"""The run / progress / stop / error cycle shared by the Train, Predict, Metrics and
cross-validation widgets.

A :class:`JobControls` owns a job's status line, its optional progress row and Stop button,
and the worker of the run in progress. The widget lays those out (:meth:`button_row`) and
calls :meth:`JobControls.start` with a factory of the core generator: the factory is called
in a napari ``thread_worker`` (:mod:`._worker`) and must not touch Qt; every callback runs
on the GUI thread. While a job runs its run button and the widget's inputs are disabled and
Stop is enabled; whatever the end (result, error, window closed), they are enabled again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QPushButton, QWidget

from ._common import ProgressRow, StatusLabel
from ._worker import StopSwitch, report_error, run_function, run_generator

Callback = Callable[..., Any] | None


class JobControls:
    """Status line, progress row, Stop button and worker of one kind of job.

    Parameters
    ----------
    what : str
        The job in words, for thread names and messages: ``"training"`` gives the thread
        ``"MedSeg training"``, ``"training failed: …"`` and ``"training cancelled"``.
    run_button : QPushButton
        Starts the job; disabled while it runs.
    stop_button : QPushButton, optional
        Ends the job early; enabled only while it runs.
    progress : bool
        Whether the job shows a progress row (:attr:`progress`).
    controls : sequence of QWidget
        The widget's inputs, disabled while the job runs.
    stopping : str
        Status text once Stop was pressed.
    on_running : callable, optional
        ``on_running(running)``, after the controls were enabled or disabled (for an
        input whose state depends on more than the job).
    status : StatusLabel, optional
        The status line (default: a new one, :attr:`status`).
    """

    def __init__(
        self,
        what: str,
        run_button: QPushButton,
        *,
        stop_button: QPushButton | None = None,
        progress: bool = True,
        controls: Sequence[QWidget] = (),
        stopping: str = "stopping…",
        on_running: Callable[[bool], None] | None = None,
        status: StatusLabel | None = None,
    ) -> None:
        self.what = what
        self.run_button = run_button
        self.stop_button = stop_button
        self.status = status if status is not None else StatusLabel()
        self.progress = ProgressRow() if progress else None
        self.controls = list(controls)
        self.worker: Any = None
        self._stopping = stopping
        self._on_running = on_running
        self._stop = StopSwitch(stop_button) if stop_button is not None else None
        self._hooks: dict[str, Callback] = {}
        if stop_button is not None:
            stop_button.setEnabled(False)

    @property
    def is_running(self) -> bool:
        """True while a job is in progress."""
        return self.worker is not None

    def button_row(self, *extra: QWidget) -> QHBoxLayout:
        """The run button (wide), the Stop button and ``extra`` buttons, side by side."""
        row = QHBoxLayout()
        row.addWidget(self.run_button, 2)
        for widget in (self.stop_button, *extra):
            if widget is not None:
                row.addWidget(widget, 1)
        return row

    def set_running(self, running: bool) -> None:
        """Enable/disable the run and Stop buttons and the inputs for a (not) running job."""
        self.run_button.setEnabled(not running)
        if self.stop_button is not None:
            self.stop_button.setEnabled(running)
        for widget in self.controls:
            widget.setEnabled(not running)
        if self._on_running is not None:
            self._on_running(running)

    def start(
        self,
        factory: Callable[[threading.Event], Generator[Any, Any, Any]],
        *,
        message: str,
        busy: str = "preparing…",
        on_yield: Callback = None,
        on_return: Callback = None,
        on_error: Callback = None,
        on_abort: Callback = None,
        on_finish: Callback = None,
    ) -> Any:
        """Run the generator ``factory(stop)`` in a worker thread; returns the worker.

        ``factory`` is called in the worker thread with the run's stop event. Each yielded
        item goes to ``on_yield`` (default: :meth:`show_progress`), the return value to
        ``on_return``. ``on_error``, ``on_abort`` and ``on_finish`` run before the shared
        handling of an error, of a closed window and of the end of the run.
        """
        stop = self._stop.arm() if self._stop is not None else threading.Event()
        self._begin(message, on_error, on_abort, on_finish)
        if self.progress is not None:
            self.progress.setVisible(True)
            self.progress.start(busy)
        self.worker = run_generator(
            lambda: factory(stop),
            name=f"MedSeg {self.what}",
            on_yield=on_yield or self.show_progress,
            on_return=on_return,
            on_error=self._failed,
            on_finish=self._finished,
            on_abort=self._aborted,
        )
        return self.worker

    def call(
        self,
        func: Callable[[], Any],
        *,
        message: str,
        on_return: Callback = None,
        on_error: Callback = None,
        on_finish: Callback = None,
    ) -> Any:
        """Run ``func()`` (no progress, no Stop) in a worker thread; returns the worker."""
        self._begin(message, on_error, None, on_finish)
        self.worker = run_function(
            func,
            name=f"MedSeg {self.what}",
            on_return=on_return,
            on_error=self._failed,
            on_finish=self._finished,
        )
        return self.worker

    def show_progress(self, item: Any) -> None:
        """Show a core progress item (``fraction`` and ``describe()``) in the progress row."""
        if self.progress is not None:
            self.progress.update(item.fraction, item.describe())

    def stop(self) -> None:
        """Ask the running job to end after its current step (nothing when none runs)."""
        if self._stop is not None:
            self._stop.request(self.status, self._stopping)

    def _begin(self, message: str, on_error: Callback, on_abort: Callback,
               on_finish: Callback) -> None:
        self._hooks = {"error": on_error, "abort": on_abort, "finish": on_finish}
        self.set_running(True)
        self.status.info(message)

    def _hook(self, name: str, *args: Any) -> None:
        hook = self._hooks.get(name)
        if hook is not None:
            hook(*args)

    def _failed(self, exc: BaseException) -> None:
        self._hook("error", exc)
        if self.progress is not None:
            self.progress.finish("failed", complete=False)
        report_error(exc, self.status, prefix=f"{self.what} failed: ")

    def _aborted(self) -> None:
        self._hook("abort")
        if self.progress is not None:
            self.progress.finish("cancelled", complete=False)
        self.status.info(f"{self.what} cancelled")

    def _finished(self) -> None:
        self.worker = None
        if self._stop is not None:
            self._stop.disarm()
        self.set_running(False)
        self._hook("finish")


class RunsJob:
    """Mixin of the widgets that run a job: ``worker`` and ``is_running`` of ``self.job``."""

    job: JobControls

    @property
    def worker(self) -> Any:
        """The worker of the job in progress, or None."""
        return self.job.worker

    @property
    def is_running(self) -> bool:
        """True while the job runs."""
        return self.job.is_running
