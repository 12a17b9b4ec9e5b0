"""Predicting a cohort: many scans, one task each, on dask.distributed (never Qt or napari;
``distributed`` is imported only when there is work to hand out: :func:`import_distributed`).

:func:`plan_cohort` checks everything before any work: the inputs expanded (files, folders of
scans, glob patterns; a DICOM series folder is one scan: :func:`expand_inputs`) and named
(``<out-dir>/<scan>_seg.<format>``, two scans of one name refused), those an earlier run
finished set aside (:func:`finished_record`). :func:`predict_cohort` runs the rest on the
``distributed.Client`` given (the CLI's: a ``LocalCluster``, or ``--scheduler``'s), one task
per scan, :func:`run_scan`: :func:`~napari_medseg.api.predict_file` with the model loaded once
per worker process (:func:`cached_model`), Dice against an expert mask when asked, and then
writes the scan's JSON summary last, atomically. A scan is finished when its segmentation and
that summary exist (same model, image and settings), so a killed worker or batch leaves
nothing a rerun takes for finished; a scan that fails is recorded and the batch goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ._atomic import atomic_write
from .errors import MedsegError, MedsegInputError
from .inference import PredictConfig
from .io import is_supported
from .io._formats import FORMATS, extension_of
from .model import TrainedModel
from .options import option
from .outputs import check_inputs, try_writing_in

__all__ = [
    "CohortConfig", "CohortPlan", "CohortProgress", "CohortResult", "Scan", "ScanJob",
    "cached_model", "expand_inputs", "finished_record", "import_distributed", "slots_per_host",
    "plan_cohort", "predict_cohort", "run_scan", "scan_name",
]  # fmt: skip

PathLike = str | os.PathLike[str]
Record = dict[str, Any]

#: Added to a scan's name to name its segmentation and its summary.
OUTPUT_SUFFIX = "_seg"
#: The batch's summary, in the output folder.
SUMMARY_NAME = "cohort_summary.json"
#: CPU cores per worker process of the default LocalCluster (``--workers``: cli_cohort.py).
CORES_PER_WORKER = 4
INSTALL_HINT = "cohorts need the cohort extra: pip install 'napari-medseg[cohort]'"
_WRITABLE = tuple(ext[1:] for ext, fmt in FORMATS.items() if fmt != "dicom")


@dataclass
class CohortConfig:
    """Settings of a cohort run (the ``medseg predict --out-dir`` options)."""

    out_dir: str | None = option(
        None, help="folder of the segmentations (created if missing): <scan>_seg.<format> and "
        "a <scan>_seg.json summary per scan, cohort_summary.json for all; a rerun skips the "
        "scans already finished", metavar="DIR",
    )  # fmt: skip
    format: str = option(
        "nii.gz", help=f"file type of the segmentations: {', '.join(_WRITABLE)}", metavar="EXT"
    )
    workers: int | None = option(
        None, help="worker processes of the local dask cluster, each predicting one scan at a "
        "time with torch on cores/workers threads (a 3D network gains little from more threads "
        "on one scan, and each process holds its own model and volume); at most one per scan",
        min=1, metavar="N", none_text=f"one per {CORES_PER_WORKER} CPU cores, 1 on a GPU",
    )  # fmt: skip
    scheduler: str | None = option(
        None, help="run on this running dask scheduler (tcp://host:8786) instead of a local "
        "cluster; its workers need napari-medseg and the model, inputs and --out-dir at the "
        "same paths", metavar="ADDRESS",
    )  # fmt: skip
    metrics_against: str | None = option(
        None, help="folder of expert masks named as the scans (<scan>.nii.gz ...): Dice per "
        "structure of each segmentation, and the mean", metavar="DIR",
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.format = self.format.lstrip(".")
        if self.format not in _WRITABLE:
            raise MedsegInputError(f"--format {self.format}: use {', '.join(_WRITABLE)}")
        if self.workers is not None and self.workers < 1:
            raise MedsegInputError(f"--workers must be at least 1, not {self.workers}")
        if self.workers is not None and self.scheduler is not None:
            raise MedsegInputError(
                "--workers sizes the local cluster; the cluster of --scheduler has its own workers"
            )


@dataclass(frozen=True)
class Scan:
    """One scan of a cohort: its image, its segmentation and summary, its expert mask."""

    name: str
    image: Path
    output: Path
    summary: Path
    expert: Path | None = None


@dataclass(frozen=True)
class ScanJob:
    """What a worker needs for one scan (:func:`run_scan`); ``fingerprint``: the model, image
    and settings the result depends on, kept in the scan's summary; ``slots_per_host``: tasks
    that run at once on one machine, sharing its cores."""

    scan: Scan
    model: Path
    predict: PredictConfig
    fingerprint: dict[str, Any]
    slots_per_host: int = 1


# ---- inputs and names ----------------------------------------------------------------


def scan_name(path: PathLike) -> str:
    """A scan's name: its file name without a known extension (a folder keeps its name)."""
    name = Path(path).name
    extension = extension_of(name)
    known = extension in FORMATS and len(name) > len(extension)
    return name[: -len(extension)] if known else name


