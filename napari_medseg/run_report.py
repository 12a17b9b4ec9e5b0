"""What a trained model's history says of its run, in words (no torch: the GUI imports it)."""

from __future__ import annotations

from typing import Any


def describe_validation(history: dict[str, Any]) -> tuple[str, str | None]:
    """A model's validation in words for the CLI and the Train widget: a line such as
    ``"validation Dice 0.812 on 4,478 painted voxels in blocks held out"`` and a warning when
    the kept weights found nothing of a held-out structure (``("", None)``: no validation)."""
    record = history.get("validation")
    if not isinstance(record, dict):
        return "", None
    value = record.get("score")
    if not isinstance(value, float):
        return f"no validation figure ({record.get('held_out', 'nothing')} held out)", None
    line = f"validation Dice {value:.3f} on {record.get('held_out')} held out"
    if record.get("restarted"):
        line += " (trained again after a failed start)"
    missed = record.get("missed") or []
    warning = None
    if missed:
        names = ", ".join(str(m) for m in missed)
        warning = (
            f"the model found no {names} on the painted voxels held out to check it: paint "
            "more of it (whole slices through it), check its label, or train longer"
        )
    return line, warning
