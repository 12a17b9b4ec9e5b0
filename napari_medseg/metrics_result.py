"""Results of :func:`napari_medseg.metrics.evaluate`: per-structure metrics, their means,
and their formatting as a dictionary, a Markdown table or an aligned plain-text table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClassMetrics", "EvaluationResult", "MeanMetrics"]


@dataclass
class ClassMetrics:
    """Metrics of one structure.

    ``hd95_mm`` and ``assd_mm`` are ``None`` when surface distances were not computed. When
    exactly one of the segmentation and the expert mask lacks the structure (:attr:`empty`),
    they hold the image diagonal by convention and tables show ``empty`` instead.
    """

    dice: float
    jaccard: float
    sa: float
    hd95_mm: float | None
    assd_mm: float | None
    n_reference: int
    n_predicted: int

    @property
    def empty(self) -> str | None:
        """Which side lacks the structure, when only one does: ``"segmentation"`` or
        ``"expert mask"`` (surface distances are then undefined)."""
        if self.n_predicted == 0 and self.n_reference > 0:
            return "segmentation"
        if self.n_reference == 0 and self.n_predicted > 0:
            return "expert mask"
        return None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """Plain, JSON-serialisable dictionary (``empty``: see :attr:`empty`)."""
        return {
            "dice": float(self.dice),
            "jaccard": float(self.jaccard),
            "sa": float(self.sa),
            "hd95_mm": None if self.hd95_mm is None else float(self.hd95_mm),
            "assd_mm": None if self.assd_mm is None else float(self.assd_mm),
            "n_reference": int(self.n_reference),
            "n_predicted": int(self.n_predicted),
            "empty": self.empty,
        }


@dataclass
class MeanMetrics:
    """Unweighted means over the structures (``1, 1, 100`` when there is none)."""

    dice: float
    jaccard: float
    sa: float

    def to_dict(self) -> dict[str, float]:
        """Plain, JSON-serialisable dictionary."""
        return {"dice": float(self.dice), "jaccard": float(self.jaccard), "sa": float(self.sa)}


@dataclass
class EvaluationResult:
    """Metrics of every structure of a segmentation against a reference.

    Attributes
    ----------
    classes : dict of int to ClassMetrics
        One entry per structure label.
    mean : MeanMetrics
        Means of Dice, Jaccard and SA over the structures.
    class_names : dict of int to str
        Optional display names per label.
    """

    classes: dict[int, ClassMetrics]
    mean: MeanMetrics
    class_names: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{"classes": {"1": {...}, ...}, "mean": {"dice", "jaccard", "sa"}}``, JSON-ready."""
        return {
            "classes": {str(k): m.to_dict() for k, m in sorted(self.classes.items())},
            "mean": self.mean.to_dict(),
        }

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = [
            "class",
            "name",
            "Dice",
            "Jaccard",
            "SA %",
            "HD95 mm",
            "ASSD mm",
            "n_ref",
            "n_pred",
        ]
        rows = []
        for k, m in sorted(self.classes.items()):
            rows.append(
                [
                    str(k),
                    self.class_names.get(k, f"structure {k}"),
                    f"{m.dice:.4f}",
                    f"{m.jaccard:.4f}",
                    f"{m.sa:.2f}",
                    "empty" if m.empty else _fmt_mm(m.hd95_mm),
                    "empty" if m.empty else _fmt_mm(m.assd_mm),
                    str(m.n_reference),
                    str(m.n_predicted),
                ]
            )
        mean = self.mean
        rows.append(
            [
                "mean",
                "",
                f"{mean.dice:.4f}",
                f"{mean.jaccard:.4f}",
                f"{mean.sa:.2f}",
                "",
                "",
                "",
                "",
            ]
        )
        return header, rows

    def to_markdown(self) -> str:
        """A Markdown table: one row per structure and a final row of means."""
        header, rows = self._rows()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def format_table(self) -> str:
        """A plain-text table with aligned columns, for terminals and log files."""
        header, rows = self._rows()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
        lines += [fmt.format(*row) for row in rows]
        return "\n".join(line.rstrip() for line in lines)


def _fmt_mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
