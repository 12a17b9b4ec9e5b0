"""A small live chart of a training run: the loss and the run's validation Dice per step."""

from __future__ import annotations

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPaintEvent, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor(160, 160, 160)
VALIDATION_COLOR = QColor(80, 200, 120)
MARGIN = 6


class TrainingCurves(QWidget):
    """Loss (grey, scaled to its own peak) and validation Dice (green, 0 to 1) against steps.

    Fed on the GUI thread with each progress item; :meth:`clear` starts a new run.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("medseg_training_curves")
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "grey: training loss (scaled to its peak); green: Dice on the painted voxels "
            "held out of training, the run's own estimate of its accuracy"
        )
        self.loss: list[tuple[int, float]] = []
        self.validation: list[tuple[int, float]] = []
        self.setVisible(False)

    def clear(self) -> None:
        """Forget the last run's curves."""
        self.loss.clear()
        self.validation.clear()
        self.setVisible(False)
        self.update()

    def add(self, step: int, loss: float, validation: float | None) -> None:
        """One progress item: its loss and the run's latest validation figure, if any."""
        for points, value in ((self.loss, loss), (self.validation, validation)):
            if value is None or value != value:  # none yet, or NaN
                continue
            if points and points[-1][0] == step:  # a note on the same step: the later figure
                points.pop()
            points.append((step, float(value)))
        self.setVisible(True)
        self.update()

    def _path(self, points: list[tuple[int, float]], top: float, last_step: int) -> QPainterPath:
        width, height = self.width() - 2 * MARGIN, self.height() - 2 * MARGIN
        path = QPainterPath()
        for i, (step, value) in enumerate(points):
            x = MARGIN + width * step / max(last_step, 1)
            y = MARGIN + height * (1 - min(value / top, 1.0))
            if i:
                path.lineTo(QPointF(x, y))
            else:
                path.moveTo(QPointF(x, y))
        return path

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        last = max([s for s, _ in self.loss] + [s for s, _ in self.validation] + [1])
        peak = max([v for _, v in self.loss] + [1e-6])
        for points, top, color in (
            (self.loss, peak, LOSS_COLOR), (self.validation, 1.0, VALIDATION_COLOR)
        ):
            if points:
                painter.setPen(QPen(color, 1.5))
                painter.drawPath(self._path(points, top, last))
        if self.validation:
            painter.setPen(VALIDATION_COLOR)
            text = f"validation Dice {self.validation[-1][1]:.3f}"
            painter.drawText(self.rect().adjusted(0, 0, -MARGIN, 0),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, text)
        painter.end()
