"""Forms built from the core's typed configuration dataclasses.

One editor per dataclass field, chosen from the field's type:

==========================  ==============================================
``Literal["a", "b"]``       combo box
``bool``                    check box
``int`` / ``float``         spin box (floats accept ``1e-3`` notation)
``int | None`` ...          check box + spin box; unchecked means ``None``
``str``                     line edit
anything else               magicgui ``create_widget`` (tuples, paths ...)
==========================  ==============================================

Everything else comes from the field's metadata (:func:`napari_medseg.options.option`):
the tooltip (``help``), the spin boxes' bounds and step (``min``, ``max``, ``step``) and
suffix (``unit``), what an unchecked optional field means (``none_text``) and the value it
shows meanwhile (``suggest``), and the row's label (``label``, default from the name).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, get_args, get_origin

from qtpy.QtCore import Signal
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..options import default_of, unwrap_optional
from ._common import form_layout

logger = logging.getLogger(__name__)

INT_MAX = 2**31 - 1
FLOAT_MAX = 1e12


def field_label(name: str) -> str:
    """``"time_budget"`` -> ``"Time budget"``."""
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


class _FloatSpinBox(QDoubleSpinBox):
    """A double spin box that shows and accepts compact/scientific notation (``1e-05``)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setDecimals(12)

    def textFromValue(self, value: float) -> str:  # noqa: N802 (Qt override)
        return f"{value:.6g}"

    def valueFromText(self, text: str) -> float:  # noqa: N802 (Qt override)
        try:
            return float(text.strip().replace(self.suffix(), "") or 0.0)
        except ValueError:
            return self.value()

    def validate(self, text: str, pos: int) -> tuple[QValidator.State, str, int]:
        body = text.strip()
        if self.suffix():
            body = body.replace(self.suffix().strip(), "").strip()
        if body in ("", "-", "+", ".") or re.fullmatch(r"[-+]?\d*\.?\d*[eE][-+]?", body):
            return QValidator.State.Intermediate, text, pos
        try:
            float(body)
        except ValueError:
            return QValidator.State.Invalid, text, pos
        return QValidator.State.Acceptable, text, pos


class FieldEditor:
    """An editor of one value: a Qt widget with ``get()``, ``set(value)`` and ``changed``."""

    def __init__(
        self,
        widget: QWidget,
        get: Callable[[], Any],
        set_: Callable[[Any], None],
        connect: Callable[[Callable[..., Any]], None],
    ) -> None:
        self.widget = widget
        self.get = get
        self.set = set_
        self.connect = connect


def _number_editor(tp: type, default: Any, meta: dict[str, Any]) -> FieldEditor:
    if tp is int:
        spin: QSpinBox | QDoubleSpinBox = QSpinBox()
        low = meta.get("min", 0 if not isinstance(default, int) or default >= 0 else -INT_MAX)
        spin.setRange(int(low), int(meta.get("max", INT_MAX)))
        spin.setSingleStep(int(meta.get("step", 1)))
    else:
        spin = _FloatSpinBox()
        low = meta.get("min", 0.0 if not isinstance(default, float) or default >= 0 else -FLOAT_MAX)
        spin.setRange(float(low), float(meta.get("max", FLOAT_MAX)))
        if "step" in meta:
            step = float(meta["step"])
        elif isinstance(default, int | float) and default not in (0, None):
            step = 10 ** math.floor(math.log10(abs(float(default))))
        else:
            step = 0.1
        spin.setSingleStep(step)
    if meta.get("unit"):
        spin.setSuffix(f" {meta['unit']}")
    spin.setKeyboardTracking(False)

    def set_(value: Any) -> None:
        spin.setValue(tp(value))

    return FieldEditor(
        spin, lambda: tp(spin.value()), set_, lambda cb: spin.valueChanged.connect(cb)
    )


