"""A zarr volume larger than the memory allowed, predicted into a zarr store.

Writes a ``--shape`` uint16 stack (default 2048 x 1024 x 1024: 4.3 GB of voxels), zeros with
``--blobs`` bright blobs (a sparse microscopy-like sample), slab by slab; trains the default
3D U-Net a few steps on one painted slice of a crop; then runs ``medseg predict STACK.zarr
--out LABELS.zarr`` in a process whose address space is limited to ``--limit-gb`` (3 GB:
``RLIMIT_AS``, as ``ulimit -v``), and checks the labels on a crop against an in-memory
prediction of that crop (the slices whose tiles are the same in both). One JSON line::

    {"voxels_gb": .., "limit_gb": .., "seconds": .., "vm_peak_mb": .., "peak_rss_mb": ..,
     "crop_identical": true, "retried": false, "structure_voxels": ..}

(``retried``: the run ran out of memory once and started again with smaller tiles, which
it then reports on stderr; the crop would then differ, its tiles being others.)

Usage (alone on the machine, about 10 GB free in ``--work-dir``'s file system is plenty:
the zeros compress)::

    .venv/bin/python benchmarks/out_of_core.py [--shape 2048 1024 1024] [--limit-gb 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_CHILD = """
import sys
from napari_medseg.cli import main
code = main(sys.argv[1:])
status = {l.split(':')[0]: int(l.split()[1]) for l in open('/proc/self/status')
          if l.startswith(('VmPeak', 'VmHWM'))}
print('MEMORY', status.get('VmPeak', 0), status.get('VmHWM', 0), file=sys.stderr)
sys.exit(code)
"""


def write_stack(path: Path, shape: tuple[int, int, int], blobs: int, seed: int = 0) -> None:
    """Zeros with ``blobs`` cubes of 10-20 voxels of noisy brightness, slab by slab."""
    from napari_medseg.io import ZarrLabelWriter

    rng = np.random.default_rng(seed)
    sizes = rng.integers(10, 21, blobs)
    corners = np.stack([rng.integers(0, n - 21, blobs) for n in shape], axis=1)
    with ZarrLabelWriter(path, shape, dtype=np.uint16, labels=False, verify=False) as writer:
        for start in range(0, shape[0], 64):
            slab = np.zeros((min(64, shape[0] - start), *shape[1:]), dtype=np.uint16)
            for (z, y, x), size in zip(corners, sizes):
                if start - size < z < start + slab.shape[0]:
                    local = slice(max(z - start, 0), max(0, min(z + size - start, slab.shape[0])))
                    block = slab[local, y : y + size, x : x + size]
                    block[...] = rng.integers(600, 1400, block.shape)
            writer.write(start, slab)


def train_model(stack: Path, model_path: Path, crop: int) -> np.ndarray:
    """The default 3D U-Net, 3 steps on the brightest slice of the first ``crop`` slices
    (blob = structure 1, the rest background); returns the crop."""
    from napari_medseg.checkpoint import save_model
    from napari_medseg.io import open_zarr
    from napari_medseg.progress import run_to_completion
    from napari_medseg.training import TrainConfig, train

    image = np.asarray(open_zarr(stack).array[:crop])
    annotation = np.zeros(image.shape, dtype=np.uint8)
    brightest = int(np.argmax((image > 0).sum(axis=(1, 2))))
    annotation[brightest] = (image[brightest] > 0).astype(np.uint8) + 1
    config = TrainConfig(iterations=3, time_budget=None, device="cpu", seed=0)
    save_model(model_path, run_to_completion(train(image, annotation, config)))
    return image


def run_limited(args: list[str], limit: int) -> tuple[float, int, int, bool]:
    """``medseg args`` under an address-space limit: seconds, VmPeak and VmHWM (bytes), and
    whether it ran out of memory once and retried with smaller tiles."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True,
                          text=True, preexec_fn=limited, env=dict(os.environ))  # fmt: skip
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"medseg predict failed under the limit:\n{done.stderr[-3000:]}")
    peak, hwm = done.stderr.split("MEMORY ")[-1].split()[:2]
    return seconds, int(peak) * 1024, int(hwm) * 1024, "retrying" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(2048, 1024, 1024))
    parser.add_argument("--blobs", type=int, default=300)
    parser.add_argument("--limit-gb", type=float, default=3.0)
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args()
    from napari_medseg.checkpoint import load_model
    from napari_medseg.inference import default_tile_shape
    from napari_medseg.io import open_zarr, write_volume
    from napari_medseg.tiling import GridSampler

    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        stack, out, model_path = (Path(folder) / n for n in ("stack.zarr", "labels.zarr", "m"))
        write_stack(stack, shape, args.blobs)
        crop = train_model(stack, model_path.with_suffix(".safetensors"), 200)
        limit = int(args.limit_gb * (1 << 30))
        seconds, peak, hwm, retried = run_limited(
            ["predict", str(model_path.with_suffix(".safetensors")), str(stack), "--out",
             str(out), "--device", "cpu"], limit,
        )  # fmt: skip
        labels = open_zarr(out).array
        # the crop in memory, by the same command in a fresh process under the same limit
        # (oneDNN picks other bf16 kernels under it: 0.25 % of the voxels differ otherwise)
        write_volume(Path(folder) / "crop.npy", crop)
        run_limited(["predict", str(model_path.with_suffix(".safetensors")),
                     str(Path(folder) / "crop.npy"), "--out", str(Path(folder) / "crop_seg.npy"),
                     "--device", "cpu"], limit)  # fmt: skip
        in_memory = np.load(Path(folder) / "crop_seg.npy")
        tiles = default_tile_shape(load_model(model_path.with_suffix(".safetensors")), crop.shape)
        rows = [start for start, _ in GridSampler(crop.shape, tiles, 0.25).rows()]
        same = rows[-1]  # slices before the crop's last row of tiles: the same tiles
        differing = int((np.asarray(labels[:same]) != in_memory[:same]).sum())
        counted = sum(int((np.asarray(labels[s : s + 128]) > 0).sum())
                      for s in range(0, shape[0], 128))  # fmt: skip
    print(json.dumps({
        "voxels_gb": round(np.prod(shape) * 2 / 1e9, 2), "shape": list(shape),
        "limit_gb": args.limit_gb, "seconds": round(seconds, 1),
        "vm_peak_mb": round(peak / 2**20), "peak_rss_mb": round(hwm / 2**20),
        "crop_identical": differing == 0, "crop_voxels_differing": differing,
        "crop_slices_compared": same, "retried": retried,
        "tile_shape": list(tiles), "structure_voxels": counted,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
