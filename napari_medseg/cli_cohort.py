"""``medseg predict MODEL INPUT... --out-dir DIR``: a cohort of scans on dask.distributed.

:func:`add_cohort_options` adds the cohort's options to ``medseg predict``
(:func:`napari_medseg.cli.build_parser`); ``cmd_predict`` hands a run with ``--out-dir`` to
:func:`cmd_predict_cohort` and keeps the one-image form (``--out FILE``) as it was, through
:func:`single_image`. The work is :mod:`napari_medseg.cohort`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .cohort import (
    CORES_PER_WORKER,
    CohortConfig,
    CohortPlan,
    CohortResult,
    Record,
    available_cores,
    import_distributed,
    plan_cohort,
    predict_cohort,
)
from .errors import MedsegInputError
from .options import add_arguments, config_from_args, help_of
from .progress import ProgressBar, run_to_completion, show

#: Seconds to reach the scheduler of ``--scheduler``, and to wait there for a first worker.
CONNECT_SECONDS = 20.0

#: Options of the one-image form that a cohort has no use for (dest -> flag).
SINGLE_IMAGE_ONLY = {
    "probabilities": "--probabilities",
    "uncertainty": "--uncertainty",
    "annotation": "--annotation",
    "dicom_seg": "--dicom-seg",
    "series_uid": "--series-uid",
}


def add_cohort_options(
    parser: argparse.ArgumentParser, outputs: argparse._MutuallyExclusiveGroup
) -> None:
    """``--out-dir`` into ``outputs`` (the group of ``--out``), the other cohort options
    (:class:`~napari_medseg.cohort.CohortConfig`) into ``parser``."""
    outputs.add_argument(
        "--out-dir", dest="out_dir", default=None, metavar="DIR",
        help=help_of(CohortConfig, "out_dir").replace("%", "%%"),
    )  # fmt: skip
    add_arguments(parser, CohortConfig, exclude=("out_dir",))


def _cohort_flags() -> dict[str, str]:
    return {
        f.name: "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(CohortConfig)
        if f.name != "out_dir"
    }


def single_image(args: argparse.Namespace) -> str:
    """The image of the one-image form (``--out FILE``); refuse several, or a cohort option."""
    given = [flag for name, flag in _cohort_flags().items() if getattr(args, name) is not None]
    if given:
        raise MedsegInputError(f"{given[0]} works with --out-dir (a cohort), not with --out")
    if len(args.image) > 1:
        raise MedsegInputError(
            f"{len(args.image)} images given: several images need --out-dir DIR (a "
            "segmentation each), not --out"
        )
    image: str = args.image[0]
    return image


def cmd_predict_cohort(args: argparse.Namespace) -> int:
    """Predict every scan the inputs name into ``--out-dir``; 1 when any scan failed."""
    from .inference import PredictConfig

    given = [flag for name, flag in SINGLE_IMAGE_ONLY.items() if getattr(args, name)]
    if given:
        raise MedsegInputError(f"{given[0]} works with --out (one image), not with --out-dir")
    predict = config_from_args(PredictConfig, args)
    if predict.regions != "all":
        raise MedsegInputError(
            f"--regions {predict.regions} needs --annotation, which works with --out only"
        )
    plan = plan_cohort(args.model, args.image, predict, config_from_args(CohortConfig, args))
    _announce(plan)
    with open_engine(plan) as client:
        result = _run(plan, client)
    print(format_table(result))
    counts = result.counts()
    engine = f" on a {result.engine}" if result.engine else ""
    print(
        f"saved {result.summary_path}: {counts['ok']} predicted{engine}, {counts['skipped']} "
        f"skipped (finished earlier), {counts['failed']} failed"
    )
    if result.failed:
        names = _listed([str(r["scan"]) for r in result.failed])
        print(
            f"medseg predict: {len(result.failed)} of {len(result.records)} scans failed: "
            f"{names} (the table and {result.summary_path.name} say why)",
            file=sys.stderr,
        )
        return 1
    return 0


def _announce(plan: CohortPlan) -> None:
    print(
        f"medseg predict: {len(plan.scans)} scan(s): {len(plan.todo)} to predict, "
        f"{len(plan.done)} finished earlier (skipped)",
        file=sys.stderr,
    )
    if plan.unscored:
        print(
            f"medseg predict: warning: no expert mask for {_listed(plan.unscored)} in "
            f"{plan.config.metrics_against}: not scored",
            file=sys.stderr,
        )


def _run(plan: CohortPlan, client: Any | None) -> CohortResult:
    """The batch, with a progress bar over the scans."""
    bar = ProgressBar("predict")
    batch = predict_cohort(plan, client)
    try:
        return run_to_completion(batch, show(bar))
    finally:
        batch.close()  # interrupted: the tasks left are cancelled, the finished scans stay
        bar.close()


def default_workers(todo: int, device: str = "auto") -> int:
    """Worker processes of the local cluster: one per :data:`~.cohort.CORES_PER_WORKER`
    cores, at most one per scan; one when the device is a GPU (the workers would share it)."""
    from .device import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(todo, available_cores() // CORES_PER_WORKER))


@contextlib.contextmanager
def open_engine(plan: CohortPlan) -> Iterator[Any | None]:
    """A ``distributed.Client`` of the scheduler of ``--scheduler``, else of a new
    ``LocalCluster`` (worker processes, one thread each), closed at the end; None when no
    scan is left to predict."""
    if not plan.todo:
        yield None
        return
    distributed = import_distributed()
    config = plan.config
    if config.scheduler is not None:
        client = _connect(distributed, config.scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    workers = config.workers or default_workers(len(plan.todo), plan.predict.device)
    print(f"medseg predict: starting a local dask cluster of {workers} worker process(es)",
          file=sys.stderr)  # fmt: skip
    with (
        distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):  # fmt: skip
        yield client


def _connect(distributed: Any, address: str) -> Any:
    """A client of the scheduler at ``address`` that has a worker; else one line, exit 2."""
    try:
        client = distributed.Client(address, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise MedsegInputError(f"cannot reach the dask scheduler at {address}: {why}") from None
    try:
        client.wait_for_workers(1, timeout=CONNECT_SECONDS)
    except (OSError, TimeoutError):
        client.close()
        raise MedsegInputError(
            f"the dask scheduler at {address} has no worker (start one: dask worker {address})"
        ) from None
    return client


def _listed(names: list[str], most: int = 5) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def format_table(result: CohortResult) -> str:
    """One line per scan (status, seconds, device, mL and Dice per structure, the error),
    then the mean Dice."""
    return _cohort_table(result.records, result.mean_dice())


def _cohort_table(records: Iterable[Record], means: dict[str, float] | None) -> str:
    rows = list(records)
    names: dict[str, str] = {}
    for record in rows:
        for k, entry in record.get("structures", {}).items():
            names.setdefault(k, str(entry.get("name", f"structure {k}")))
    keys = sorted(names, key=int)
    scored = means is not None
    header = ["scan", "status", "s", "device"]
    for k in keys:
        header += [f"{names[k]} mL"] + ([f"{names[k]} Dice"] if scored else [])
    table = [header]
    for record in rows:
        table.append(_table_row(record, keys, scored))
    if means is not None:
        mean_row = ["mean", "", "", ""]
        for k in keys:
            mean_row += ["", f"{means[k]:.4f}" if k in means else "-"]
        table.append(mean_row + [f"mean Dice {means['mean']:.4f}"])
    return _aligned(table)


def _table_row(record: Record, keys: Sequence[str], scored: bool) -> list[str]:
    seconds = record.get("seconds")
    row = [str(record["scan"]), str(record["status"]),
           "-" if seconds is None else f"{float(seconds):.1f}", str(record.get("device") or "-")]
    structures = record.get("structures", {})
    for k in keys:
        entry = structures.get(k, {})
        row.append(f"{entry['volume_ml']:.2f}" if "volume_ml" in entry else "-")
        if scored:
            row.append(f"{entry['dice']:.4f}" if entry.get("dice") is not None else "-")
    return row + ([str(record["error"])] if record.get("error") else [])  # fmt: skip


def _aligned(table: Sequence[Sequence[str]]) -> str:
    width = max(len(row) for row in table)
    widths = [max(len(row[i]) for row in table if i < len(row)) for i in range(width)]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i]) if i < 2 or i >= len(table[0]) else cell.rjust(widths[i])
                 for i, cell in enumerate(row)]  # fmt: skip
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