def expand_inputs(inputs: Sequence[PathLike], out_dir: Path | None = None) -> list[Path]:
    """The scans ``inputs`` name, in order, each once: files, DICOM series folders (one scan
    each), folders of these (not deeper) and glob patterns (``**`` recursive) matching any;
    ``*_seg.*`` in ``out_dir`` (earlier outputs) left out of folders and patterns."""
    found: list[Path] = []
    for item in inputs:
        text = os.path.expanduser(os.fspath(item))
        if any(c in text for c in "*?[") and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            scans = [scan for m in matches for scan in _scans_in(Path(m), out_dir, named=False)]
            if not scans:
                raise MedsegInputError(f"no scan matches {os.fspath(item)}")
        else:
            check_inputs([(text, "image")])
            scans = _scans_in(Path(text), out_dir, named=True)
            if not scans:
                raise MedsegInputError(
                    f"no scan in folder {text}: no file medseg reads, no DICOM series folder"
                )
        found.extend(scans)
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _scans_in(path: Path, out_dir: Path | None, *, named: bool) -> list[Path]:
    """``path`` as a scan, or the scans in it when it is a folder of scans."""
    if path.is_dir() and not is_supported(path):
        entries = sorted(e for e in path.iterdir() if not e.name.startswith("."))
        return [e for e in entries if is_supported(e) and not _is_output(e, out_dir)]
    if is_supported(path):
        return [] if not named and _is_output(path, out_dir) else [path]
    if named:
        raise MedsegInputError(
            f"cannot read {path.name}: unknown file type; supported: "
            f"{', '.join(FORMATS)} or a DICOM folder"
        )
    return []


def _is_output(path: Path, out_dir: Path | None) -> bool:
    """Whether ``path`` is a segmentation in ``out_dir`` (an earlier run's output)."""
    in_out_dir = out_dir is not None and os.path.realpath(path.parent) == os.path.realpath(out_dir)
    return in_out_dir and scan_name(path).endswith(OUTPUT_SUFFIX)


def name_scans(images: Sequence[Path], out_dir: Path, fmt: str) -> list[Scan]:
    """One :class:`Scan` per image, outputs named after it; refuse (one line) two scans that
    would write one file, or an output that is one of the inputs."""
    groups: dict[str, list[Path]] = {}
    for image in images:
        groups.setdefault(scan_name(image).casefold(), []).append(image)
    clashes = [paths for paths in groups.values() if len(paths) > 1]
    if clashes:
        listed = "; ".join(f"{scan_name(paths[0])}{OUTPUT_SUFFIX}.{fmt} from "
                           + " and ".join(map(str, paths)) for paths in clashes)  # fmt: skip
        raise MedsegInputError(
            f"scans of the same name would overwrite each other's segmentation: {listed} "
            "(rename them, or predict them into separate --out-dir folders)"
        )
    stems = [(image, scan_name(image)) for image in images]
    scans = [Scan(name, image, out_dir / f"{name}{OUTPUT_SUFFIX}.{fmt}",
                  out_dir / f"{name}{OUTPUT_SUFFIX}.json") for image, name in stems]  # fmt: skip
    inputs = {os.path.realpath(image) for image in images}
    for scan in scans:
        if os.path.realpath(scan.output) in inputs:
            raise MedsegInputError(f"cannot save segmentation {scan.output}: it is also a scan")
    return scans


