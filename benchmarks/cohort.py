"""A cohort on this machine: ``medseg predict MODEL scans/ --out-dir ... --metrics-against``.

Writes ``--scans`` synthetic volumes (``make_synthetic_case``, seeds 0..N-1, their expert
masks beside), trains the default 3D U-Net ``--budget`` seconds on the sparse annotation of
the first, then runs the cohort command with a local dask cluster of ``--workers`` processes,
and once more (every scan finished: all skipped). One JSON line::

    {"scans": .., "workers": .., "seconds": .., "seconds_per_scan": .., "mean_dice": ..,
     "rerun_seconds": .., "rerun_skipped": ..}

Usage (alone on the machine; needs ``pip install 'napari-medseg[cohort]'``)::

    .venv/bin/python benchmarks/cohort.py [--scans 12] [--workers 1] [--budget 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_cohort(folder: Path, count: int) -> None:
    from napari_medseg.io import write_volume
    from napari_medseg.synthetic import make_synthetic_case

    (folder / "scans").mkdir()
    (folder / "experts").mkdir()
    for seed in range(count):
        case = make_synthetic_case(seed=seed)
        name = f"case{seed:03d}.nii.gz"
        write_volume(folder / "scans" / name, case.image, spacing=case.spacing)
        write_volume(folder / "experts" / name, case.expert_mask, spacing=case.spacing)
        if seed == 0:
            write_volume(folder / "annotation.nii.gz", case.annotation, spacing=case.spacing)


def medseg(*args: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "napari_medseg.cli", *args],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--budget", type=float, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_cohort(folder, args.scans)
        model = str(folder / "model.safetensors")
        medseg("train", str(folder / "scans" / "case000.nii.gz"),
               str(folder / "annotation.nii.gz"), "--out", model,
               "--time-budget", str(args.budget))  # fmt: skip
        command = ["predict", model, str(folder / "scans"), "--out-dir", str(folder / "segs"),
                   "--metrics-against", str(folder / "experts"),
                   "--workers", str(args.workers)]  # fmt: skip
        seconds, _ = medseg(*command)
        summary = json.loads((folder / "segs" / "cohort_summary.json").read_text("utf-8"))
        rerun, _ = medseg(*command)
        again = json.loads((folder / "segs" / "cohort_summary.json").read_text("utf-8"))
    records = summary["scans"] if isinstance(summary.get("scans"), list) else []
    dice = [r["mean_dice"] for r in records if r.get("mean_dice") is not None]
    skipped = [r for r in again.get("scans", []) if r.get("status") == "skipped"]
    print(json.dumps({
        "scans": args.scans, "workers": args.workers, "seconds": round(seconds, 1),
        "seconds_per_scan": round(seconds / args.scans, 2),
        "mean_dice": round(sum(dice) / len(dice), 4) if dice else None,
        "rerun_seconds": round(rerun, 1), "rerun_skipped": len(skipped),
        "shape": [48, 64, 64],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
