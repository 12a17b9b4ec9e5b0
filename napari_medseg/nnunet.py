"""nnU-Net v2 datasets: export images with their sparse annotations, and import them back.

Export writes a raw dataset folder ``DatasetXXX_NAME`` (nnU-Net v2's layout)::

    DatasetXXX_NAME/
      dataset.json             channel_names, labels, numTraining, file_ending
      imagesTr/CASE_0000.nii.gz
      labelsTr/CASE.nii.gz

Labels follow nnU-Net: ``0`` background, ``k`` structure ``k``, and what nobody annotated
(our ``0``) the *ignore* label, the highest value, named ``"ignore"`` in ``dataset.json``:
nnU-Net then trains on the annotated voxels only, as napari-medseg does. Images and labels
keep the image's geometry. Import does the reverse for one case or all: ``ignore`` becomes
``0`` (not annotated), ``0`` becomes ``1`` (background), ``k`` becomes ``k + 1``, and the
structure names go with the annotation (:mod:`napari_medseg.io.segments`).

Both write into a hidden folder next to the target and rename it into place once every
file is written and verified, so a failure leaves nothing half-written. Neither needs
nnU-Net itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._atomic import TEMP_PREFIX, WriteCheckError, atomic_write
from .annotation import check_painted
from .api import check_same_geometry
from .errors import MedsegInputError
from .io import read_volume, write_volume
from .io._formats import extension_of
from .io.segments import Segments, stored_class_names
from .options import check_choice, option
from .outputs import check_inputs
from .volume import Volume

__all__ = [
    "DATASET_JSON",
    "IGNORE",
    "ImportedCase",
    "NnunetExportConfig",
    "NnunetImportConfig",
    "dataset_labels",
    "export_nnunet",
    "from_nnunet_labels",
    "import_nnunet",
    "to_nnunet_labels",
]

PathLike = str | os.PathLike[str]
FileEnding = Literal[".nii.gz", ".nrrd", ".mha"]
#: Called after each case: ``(number done, total, case id)``.
OnCase = Callable[[int, int, str], None]

DATASET_JSON = "dataset.json"
IGNORE = "ignore"
_BACKGROUND = "background"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_MAX_JSON_BYTES = 16 << 20


@dataclass
class NnunetExportConfig:
    """How ``medseg export-nnunet`` names and describes the dataset it writes."""

    dataset_id: int = option(
        help="nnU-Net dataset number, 1 to 999 (the folder is DatasetXXX_NAME)", min=1, max=999
    )
    dataset_name: str = option("MedSeg", help="dataset name: letters, digits, - and _")
    channel: str = option(
        "MRI", help="what the image shows, dataset.json's name of channel 0: CT makes nnU-Net "
        "normalise intensities with the dataset's CT statistics, any other name (MRI ...) "
        "per image",
    )  # fmt: skip
    file_ending: FileEnding = option(".nii.gz", help="file type of the dataset's images and labels")

    def __post_init__(self) -> None:
        try:
            check_choice(NnunetExportConfig, "file_ending", self.file_ending)
        except ValueError as exc:
            raise MedsegInputError(str(exc)) from None
        if isinstance(self.dataset_id, bool) or not 1 <= int(self.dataset_id) <= 999:
            raise MedsegInputError(f"dataset id must be 1 to 999, not {self.dataset_id}")
        if not _NAME.match(self.dataset_name):
            raise MedsegInputError(
                f"dataset name {self.dataset_name!r}: use letters, digits, - and _ only"
            )
        if not self.channel.strip() or any(ord(c) < 32 for c in self.channel):
            raise MedsegInputError(f"channel name {self.channel!r} is empty or not one line")

    @property
    def folder_name(self) -> str:
        """``DatasetXXX_NAME``."""
        return f"Dataset{int(self.dataset_id):03d}_{self.dataset_name}"


@dataclass
class NnunetImportConfig:
    """Which cases and which image channel ``medseg import-nnunet`` takes."""

    case: str | None = option(None, help="the case to import", none_text="every case")
    channel_index: int = option(0, help="the image channel to import (CASE_0000 is 0)", min=0)

    def __post_init__(self) -> None:
        if not 0 <= self.channel_index <= 9999:
            raise MedsegInputError(f"channel index must be 0 to 9999, not {self.channel_index}")


@dataclass(frozen=True)
class ImportedCase:
    """One case :func:`import_nnunet` wrote: its id, image and sparse annotation files."""

    case: str
    image: Path
    annotation: Path


# ---- labels -------------------------------------------------------------------------------


def dataset_labels(class_names: Sequence[str]) -> dict[str, int]:
    """``dataset.json``'s labels: background 0, structure ``k`` -> ``k``, ignore highest.

    Raises
    ------
    MedsegInputError
        Names that repeat, or that are ``background`` or ``ignore``.
    """
    labels = {_BACKGROUND: 0}
    for k, name in enumerate(class_names, 1):
        if name.strip().lower() in (_BACKGROUND, IGNORE) or name in labels:
            raise MedsegInputError(
                f"structure name {name!r} is reserved or repeated; nnU-Net needs distinct names"
            )
        labels[name] = k
    labels[IGNORE] = len(class_names) + 1
    return labels


def _label_type(top: int) -> type[np.unsignedinteger[Any]]:
    return np.uint8 if top <= 255 else np.uint16


def to_nnunet_labels(annotation: npt.NDArray[Any], ignore: int) -> npt.NDArray[Any]:
    """Sparse annotation -> nnU-Net labels: ``0`` -> ``ignore``, ``k + 1`` -> ``k``."""
    out = np.asarray(annotation).astype(_label_type(ignore))
    unknown = out == 0
    out -= 1  # unsigned: 0 wraps around, then becomes the ignore label
    out[unknown] = ignore
    return out


def from_nnunet_labels(
    labels: npt.NDArray[Any], n_structures: int, ignore: int | None, name: str = "labels"
) -> npt.NDArray[Any]:
    """nnU-Net labels -> sparse annotation: ``ignore`` -> ``0``, ``k`` -> ``k + 1``.

    Raises
    ------
    MedsegInputError
        A value that is neither a label of the dataset nor its ignore label.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise MedsegInputError(f"{name} holds {labels.dtype} values, not whole numbers")
    bad = (labels < 0) | (labels > n_structures)
    if ignore is not None:
        bad &= labels != ignore
    if bad.any():
        value = labels[bad].flat[0]
        raise MedsegInputError(f"{name} holds {value}, not a label of the dataset")
    ignored = labels == ignore if ignore is not None else None
    out = labels.astype(_label_type(n_structures + 1))
    out += 1
    if ignored is not None:
        out[ignored] = 0
    return out


