"""The structures of a label map: label value, name and colour (see :mod:`.segments`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from ..colors import BACKGROUND_GREY, RGBA, TRANSPARENT, UNKNOWN_CLASS, structure_color

Kind = Literal["annotation", "segmentation"]
RGB = tuple[float, float, float]

BACKGROUND = "background"
MAX_VALUE = 65535
_MAX_NAME = 256


@dataclass(frozen=True)
class Segment:
    """One structure of a label map.

    Parameters
    ----------
    value : int
        Its label value (``>= 1``).
    name : str
        Its name.
    color : tuple of float
        Red, green, blue in ``[0, 1]``.
    """

    value: int
    name: str
    color: RGB


@dataclass(frozen=True)
class Segments:
    """The structures of a label map and what the map is.

    Parameters
    ----------
    kind : {"annotation", "segmentation"}
        A sparse annotation (``0`` unknown, ``1`` background, ``k + 1`` structure ``k``)
        or a segmentation (``0`` background, ``k`` structure ``k``).
    items : tuple of Segment
        One per label value, in increasing value order.
    """

    kind: Kind
    items: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if self.kind not in ("annotation", "segmentation"):
            raise ValueError(f"kind must be annotation or segmentation, not {self.kind!r}")
        values = [s.value for s in self.items]
        if values != sorted(set(values)) or any(not 1 <= v <= MAX_VALUE for v in values):
            raise ValueError(f"segment values must be distinct, 1 to {MAX_VALUE}: {values}")

    @classmethod
    def of_structures(
        cls,
        class_names: Sequence[str],
        kind: Kind = "segmentation",
        colors: Mapping[int, Sequence[float]] | None = None,
    ) -> Segments:
        """The segments of ``class_names`` (item ``k - 1`` names structure ``k``).

        Parameters
        ----------
        class_names : sequence of str
            Structure names, background excluded.
        kind : {"annotation", "segmentation"}
            What the label map is; an annotation gets a ``background`` segment (value 1).
        colors : mapping of int to RGB(A), optional
            Colour of a label value (as napari shows it); else the widgets' colours.

        Returns
        -------
        Segments
        """
        offset = 1 if kind == "annotation" else 0
        shown = dict(colors or {})
        entries = [(1, BACKGROUND, BACKGROUND_GREY)] if kind == "annotation" else []
        entries += [(k + offset, name, structure_color(k)) for k, name in enumerate(class_names, 1)]
        items = tuple(
            Segment(value, clean_name(name, value - offset), rgb(shown.get(value, default)))
            for value, name, default in entries
        )
        return cls(kind, items)

    @property
    def offset(self) -> int:
        """Label value minus structure number: 1 for an annotation, 0 for a segmentation."""
        return 1 if self.kind == "annotation" else 0

    @property
    def class_names(self) -> list[str]:
        """Structure names, background excluded (``"structure k"`` where a value has none)."""
        names = {s.value: s.name for s in self.items}
        top = max(names, default=0) - self.offset
        return [names.get(k + self.offset, f"structure {k}") for k in range(1, top + 1)]

    def color_dict(self) -> dict[int | None, RGBA]:
        """napari label colours: the segments' colours; ``0`` transparent, others magenta."""
        colors: dict[int | None, RGBA] = {None: UNKNOWN_CLASS, 0: TRANSPARENT}
        colors.update({s.value: (*s.color, 1.0) for s in self.items})
        return colors

    def names_by_value(self) -> dict[int, str]:
        """Name of every label value, ``0`` included (not annotated, or background)."""
        zero = "not annotated" if self.kind == "annotation" else BACKGROUND
        return {0: zero, **{s.value: s.name for s in self.items}}

    def matches(self, other: Segments, tolerance: float = 1e-5) -> bool:
        """Same kind, values and names, and colours within ``tolerance``."""
        if self.kind != other.kind or len(self.items) != len(other.items):
            return False
        return all(
            (a.value, a.name) == (b.value, b.name)
            and all(abs(x - y) <= tolerance for x, y in zip(a.color, b.color))
            for a, b in zip(self.items, other.items)
        )


def clean_name(name: object, k: int = 0) -> str:
    """A name on one line, without ``"`` or ``\\``; ``"structure k"`` when empty."""
    text = "".join(" " if (ord(c) < 32 or ord(c) == 127) else c for c in str(name))
    text = " ".join(text.replace('"', "'").replace("\\", "/").split())[:_MAX_NAME]
    return text or f"structure {k}"


def rgb(color: Sequence[float]) -> RGB:
    values = [float(c) for c in list(color)[:3]]
    if len(values) != 3 or not all(math.isfinite(c) for c in values):
        raise ValueError(f"not an RGB colour: {color!r}")
    r, g, b = (min(1.0, max(0.0, c)) for c in values)
    return r, g, b


def infer_kind(names: Mapping[int, str]) -> Kind:
    """A label map whose value 1 is named ``background`` is a sparse annotation."""
    return "annotation" if names.get(1, "").strip().lower() == BACKGROUND else "segmentation"


def segments_from(
    found: Mapping[int, tuple[str, RGB | None]], kind: str | None
) -> Segments | None:
    """Segments of ``{value: (name, colour or None)}``; the kind inferred when not given."""
    found = {v: item for v, item in found.items() if 1 <= v <= MAX_VALUE}
    if not found:
        return None
    resolved = cast(Kind, kind) if kind else infer_kind({v: n for v, (n, _) in found.items()})
    offset = 1 if resolved == "annotation" else 0
    items = []
    for value in sorted(found):
        name, color = found[value]
        k = value - offset
        default = BACKGROUND_GREY if k == 0 else structure_color(max(k, 1))
        items.append(Segment(value, clean_name(name, k), color or rgb(default)))
    return Segments(resolved, tuple(items))