def find_experts(where: PathLike | None, scans: list[Scan]) -> tuple[list[Scan], list[str]]:
    """Each scan with the expert mask of its name in folder ``where`` (None: no mask), and
    the names without one; refused in one line: no folder, two masks for a scan, none at all."""
    if where is None:
        return scans, []
    folder = Path(where).expanduser().resolve()
    if not folder.is_dir():
        raise MedsegInputError(f"--metrics-against {folder}: no such folder")
    index: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(".") and is_supported(entry):
            index.setdefault(scan_name(entry), []).append(entry)
    ambiguous = [index[s.name] for s in scans if len(index.get(s.name, [])) > 1]
    if ambiguous:
        listed = "; ".join(" and ".join(map(str, paths)) for paths in ambiguous)
        raise MedsegInputError(f"several expert masks for one scan: {listed}")
    missing = [s.name for s in scans if s.name not in index]
    if len(missing) == len(scans):
        raise MedsegInputError(f"no expert mask in {folder} is named as a scan (<scan>.nii.gz)")
    found = [dataclasses.replace(s, expert=index[s.name][0]) if s.name in index else s
             for s in scans]  # fmt: skip
    return found, missing


@dataclass
class CohortPlan:
    """What a cohort run will do: ``todo`` scans to predict, ``done`` (finished earlier:
    their stored records), ``unscored`` (scans without an expert mask)."""

    model: Path
    predict: PredictConfig
    config: CohortConfig
    out_dir: Path
    scans: list[Scan]
    todo: list[Scan]
    done: dict[str, Record]
    fingerprints: dict[str, dict[str, Any]]
    unscored: list[str]