# ---- export -------------------------------------------------------------------------------


@dataclass
class _Case:
    case: str
    annotation: Volume  # on the image's grid


def export_nnunet(
    pairs: Sequence[tuple[PathLike, PathLike]],
    out_root: PathLike,
    config: NnunetExportConfig,
    *,
    class_names: Sequence[str] | None = None,
    on_case: OnCase | None = None,
) -> Path:
    """Write images and their sparse annotations as an nnU-Net v2 raw dataset.

    Parameters
    ----------
    pairs : sequence of (path, path)
        ``(image, sparse annotation)`` per case; the case id is the image's file name
        without extension (made unique).
    out_root : path-like
        The folder that receives ``DatasetXXX_NAME`` (nnU-Net's ``nnUNet_raw``); created
        when only it is missing.
    config : NnunetExportConfig
        Dataset number, name, channel name and file type.
    class_names : sequence of str, optional
        Structure names; default: those stored with the annotations, else
        ``structure k``.
    on_case : callable, optional
        Called after each case is written.

    Returns
    -------
    Path
        The dataset folder.

    Raises
    ------
    MedsegInputError
        No case, a missing input, an annotation off its image's grid or with nothing
        painted, names that do not fit, a dataset folder that exists and is not empty, or
        another folder with the same dataset number.
    """
    if not pairs:
        raise MedsegInputError("give at least one image and its annotation")
    check_inputs([(p, what) for pair in pairs for p, what in zip(pair, ("image", "annotation"))])
    root = _output_root(Path(out_root).expanduser())
    target = root / config.folder_name
    _refuse_taken(root, target, int(config.dataset_id))
    case_ids = _unique_ids([_stem(Path(image)) for image, _ in pairs])
    with _staged_folder(target) as staging:
        for folder in ("imagesTr", "labelsTr"):
            (staging / folder).mkdir()
        cases = []
        for number, ((image_path, annotation_path), case) in enumerate(zip(pairs, case_ids), 1):
            cases.append(_export_image(Path(image_path), Path(annotation_path), case, staging,
                                       config.file_ending))  # fmt: skip
            if on_case is not None:
                on_case(number, 2 * len(pairs), case)
        names = _export_names(cases, class_names)
        labels = dataset_labels(names)
        for number, item in enumerate(cases, len(pairs) + 1):
            path = staging / "labelsTr" / f"{item.case}{config.file_ending}"
            converted = to_nnunet_labels(item.annotation.array, labels[IGNORE])
            write_volume(path, converted, reference=item.annotation, labels=True)
            if on_case is not None:
                on_case(number, 2 * len(pairs), item.case)
        _write_json(staging / DATASET_JSON, _dataset_json(config, labels, len(cases)))
    return target


