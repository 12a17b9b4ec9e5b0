"""Small Qt building blocks shared by the widgets: status line, progress row, sections."""

from __future__ import annotations

import time
from collections.abc import Sequence

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QFrame,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

ERROR_STYLE = "color: #ff6b6b; font-weight: bold;"
RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
INFO_STYLE = ""
PROGRESS_STEPS = 1000
# A shown change anywhere in the window recomposes all of it (napari's canvas is an OpenGL
# widget): progress is drawn at most this often, the latest item winning.
PROGRESS_INTERVAL_S = 0.25
DESCRIPTION_LINES = 2


class StatusLabel(QLabel):
    """A word-wrapped status line: neutral for information, red for errors."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.is_error = False
        self.setObjectName("medseg_status")

    def info(self, message: str) -> None:
        """Show an information message."""
        self.is_error = False
        self.setStyleSheet(INFO_STYLE)
        self.setText(message)

    def error(self, message: str) -> None:
        """Show an error message (in red)."""
        self.is_error = True
        self.setStyleSheet(ERROR_STYLE)
        self.setText(message)

    def clear(self) -> None:
        """Remove the message."""
        self.is_error = False
        self.setStyleSheet(INFO_STYLE)
        self.setText("")


class ProgressRow(QWidget):
    """A progress bar with a description of up to two lines under it.

    Updates are drawn at most every :data:`PROGRESS_INTERVAL_S` (the latest wins) and never
    synchronously, and the description keeps its height, so a fast job neither relayouts
    nor recomposes the window with each item.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, PROGRESS_STEPS)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        lines = self.label.fontMetrics().lineSpacing() * DESCRIPTION_LINES
        self.label.setMinimumHeight(lines + 2 * self.label.margin())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.bar)
        layout.addWidget(self.label)
        self._pending: tuple[float | None, str] | None = None
        self._shown_at = 0.0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._draw_pending)

    def start(self, text: str = "starting…") -> None:
        """Show an indeterminate ("busy") bar until the first update."""
        self._pending = None
        self._timer.stop()
        self.bar.setRange(0, 0)
        self.label.setText(text)

    def update(self, fraction: float | None, text: str = "") -> None:  # type: ignore[override]
        """Show progress ``fraction`` (0..1, None for unknown) and ``text`` (soon: at most
        every :data:`PROGRESS_INTERVAL_S`, the latest call winning)."""
        self._pending = (fraction, text)
        wait = PROGRESS_INTERVAL_S - (time.perf_counter() - self._shown_at)
        if wait <= 0:
            self._draw_pending()
        elif not self._timer.isActive():
            self._timer.start(max(1, round(wait * 1000)))

    def _draw_pending(self) -> None:
        if self._pending is None:
            return
        fraction, text = self._pending
        self._pending = None
        self._shown_at = time.perf_counter()
        if fraction is None:
            if self.bar.maximum() != 0:
                self.bar.setRange(0, 0)
        else:
            value = round(min(max(float(fraction), 0.0), 1.0) * PROGRESS_STEPS)
            if self.bar.maximum() != PROGRESS_STEPS:
                self.bar.setRange(0, PROGRESS_STEPS)
            if value != self.bar.value():
                # QProgressBar.setValue repaints at once when its text changes; that would
                # recompose the whole window now, on top of the next scheduled redraw
                self.bar.setUpdatesEnabled(False)
                self.bar.setValue(value)
                self.bar.setUpdatesEnabled(True)
        if text != self.label.text():
            self.label.setText(text)

    def finish(self, text: str = "", complete: bool = True) -> None:
        """Leave the bar full (``complete``) or where it was, and show ``text``."""
        self._pending = None
        self._timer.stop()
        if self.bar.maximum() == 0:
            self.bar.setRange(0, PROGRESS_STEPS)
            self.bar.setValue(PROGRESS_STEPS if complete else 0)
        elif complete:
            self.bar.setValue(PROGRESS_STEPS)
        self.label.setText(text)

    @property
    def fraction(self) -> float:
        """Current value of the bar, 0..1 (0 while busy)."""
        if self.bar.maximum() == 0:
            return 0.0
        return self.bar.value() / self.bar.maximum()


def section_title(text: str) -> QLabel:
    """A bold label used as a section title."""
    label = QLabel(text)
    font = label.font()
    font.setBold(True)
    label.setFont(font)
    return label


def separator() -> QFrame:
    """A thin horizontal line."""
    line = QFrame()
    line.setFrameShape(QFrame.Shape.HLine)
    line.setFrameShadow(QFrame.Shadow.Sunken)
    return line


def form_layout() -> QFormLayout:
    """A form layout whose fields grow with the dock and whose rows wrap when narrow."""
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.DontWrapRows)
    form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return form


def button(text: str, tooltip: str = "") -> QPushButton:
    """A push button with a tooltip."""
    b = QPushButton(text)
    if tooltip:
        b.setToolTip(tooltip)
    return b


def result_table(columns: Sequence[str] = (), min_height: int = 90) -> QTableWidget:
    """A read-only table of results: whole rows selected, columns sized to their content."""
    table = QTableWidget(0, len(columns))
    if columns:
        table.setHorizontalHeaderLabels(list(columns))
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    table.setMinimumHeight(min_height)
    return table


def fill_table(
    table: QTableWidget, rows: Sequence[Sequence[str]], bold_columns: int | None = None
) -> None:
    """Put ``rows`` of text into ``table``: numbers (every column but the first) right-aligned,
    the ``"mean"`` row in bold (its first ``bold_columns`` cells; None: all of them)."""
    table.setRowCount(len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            item = QTableWidgetItem(text)
            if c:
                item.setTextAlignment(int(RIGHT))
            if row[0] == "mean" and (bold_columns is None or c < bold_columns):
                font = item.font()
                font.setBold(True)
                item.setFont(font)
            table.setItem(r, c, item)