def _optional_editor(inner: FieldEditor, default: Any, none_text: str) -> FieldEditor:
    box = QWidget()
    check = QCheckBox()
    check.setToolTip(f"Unchecked: {none_text}")
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(check)
    layout.addWidget(inner.widget, 1)
    check.toggled.connect(inner.widget.setEnabled)

    def get() -> Any:
        return inner.get() if check.isChecked() else None

    def set_(value: Any) -> None:
        check.setChecked(value is not None)
        inner.widget.setEnabled(value is not None)
        if value is not None:
            inner.set(value)

    def connect(cb: Callable[..., Any]) -> None:
        check.toggled.connect(cb)
        inner.connect(cb)

    set_(default)
    return FieldEditor(box, get, set_, connect)


def _fallback_editor(tp: Any, default: Any) -> FieldEditor | None:
    try:
        from magicgui.widgets import create_widget

        widget = create_widget(value=default, annotation=tp)
    except Exception:  # noqa: BLE001 - any type magicgui cannot edit is simply not shown
        logger.debug("no editor for %r", tp, exc_info=True)
        return None

    def set_(value: Any) -> None:
        widget.value = value

    return FieldEditor(widget.native, lambda: widget.value, set_, widget.changed.connect)


def _tuple_editor(tp: Any, default: Any, meta: dict[str, Any]) -> FieldEditor | None:
    args = get_args(tp)
    if not args or Ellipsis in args or any(a not in (int, float) for a in args):
        return None
    values = list(default) if default is not None else [None] * len(args)
    parts = [_number_editor(a, v, meta) for a, v in zip(args, values)]
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(2)
    for part, value in zip(parts, values):
        if value is not None:
            part.set(value)
        layout.addWidget(part.widget, 1)

    def set_(value: Any) -> None:
        for part, v in zip(parts, value):
            part.set(v)

    def connect(cb: Callable[..., Any]) -> None:
        for part in parts:
            part.connect(cb)

    return FieldEditor(box, lambda: tuple(p.get() for p in parts), set_, connect)


def _plain_editor(tp: Any, default: Any, meta: dict[str, Any]) -> FieldEditor | None:
    if get_origin(tp) is Literal:
        choices = list(get_args(tp))
        combo = QComboBox()
        for choice in choices:
            combo.addItem(str(choice))
        if default in choices:
            combo.setCurrentIndex(choices.index(default))

        def set_choice(value: Any) -> None:
            if value not in choices:
                raise ValueError(f"{value!r} is not one of {choices}")
            combo.setCurrentIndex(choices.index(value))

        return FieldEditor(
            combo,
            lambda: choices[combo.currentIndex()],
            set_choice,
            lambda cb: combo.currentIndexChanged.connect(cb),
        )
    if tp is bool:
        check = QCheckBox()
        check.setChecked(bool(default))
        return FieldEditor(check, check.isChecked, lambda v: check.setChecked(bool(v)),
                           lambda cb: check.toggled.connect(cb))
    if tp in (int, float):
        editor = _number_editor(tp, default, meta)
        if default is not None:
            editor.set(default)
        return editor
    if tp is str:
        line = QLineEdit(str(default or ""))
        return FieldEditor(line, line.text, lambda v: line.setText(str(v)),
                           lambda cb: line.editingFinished.connect(cb))
    if get_origin(tp) is tuple:
        editor = _tuple_editor(tp, default, meta)
        if editor is not None:
            return editor
    return _fallback_editor(tp, default)


def make_editor(tp: Any, default: Any, meta: dict[str, Any] | None = None) -> FieldEditor | None:
    """An editor for a value of type ``tp``, or None when no editor fits.

    For ``X | None`` the editor of ``X`` gets a check box; while unchecked the value is
    ``None`` and the editor shows ``meta["suggest"]`` (greyed out).
    """
    meta = dict(meta or {})
    inner_tp, optional = unwrap_optional(tp)
    if not optional:
        return _plain_editor(tp, default, meta)
    shown = default if default is not None else meta.get("suggest")
    inner = _plain_editor(inner_tp, shown, meta)
    if inner is None:
        return None
    return _optional_editor(inner, default, meta.get("none_text", "none"))


