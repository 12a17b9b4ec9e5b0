"""Settings as typed dataclass fields: one source for a setting's default, help and limits.

A configuration dataclass (:class:`~napari_medseg.training.TrainConfig`,
:class:`~napari_medseg.inference.PredictConfig`, ...) declares each setting with
:func:`option`. The GUI forms (``napari_medseg._qt._forms``) and the ``medseg`` command's
options (:func:`add_arguments`) are both built from these fields, so a default, a choice list
or a help text is written once.

Metadata keys read by the front ends: ``help`` (one line), ``unit`` (a spin box suffix),
``none_text`` (what ``None`` means), ``suggest`` (value shown while ``None``), ``min``, ``max``,
``step`` (numeric bounds), ``flag`` (the CLI option's name when it differs from the field's),
``negate`` (the CLI flag sets the boolean field to False) with ``flag_help``, ``metavar``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

_Config = TypeVar("_Config")

def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,  # noqa: A002 - the word argparse and the forms use
    default_factory: Any = dataclasses.MISSING,
    **metadata: Any,
) -> Any:
    """A dataclass field carrying its help text and front-end hints in ``metadata``."""
    meta = {"help": help, **{k: v for k, v in metadata.items() if v is not None}}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(annotation: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal`` type (also inside ``X | None``), else ``None``."""
    inner, _ = unwrap_optional(annotation)
    if get_origin(inner) is Literal:
        return tuple(get_args(inner))
    return None


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(annotation, False)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def check_choice(cls: type, name: str, value: Any) -> None:
    """Raise ``ValueError`` naming the choices when ``value`` is not one of a Literal field's."""
    choices = choices_of(typing.get_type_hints(cls)[name])
    if choices is not None and value not in choices:
        words = [str(c) for c in choices]
        listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
        raise ValueError(f"{name} must be {listed}, not {value!r}")


def help_of(cls: type, name: str) -> str:
    """The one-line help of a field."""
    return str(_fields(cls)[name].metadata.get("help", ""))


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def default_of(field: dataclasses.Field[Any]) -> Any:
    """The default value of a dataclass field (``None`` when it has none)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _flag(field: dataclasses.Field[Any]) -> str:
    return "--" + str(field.metadata.get("flag", field.name)).replace("_", "-")


def _shown_default(field: dataclasses.Field[Any], default: Any) -> str:
    if default is None:
        return str(field.metadata.get("none_text", "none"))
    if isinstance(default, tuple):
        return " ".join(str(v) for v in default)
    return str(default)


def _argument(field: dataclasses.Field[Any], annotation: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments for one field (the value stays ``None`` unless given)."""
    meta = field.metadata
    text = str(meta.get("help", "")).replace("%", "%%")
    inner, _ = unwrap_optional(annotation)
    if inner is bool:
        return {"action": "store_true", "default": None, "help": text}
    kwargs: dict[str, Any] = {"default": None}
    choices = choices_of(annotation)
    if choices is not None:
        kwargs["choices"] = list(choices)
    elif get_origin(inner) is tuple:
        parts = get_args(inner)
        kwargs.update(type=parts[0], nargs=len(parts))
    else:
        kwargs["type"] = inner
    if "metavar" in meta:
        kwargs["metavar"] = meta["metavar"]
    unit = f" {meta['unit']}" if meta.get("unit") and default is not None else ""
    kwargs["help"] = f"{text} (default: {_shown_default(field, default)}{unit})"
    return kwargs


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    names: Sequence[str] | None = None,
    exclude: Iterable[str] = (),
    help_overrides: dict[str, str] | None = None,
) -> None:
    """Add an option per field of ``cls`` to ``parser`` (``--field-name``, choices from
    ``Literal`` types, help from the field). Options left out stay ``None`` in the namespace,
    so :func:`config_from_args` keeps the dataclass's own default for them."""
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    skip = set(exclude)
    for name in names if names is not None else list(fields):
        if name in skip:
            continue
        field = fields[name]
        default = default_of(field)
        if field.metadata.get("negate"):
            text = field.metadata.get("flag_help", field.metadata["help"])
            kwargs = {"action": "store_false", "default": None, "help": text}
        else:
            kwargs = _argument(field, hints[name], default)
        if help_overrides and name in help_overrides:
            kwargs["help"] = help_overrides[name]
        parser.add_argument(_flag(field), dest=name, **kwargs)


def config_from_args(cls: type[_Config], args: argparse.Namespace, **overrides: Any) -> _Config:
    """An instance of ``cls`` from the options :func:`add_arguments` added and the user gave."""
    values = {
        name: getattr(args, name)
        for name in _fields(cls)
        if getattr(args, name, None) is not None
    }
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = tuple(value)
    values.update(overrides)
    return cls(**values)
