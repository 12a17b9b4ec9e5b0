"""Training rounds kept on disk: each round's annotation, model and figures, crash-safe.

GUI-free. After every training run the Train widget adds a round to the :class:`RoundStore`
of the image: a folder ``round_NNN`` beside the autosaves (``<autosave dir>/rounds/<image
key>/``) holding the annotation it was trained on (``annotation.npz``), the model
(``model.safetensors``), optionally its segmentation (``segmentation.npz``), and
``round.json`` (time, slices painted per plane, steps, seconds, validation figure, Dice
against an expert mask). The folder is written under a temporary name and renamed into
place, so a process killed at any moment leaves the earlier rounds and either no new round
or a complete one; a damaged round is skipped with a :class:`RoundWarning`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import TEMP_PREFIX, atomic_write
from .annotation import content_checksum
from .autosave import default_autosave_dir
from .errors import MedsegInputError
from .painted_slices import painted_per_plane

__all__ = ["RoundRecord", "RoundStore", "RoundWarning", "rounds_root"]

RECORD = "round.json"
ANNOTATION = "annotation.npz"
MODEL = "model.safetensors"
SEGMENTATION = "segmentation.npz"
_NAME = re.compile(r"^round_(\d{3,})$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


class RoundWarning(UserWarning):
    """A round folder that cannot be used (skipped)."""


@dataclass
class RoundRecord:
    """One training round, as listed by the rounds panel.

    Attributes
    ----------
    number : int
        1, 2, 3 ... in the order trained.
    time : str
        When it ended (ISO 8601, local time).
    slices : list of int
        Slices painted per plane (one count per axis of the annotation).
    steps, seconds : int, float
        The run's training steps and wall-clock time.
    validation : float or None
        The run's own validation Dice on held-out painted voxels.
    dice : float or None
        Mean Dice of its segmentation against an expert mask, when one was loaded.
    model_name : str
        The model's name in the session.
    class_names : list of str
        Structure names.
    """

    number: int
    time: str
    slices: list[int]
    steps: int
    seconds: float
    validation: float | None = None
    dice: float | None = None
    model_name: str = ""
    class_names: list[str] = field(default_factory=list)
    checksum: str = ""
    folder: Path = field(default=Path(), compare=False)

    @property
    def painted(self) -> int:
        """Slices painted in all planes together."""
        return int(sum(self.slices))

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("folder")
        return json.dumps(data, indent=1)


def rounds_root() -> Path:
    """Where rounds are kept: ``rounds/`` in the autosave folder."""
    return default_autosave_dir() / "rounds"


class RoundStore:
    """The rounds of one image (see the module docstring).

    Parameters
    ----------
    key : str
        The image's autosave key (:func:`napari_medseg.autosave_keys.autosave_key`).
    root : Path, optional
        Default :func:`rounds_root`.
    """

    def __init__(self, key: str, root: str | os.PathLike[str] | None = None) -> None:
        if not _KEY.match(key):
            raise MedsegInputError(f"invalid rounds key {key!r}")
        self.folder = Path(root if root is not None else rounds_root()) / key

    def rounds(self) -> list[RoundRecord]:
        """The complete rounds, oldest first (damaged ones are skipped with a warning)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.iterdir()):
            if not _NAME.match(path.name):
                continue
            try:
                found.append(_read_record(path))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                warnings.warn(f"round {path.name} skipped: {exc}", RoundWarning, stacklevel=2)
        return sorted(found, key=lambda r: r.number)

    def add(
        self,
        annotation: np.ndarray,
        model: Any,
        *,
        model_name: str = "",
        segmentation: np.ndarray | None = None,
        dice: float | None = None,
    ) -> RoundRecord:
        """Write a new round (annotation, model, figures) and return its record."""
        from .checkpoint import save_model

        history = getattr(model.config, "history", {}) or {}
        number = max((r.number for r in self.rounds()), default=0) + 1
        record = RoundRecord(
            number=number,
            time=datetime.now().isoformat(timespec="seconds"),
            slices=[len(slices) for slices in painted_per_plane(annotation)],
            steps=int(history.get("steps", 0)),
            seconds=float(history.get("seconds", 0.0)),
            validation=_validation_of(history),
            dice=dice,
            model_name=model_name,
            class_names=[str(n) for n in model.config.class_names[1:]],
            checksum=content_checksum(annotation),
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.folder))
        try:
            _save_array(staging / ANNOTATION, annotation)
            save_model(staging / MODEL, model)
            if segmentation is not None:
                _save_array(staging / SEGMENTATION, segmentation)
            with atomic_write(staging / RECORD, "w") as handle:
                handle.write(record.to_json())
            final = self.folder / f"round_{number:03d}"
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        record.folder = final
        return record

    def load_annotation(self, record: RoundRecord, shape: tuple[int, ...]) -> np.ndarray:
        """The annotation of ``record``; refused when its shape or checksum is wrong."""
        array = _load_array(record.folder / ANNOTATION)
        if array.shape != tuple(shape):
            raise MedsegInputError(
                f"round {record.number} was painted on a {array.shape} image, not {shape}"
            )
        if record.checksum and content_checksum(array) != record.checksum:
            raise MedsegInputError(f"round {record.number}: its annotation file is damaged")
        return array

    def load_model(self, record: RoundRecord) -> Any:
        """The model trained in ``record``."""
        from .checkpoint import load_model

        return load_model(record.folder / MODEL)

    def load_segmentation(self, record: RoundRecord) -> np.ndarray | None:
        """The segmentation stored with ``record``, or None."""
        path = record.folder / SEGMENTATION
        return _load_array(path) if path.is_file() else None

    def save_segmentation(
        self, record: RoundRecord, labels: np.ndarray, dice: float | None = None
    ) -> None:
        """Keep ``labels`` (and its Dice) with ``record``."""
        _save_array(record.folder / SEGMENTATION, labels)
        if dice is not None:
            record.dice = float(dice)
            with atomic_write(record.folder / RECORD, "w") as handle:
                handle.write(record.to_json())


def _validation_of(history: dict[str, Any]) -> float | None:
    validation = history.get("validation") or {}
    value = validation.get("score") if isinstance(validation, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as handle:
        np.savez_compressed(handle, array=np.ascontiguousarray(array))


def _load_array(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["array"])


def _read_record(path: Path) -> RoundRecord:
    data = json.loads((path / RECORD).read_text(encoding="utf-8"))
    for name in (ANNOTATION, MODEL):
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
    record = RoundRecord(**{k: v for k, v in data.items() if k in RoundRecord.__dataclass_fields__})
    record.folder = path
    return record


def segment_round(
    model: Any, image: np.ndarray, annotation: np.ndarray, expert: np.ndarray | None = None
) -> tuple[np.ndarray, float | None]:
    """The segmentation a round's model gives (painted voxels keep their label, as in the
    Predict widget) and, with an ``expert`` mask, its mean Dice over the structures."""
    from .annotation import keep_painted
    from .inference import predict_volume
    from .metrics import evaluate

    labels = predict_volume(model, image).labels
    keep_painted(labels, annotation)
    if expert is None:
        return labels, None
    result = evaluate(labels, expert, surface_distances=False)
    return labels, float(result.mean.dice)