def plan_cohort(
    model: PathLike,
    inputs: Sequence[PathLike],
    predict: PredictConfig | None = None,
    config: CohortConfig | None = None,
) -> CohortPlan:
    """Check the model, the inputs and the output folder (created last), name the scans, set
    aside those finished; refuse (:class:`MedsegInputError`, one line) before any work."""
    from .checkpoint import read_model_config

    predict = predict or PredictConfig()
    config = config or CohortConfig()
    if config.out_dir is None:
        raise MedsegInputError("a cohort needs an output folder (--out-dir DIR)")
    check_inputs([(model, "model file")])
    model_path = Path(model).expanduser().resolve()
    read_model_config(model_path)  # a file that is not a model: refused before any work
    out_dir = Path(config.out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise MedsegInputError(f"--out-dir {out_dir} is a file, not a folder")
    images = [p.resolve() for p in expand_inputs(inputs, out_dir)]
    scans = name_scans(images, out_dir, config.format)
    scans, unscored = find_experts(config.metrics_against, scans)
    fingerprints = {s.name: fingerprint(model_path, s, predict) for s in scans}
    stored = {s.name: finished_record(s, fingerprints[s.name]) for s in scans}
    done = {name: record for name, record in stored.items() if record is not None}
    todo = [s for s in scans if s.name not in done]
    if todo:
        import_distributed()
    _make_folder(out_dir)
    return CohortPlan(model_path, predict, config, out_dir, scans, todo, done, fingerprints,
                      unscored)  # fmt: skip


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedsegInputError(f"cannot create --out-dir {folder}: {exc.strerror}") from None
    try_writing_in(folder, f"cannot save segmentations in {folder}")


def import_distributed() -> ModuleType:
    """``distributed``, or a one-line :class:`MedsegInputError` saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise MedsegInputError(INSTALL_HINT) from None
    return distributed


def fingerprint(model: Path, scan: Scan, predict: PredictConfig) -> dict[str, Any]:
    """What a scan's segmentation depends on: the model and image files (path, size,
    modification time) and the prediction settings (the device aside), JSON-ready."""
    files = {"model": model, "image": scan.image}
    found: dict[str, Any] = {
        what: [str(path), path.stat().st_size, path.stat().st_mtime_ns]
        for what, path in files.items()
    }
    found["predict"] = {k: v for k, v in dataclasses.asdict(predict).items() if k != "device"}
    result: dict[str, Any] = json.loads(json.dumps(found))
    return result


def finished_record(scan: Scan, expected: dict[str, Any]) -> Record | None:
    """The stored record of a scan an earlier run finished, else None. Finished: the
    segmentation exists, and the scan's summary (written after it) says ``ok`` for the same
    output, model, image and settings, with Dice when there is an expert mask."""
    try:
        stored = json.loads(scan.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = isinstance(stored, dict) and stored.get("status") == "ok" and scan.output.exists()
    same = same and (stored.get("output"), stored.get("fingerprint")) == (str(scan.output),
                                                                          expected)  # fmt: skip
    if same and scan.expert is not None:
        same = stored.get("expert") == str(scan.expert) and stored.get("mean_dice") is not None
    return stored if same else None


# ---- the task: one scan in a worker --------------------------------------------------

_MODELS: dict[tuple[str, int, int], TrainedModel] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(path: PathLike, device: object = "cpu") -> TrainedModel:
    """The model of ``path``, loaded once per process and kept while the file is unchanged
    (same size and modification time); other devices than the CPU are not cached."""
    from .checkpoint import load_model

    if str(device) != "cpu":
        return load_model(path, device=str(device))
    resolved = Path(path).resolve()
    info = resolved.stat()
    key = (str(resolved), info.st_size, info.st_mtime_ns)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(resolved)
            for old in [k for k in _MODELS if k[0] == key[0]]:
                del _MODELS[old]
            _MODELS[key] = model
    return model


def run_scan(job: ScanJob) -> Record:
    """The task of one scan: :func:`~napari_medseg.api.predict_file`, voxels and mL per
    structure, Dice against the expert mask if any, then the scan's summary, written last
    and atomically. A failure is recorded (``status: failed``, the message), not raised."""
    stored = finished_record(job.scan, job.fingerprint)
    if stored is not None:  # a result lost with its worker, asked for again: it is on disk
        return stored
    start = time.perf_counter()
    record = _new_record(job)
    try:
        record["threads"] = _limit_torch_threads(job.slots_per_host)
        record.update(_predict(job))
        if job.scan.expert is not None:
            record.update(_score(job.scan.output, job.scan.expert, record["structures"]))
    except Exception as exc:  # one bad scan must not stop the batch
        record.update(status="failed", error=describe_failure(exc))
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_record(job.scan.summary, record)
    return record


def _new_record(job: ScanJob) -> Record:
    scan = job.scan
    return {
        "scan": scan.name, "image": str(scan.image), "output": str(scan.output),
        "status": "ok", "error": None, "seconds": None, "device": None,
        "worker": _worker_name(), "structures": {}, "spacing_mm": None,
        "expert": None if scan.expert is None else str(scan.expert), "mean_dice": None,
        "fingerprint": job.fingerprint,
    }  # fmt: skip


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def available_cores() -> int:
    """CPU cores this process may use."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _limit_torch_threads(slots_per_host: int) -> int:
    """torch's threads: the machine's cores shared by the tasks that run at once on it."""
    import torch

    threads = max(1, available_cores() // max(1, slots_per_host))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _predict(job: ScanJob) -> Record:
    from .api import predict_file
    from .out_of_core import label_counts

    model = cached_model(job.model)
    prediction = predict_file(model, job.scan.image, job.scan.output, job.predict)
    spacing = prediction.spacing  # the image is read once, by predict_file
    voxel_ml = float(np.prod(spacing)) / 1000.0
    names = model.config.class_names
    counts = label_counts(prediction.labels, len(names))
    structures = {
        str(k): {"name": names[k] if k < len(names) else f"structure {k}",
                 "voxels": int(counts[k]), "volume_ml": round(float(counts[k]) * voxel_ml, 6)}
        for k in range(1, len(counts))
    }  # fmt: skip
    return {"device": prediction.device, "spacing_mm": [float(s) for s in spacing],
            "structures": structures}  # fmt: skip


def _score(output: Path, expert: Path, structures: dict[str, dict[str, Any]]) -> Record:
    """Dice per structure of ``output`` against ``expert``, into ``structures``."""
    from .api import evaluate_files

    try:
        result = evaluate_files(output, expert, surface_distances=False)
    except MedsegError as exc:
        raise MedsegError(f"scoring against {expert}: {exc}") from None
    for k, metrics in sorted(result.classes.items()):
        empty = {"name": f"structure {k}", "voxels": 0, "volume_ml": 0.0}
        structures.setdefault(str(k), empty)["dice"] = round(float(metrics.dice), 6)
    return {"mean_dice": round(float(result.mean.dice), 6)}


def describe_failure(exc: BaseException) -> str:
    """One line on why a scan failed."""
    if isinstance(exc, MemoryError):
        return "not enough memory for this scan"
    text = " ".join(str(exc).split())[:400]
    if isinstance(exc, MedsegError):
        return text
    if type(exc).__name__ == "KilledWorker":
        return "the worker process running it died each time (out of memory, or killed)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def write_record(path: Path, record: Record) -> None:
    """Write a JSON summary atomically (a temporary file renamed onto ``path``)."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2) + "\n")


# ---- the batch ---------------------------------------------------------------------


def slots_per_host(client: Any) -> tuple[int, int]:
    """The most tasks ``client``'s cluster runs at once on one machine (its workers'
    threads), and its workers."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    per_host: Counter[str] = Counter()
    for info in workers.values():
        per_host[str(info.get("host", ""))] += int(info.get("nthreads", 1))
    return max(per_host.values(), default=1), len(workers)