class DataclassForm(QWidget):
    """Editors for some fields of a dataclass, in a form layout.

    Parameters
    ----------
    cls : dataclass type
        The configuration class, e.g. ``TrainConfig``.
    fields : sequence of str, optional
        Names of the fields to show, in order (default: all init fields).
    exclude : iterable of str
        Fields never shown.
    """

    changed = Signal()

    def __init__(
        self,
        cls: type,
        *,
        fields: Sequence[str] | None = None,
        exclude: Iterable[str] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.cls = cls
        hints = typing.get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
        names = list(fields) if fields is not None else list(by_name)
        skip = set(exclude)
        self.editors: dict[str, FieldEditor] = {}
        self.form = form_layout()
        self.form.setContentsMargins(0, 0, 0, 0)
        for name in names:
            if name in skip or name not in by_name:
                continue
            field = by_name[name]
            meta = dict(field.metadata)
            editor = make_editor(hints.get(name, Any), default_of(field), meta)
            if editor is None:
                continue
            tip = str(meta.get("help", ""))
            if tip:
                editor.widget.setToolTip(tip)
            editor.widget.setObjectName(f"medseg_field_{name}")
            editor.connect(lambda *_: self.changed.emit())
            self.editors[name] = editor
            self.form.addRow(meta.get("label", field_label(name)), editor.widget)
        self.setLayout(self.form)

    def values(self) -> dict[str, Any]:
        """Current values of the shown fields."""
        return {name: editor.get() for name, editor in self.editors.items()}

    def set_values(self, **values: Any) -> None:
        """Set fields by name; unknown names raise ``KeyError``."""
        for name, value in values.items():
            self.editors[name].set(value)


class ConfigForm(QWidget):
    """A dataclass form with its main fields visible and the rest under "Advanced".

    Parameters
    ----------
    cls : dataclass type
        The configuration class.
    basic : sequence of str
        Fields shown at the top; every other init field goes under a collapsible
        "Advanced" section (omitted when empty).
    exclude : iterable of str
        Fields never shown.
    """

    changed = Signal()

    def __init__(
        self,
        cls: type,
        basic: Sequence[str] | None = None,
        *,
        exclude: Iterable[str] = (),
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.cls = cls
        skip = set(exclude)
        all_names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]
        basic_names = [n for n in (basic if basic is not None else all_names) if n in all_names]
        advanced_names = [n for n in all_names if n not in basic_names]
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.basic = DataclassForm(cls, fields=basic_names)
        layout.addWidget(self.basic)
        self.advanced: DataclassForm | None = None
        self.collapsible: QWidget | None = None
        if advanced_names:
            from superqt import QCollapsible

            self.advanced = DataclassForm(cls, fields=advanced_names)
            if self.advanced.editors:
                collapsible = QCollapsible("Advanced", expandedIcon="▼", collapsedIcon="▶")
                collapsible.addWidget(self.advanced)
                collapsible.collapse(animate=False)
                layout.addWidget(collapsible)
                self.collapsible = collapsible
                self.advanced.changed.connect(self.changed.emit)
        self.basic.changed.connect(self.changed.emit)

    @property
    def editors(self) -> dict[str, FieldEditor]:
        """All editors by field name."""
        out = dict(self.basic.editors)
        if self.advanced is not None:
            out.update(self.advanced.editors)
        return out

    def values(self) -> dict[str, Any]:
        """Current values of all shown fields."""
        out = self.basic.values()
        if self.advanced is not None:
            out.update(self.advanced.values())
        return out

    def set_values(self, **values: Any) -> None:
        """Set fields by name (basic or advanced)."""
        editors = self.editors
        unknown = set(values) - set(editors)
        if unknown:
            raise KeyError(f"no field(s) {sorted(unknown)} in {self.cls.__name__} form")
        for name, value in values.items():
            editors[name].set(value)

    def config(self, **overrides: Any) -> Any:
        """A new config instance from the form (fields not shown keep their defaults)."""
        values = self.values()
        values.update(overrides)
        return self.cls(**values)