def _export_image(
    image_path: Path, annotation_path: Path, case: str, staging: Path, ending: str
) -> _Case:
    """Write one case's image; return its annotation, checked, on the image's grid."""
    image = read_volume(image_path)
    annotation = read_volume(annotation_path)
    check_same_geometry(image, annotation, f"annotation {annotation_path.name}",
                        f"image {image_path.name}")  # fmt: skip
    check_painted(annotation.array)
    if not np.any(annotation.array):
        raise MedsegInputError(f"annotation {annotation_path.name} has nothing painted")
    write_volume(staging / "imagesTr" / f"{case}_0000{ending}", image, labels=False)
    stored = image.with_array(np.asarray(annotation.array))
    stored.metadata = dict(annotation.metadata)
    return _Case(case, stored)


def _export_names(cases: Sequence[_Case], given: Sequence[str] | None) -> list[str]:
    """The structure names of the dataset: given, else stored with the annotations."""
    top = max(int(np.max(c.annotation.array)) - 1 for c in cases)
    if given is not None:
        names = [str(n).strip() for n in given]
    else:
        found = [stored_class_names(c.annotation.metadata, "annotation") for c in cases]
        stored = {tuple(names) for names in found if names}
        if len(stored) > 1:
            raise MedsegInputError("the annotations name their structures differently; "
                                   "give the names (--class-names)")  # fmt: skip
        names = list(stored.pop()) if stored else []
    if given is not None and top > len(names):
        raise MedsegInputError(
            f"the annotations paint {top} structures but {len(names)} names were given"
        )
    return names + [f"structure {k}" for k in range(len(names) + 1, top + 1)]


def _dataset_json(config: NnunetExportConfig, labels: dict[str, int], n: int) -> dict[str, Any]:
    return {
        "name": config.dataset_name,
        "description": "sparse annotations exported by napari-medseg: voxels nobody "
        "annotated carry the ignore label",
        "channel_names": {"0": config.channel.strip()},
        "labels": labels,
        "numTraining": n,
        "file_ending": config.file_ending,
    }


def _write_json(path: Path, content: dict[str, Any]) -> None:
    text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"

    def check(tmp: Path) -> None:
        if json.loads(tmp.read_text(encoding="utf-8")) != content:
            raise WriteCheckError("the dataset.json written does not read back")

    with atomic_write(path, "w", encoding="utf-8", check=check) as handle:
        handle.write(text)