@dataclass
class CohortProgress:
    """What :func:`predict_cohort` yields after each scan: ``done`` of ``total``, its record."""

    done: int
    total: int
    record: Record

    @property
    def fraction(self) -> float:
        """Scans finished, from 0 to 1."""
        return self.done / max(1, self.total)

    def describe(self) -> str:
        """One line for a progress bar: ``scan 3/12 ct_003 ok``."""
        return f"scan {self.done}/{self.total} {self.record['scan']} {self.record['status']}"


def predict_cohort(
    plan: CohortPlan, client: Any | None
) -> Generator[CohortProgress, None, CohortResult]:
    """Predict the scans of ``plan`` still to do, one task each on ``client`` (a
    ``distributed.Client``; None will do when nothing is left to do), then write the
    cohort's summary; yields a :class:`CohortProgress` per scan done, returns the
    :class:`CohortResult`. Closing the generator cancels the tasks not yet done."""
    start = time.perf_counter()
    records = {name: {**stored, "status": "skipped"} for name, stored in plan.done.items()}
    engine = None
    if plan.todo:
        if client is None:
            raise ValueError("scans are left to predict: a distributed.Client is needed")
        slots, workers = slots_per_host(client)
        engine = f"dask cluster {client.scheduler.address} ({workers} worker(s))"
        yield from _run_tasks(client, slots, plan, records)
    result = CohortResult(
        [records[s.name] for s in plan.scans], engine, time.perf_counter() - start,
        plan.out_dir / SUMMARY_NAME, str(plan.model), plan.config.format,
    )  # fmt: skip
    write_record(result.summary_path, result.to_dict())
    return result


def _run_tasks(
    client: Any, slots: int, plan: CohortPlan, records: dict[str, Record]
) -> Iterator[CohortProgress]:
    distributed = import_distributed()
    futures = {}
    for scan in plan.todo:
        job = ScanJob(scan, plan.model, plan.predict, plan.fingerprints[scan.name], slots)
        futures[client.submit(run_scan, job, pure=False)] = job
    total = len(futures)
    try:
        for done, future in enumerate(distributed.as_completed(list(futures)), start=1):
            job = futures.pop(future)
            try:
                record = future.result()
            except Exception as exc:  # the task itself could not run: still one scan
                record = {**_new_record(job), "status": "failed", "worker": None,
                          "error": describe_failure(exc)}  # fmt: skip
                with contextlib.suppress(OSError, MedsegError):
                    write_record(job.scan.summary, record)
            future.release()  # a worker lost now will not compute it again
            records[job.scan.name] = record
            yield CohortProgress(done, total, record)
    finally:  # interrupted: the scans not done are cancelled
        client.cancel(list(futures))


@dataclass
class CohortResult:
    """The records of a cohort's scans (in input order) and how they were run."""

    records: list[Record]
    engine: str | None
    seconds: float
    summary_path: Path
    model: str = ""
    format: str = "nii.gz"

    def counts(self) -> dict[str, int]:
        """Scans per status: ``ok``, ``failed``, ``skipped``."""
        found = Counter(str(r["status"]) for r in self.records)
        return {status: found.get(status, 0) for status in ("ok", "failed", "skipped")}

    @property
    def failed(self) -> list[Record]:
        """The records of the scans that failed."""
        return [r for r in self.records if r["status"] == "failed"]

    def mean_dice(self) -> dict[str, float] | None:
        """Mean Dice per structure over the scans scored (and ``"mean"``: of the scans'
        mean Dice), or None when none was."""
        scored = [r for r in self.records if r["status"] != "failed" and r.get("mean_dice")
                  is not None]  # fmt: skip
        if not scored:
            return None
        per: dict[str, list[float]] = {}
        for record in scored:
            for k, entry in record["structures"].items():
                if entry.get("dice") is not None:
                    per.setdefault(k, []).append(float(entry["dice"]))
        means = {k: float(np.mean(v)) for k, v in sorted(per.items(), key=lambda i: int(i[0]))}
        means["mean"] = float(np.mean([float(r["mean_dice"]) for r in scored]))
        return means

    def to_dict(self) -> Record:
        """The cohort's summary, JSON-ready (``cohort_summary.json``)."""
        return {
            "model": self.model, "format": self.format, "engine": self.engine,
            "seconds": round(self.seconds, 3), "counts": self.counts(),
            "mean_dice": self.mean_dice(), "scans": self.records,
        }  # fmt: skip
