"""In-process state shared by the widgets: the models trained or loaded this session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psygnal import Signal


@dataclass
class ModelEntry:
    """One model the Predict widget can pick.

    Parameters
    ----------
    name : str
        Unique display name.
    model : TrainedModel
        The model (:class:`napari_medseg.checkpoint.TrainedModel`).
    source : str
        ``"trained"`` or the path it was loaded from.
    created : datetime
        When it entered the registry.
    """

    name: str
    model: Any
    source: str = "trained"
    created: datetime = field(default_factory=datetime.now)


class ModelRegistry:
    """Named models of this session; emits :attr:`changed` when one is added or removed."""

    changed = Signal()

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """Names, oldest first."""
        return list(self._entries)

    def entries(self) -> list[ModelEntry]:
        """Entries, oldest first."""
        return list(self._entries.values())

    def get(self, name: str) -> ModelEntry | None:
        """The entry called ``name``, or None."""
        return self._entries.get(name)

    def latest(self) -> ModelEntry | None:
        """The most recently added entry, or None."""
        return next(reversed(self._entries.values()), None)

    def add(self, name: str, model: Any, source: str = "trained") -> ModelEntry:
        """Add a model under ``name`` (made unique with a ``(2)``, ``(3)`` ... suffix)."""
        unique, n = name, 2
        while unique in self._entries:
            unique, n = f"{name} ({n})", n + 1
        entry = ModelEntry(unique, model, source)
        self._entries[unique] = entry
        self.changed.emit()
        return entry

    def remove(self, name: str) -> None:
        """Forget the model called ``name`` (no error if absent)."""
        if self._entries.pop(name, None) is not None:
            self.changed.emit()

    def clear(self) -> None:
        """Forget every model."""
        if self._entries:
            self._entries.clear()
            self.changed.emit()


#: The registry shared by all widgets of the process.
MODELS = ModelRegistry()