# ---- import -------------------------------------------------------------------------------


def import_nnunet(
    dataset: PathLike,
    out_folder: PathLike,
    config: NnunetImportConfig | None = None,
    *,
    on_case: OnCase | None = None,
) -> list[ImportedCase]:
    """Read cases of an nnU-Net v2 raw dataset back as images and sparse annotations.

    Each case gives ``CASE<ext>`` (the image channel chosen) and ``CASE_annotation<ext>``
    (``0`` not annotated, ``1`` background, ``k + 1`` structure ``k``) with its structure
    names (an ITK-SNAP label description beside it, or Slicer's fields in a ``.nrrd``);
    ``<ext>`` is the dataset's file ending.

    Parameters
    ----------
    dataset : path-like
        The ``DatasetXXX_NAME`` folder (with ``dataset.json``, ``imagesTr``, ``labelsTr``).
    out_folder : path-like
        Folder to create (or an empty one).
    config : NnunetImportConfig, optional
        The case (default: all) and the image channel.
    on_case : callable, optional
        Called after each case is written.

    Returns
    -------
    list of ImportedCase

    Raises
    ------
    MedsegInputError
        Not a dataset folder, a ``dataset.json`` that is not nnU-Net's (regions, labels
        that do not run 0, 1, 2 ...), an unknown case, a label file off its image's grid or
        with values outside the labels, or an output folder that is not empty.
    """
    config = config or NnunetImportConfig()
    source = _Source.open(Path(dataset).expanduser(), config.channel_index)
    cases = _dataset_cases(source.folder, source.image_suffix, config.case)
    out = _output_root(Path(out_folder).expanduser(), create=False)
    _refuse_taken(out.parent, out, None)
    written = []
    with _staged_folder(out) as staging:
        for number, case in enumerate(cases, 1):
            image_name, annotation_name = source.import_case(case, staging)
            written.append(ImportedCase(case, out / image_name, out / annotation_name))
            if on_case is not None:
                on_case(number, len(cases), case)
    return written


@dataclass(frozen=True)
class _Source:
    """A raw dataset being imported: where, its file ending, structures and ignore label."""

    folder: Path
    ending: str
    image_suffix: str
    names: list[str]
    ignore: int | None

    @classmethod
    def open(cls, folder: Path, channel_index: int) -> _Source:
        info = _read_dataset_json(folder)
        ending = str(info["file_ending"])
        names, ignore = _structures(info["labels"])
        return cls(folder, ending, f"_{channel_index:04d}{ending}", names, ignore)

    @property
    def out_ending(self) -> str:
        """The dataset's file ending when napari-medseg writes it, else ``.nii.gz``."""
        return self.ending if self.ending in (".nii.gz", ".nii", ".nrrd", ".mha") else ".nii.gz"

    def import_case(self, case: str, staging: Path) -> tuple[str, str]:
        """Write one case's image and sparse annotation into ``staging``; their names."""
        image = read_volume(self.folder / "imagesTr" / f"{case}{self.image_suffix}")
        label_path = self.folder / "labelsTr" / f"{case}{self.ending}"
        check_inputs([(label_path, f"labels of case {case}")])
        labels = read_volume(label_path)
        check_same_geometry(image, labels, f"labels of case {case}", f"image of case {case}")
        annotation = from_nnunet_labels(labels.array, len(self.names), self.ignore, label_path.name)
        names = (f"{case}{self.out_ending}", f"{case}_annotation{self.out_ending}")
        write_volume(staging / names[0], image, labels=False)
        segments = Segments.of_structures(self.names, "annotation")
        write_volume(staging / names[1], annotation, reference=image, segments=segments)
        return names


def _read_dataset_json(folder: Path) -> dict[str, Any]:
    """``dataset.json`` of a raw dataset folder, with the keys import needs checked."""
    path = folder / DATASET_JSON
    if not folder.is_dir() or not path.is_file():
        raise MedsegInputError(f"{folder} is not an nnU-Net dataset folder (no {DATASET_JSON})")
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise MedsegInputError(f"{path} is too large for a dataset.json")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MedsegInputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(info, dict) or not isinstance(info.get("labels"), dict):
        raise MedsegInputError(f"{path} has no labels")
    if not isinstance(info.get("file_ending"), str) or not info["file_ending"].startswith("."):
        raise MedsegInputError(f"{path} has no file_ending")
    if "dataset" in info:
        raise MedsegInputError(f"{path} lists its files itself ('dataset'); not supported")
    return info


def _structures(labels: dict[str, Any]) -> tuple[list[str], int | None]:
    """Structure names (value order) and the ignore label of ``dataset.json``'s labels."""
    ignore = labels.get(IGNORE)
    values: dict[int, str] = {}
    for name, value in labels.items():
        if name == IGNORE:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise MedsegInputError(f"label {name!r} is a region or not a number; not supported")
        values[value] = str(name)
    n = len(values) - 1
    if sorted(values) != list(range(n + 1)):
        raise MedsegInputError(f"dataset labels must run 0, 1, 2 ...; found {sorted(values)}")
    if ignore is not None and (isinstance(ignore, bool) or ignore != n + 1):
        raise MedsegInputError(f"the ignore label must be {n + 1}, the highest; found {ignore}")
    return [values[k] for k in range(1, n + 1)], ignore


def _dataset_cases(folder: Path, suffix: str, wanted: str | None) -> list[str]:
    images = folder / "imagesTr"
    if not images.is_dir():
        raise MedsegInputError(f"{folder} has no imagesTr folder")
    cases = sorted(p.name[: -len(suffix)] for p in images.iterdir() if p.name.endswith(suffix))
    if wanted is not None:
        if wanted not in cases:
            raise MedsegInputError(f"no case {wanted!r} in {images} (cases: {_listed(cases)})")
        return [wanted]
    if not cases:
        raise MedsegInputError(f"no image *{suffix} in {images}")
    return cases


def _listed(cases: Sequence[str]) -> str:
    return ", ".join(cases[:5]) + (" ..." if len(cases) > 5 else "") if cases else "none"


# ---- folders ------------------------------------------------------------------------------


def _output_root(root: Path, create: bool = True) -> Path:
    """``root`` as a folder to write in (created when only it is missing and ``create``)."""
    if root.exists() and not root.is_dir():
        raise MedsegInputError(f"{root} is not a folder")
    if not root.parent.is_dir():
        raise MedsegInputError(f"folder {root.parent} does not exist")
    if create and not root.exists():
        root.mkdir()
    return root


def _refuse_taken(root: Path, target: Path, dataset_id: int | None) -> None:
    """Refuse a non-empty ``target``, and another ``DatasetXXX_`` folder of the same number."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MedsegInputError(f"{target} already exists and is not empty")
    if dataset_id is None or not root.is_dir():
        return
    prefix = f"Dataset{dataset_id:03d}_"
    for other in root.iterdir():
        if other.name.startswith(prefix) and other != target:
            raise MedsegInputError(f"dataset number {dataset_id} is taken by {other}")


@contextmanager
def _staged_folder(target: Path) -> Iterator[Path]:
    """A hidden folder next to ``target`` that becomes ``target`` when the block succeeds."""
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=target.parent))
    try:
        yield staging
        if target.is_dir():
            target.rmdir()  # empty: checked before the work
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _stem(path: Path) -> str:
    ext = extension_of(path) if path.is_file() else ""
    stem = path.name[: len(path.name) - len(ext)] if ext else path.name
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem).strip("_") or "case"


def _unique_ids(stems: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for stem in stems:
        candidate, n = stem, 2
        while candidate in ids:
            candidate, n = f"{stem}_{n}", n + 1
        ids.append(candidate)
    return ids
