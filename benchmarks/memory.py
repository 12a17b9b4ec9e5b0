"""Time and peak memory of predicting a CT-sized volume (300 x 512 x 512 int16).

A synthetic CT (air with noise around an elliptic body holding organs of different
densities: no region of one constant value, so no tile is skipped) is segmented with the
default 3D U-Net planned for it (trained for a few steps on the volume itself: the weights
do not change the time or the memory). The prediction runs in a fresh process so that its
peak resident memory (``VmHWM``) counts the volume, the network and the engine and
nothing else. Prints one JSON line::

    {"seconds": .., "peak_rss_mb": .., "tiles": .., "tile_shape": [..], "classes": ..,
     "shape": [..], "device": .., "mixed_precision": ..}

Usage (alone on the machine)::

    .venv/bin/python benchmarks/memory.py [--classes 4] [--shape 300 512 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ct(shape: tuple[int, int, int], classes: int, seed: int = 0) -> np.ndarray:
    """Air (-1000 HU with noise), an elliptic body (40 HU) and ``classes - 1`` organs."""
    rng = np.random.default_rng(seed)
    z, y, x = (np.linspace(-1, 1, s, dtype=np.float32) for s in shape)
    body = (y[:, None] / 0.8) ** 2 + (x[None, :] / 0.9) ** 2 < 1.0
    volume = np.full(shape, -1000, dtype=np.int16)
    volume[:, body] = 40
    for organ in range(1, classes):
        centre = rng.uniform(-0.4, 0.4, size=3)
        radius = rng.uniform(0.15, 0.3)
        inside = (
            (z[:, None, None] - centre[0]) ** 2
            + (y[None, :, None] - centre[1]) ** 2
            + (x[None, None, :] - centre[2]) ** 2
        ) < radius**2
        volume[inside] = 40 + 150 * organ
    volume += rng.normal(0, 20, size=shape).astype(np.int16)
    return volume


def labels_of(volume: np.ndarray) -> np.ndarray:
    """The structures of :func:`synthetic_ct` by intensity (organ k around 40 + 150 k HU)."""
    return np.clip(np.rint((volume.astype(np.float32) - 40) / 150), 0, 255).astype(np.uint8)


def make_model(volume: np.ndarray, classes: int, path: Path) -> None:
    """A default 3D U-Net planned for ``volume``, trained 2 steps on one painted slice."""
    from napari_medseg.checkpoint import save_model
    from napari_medseg.progress import run_to_completion
    from napari_medseg.training import TrainConfig, train

    annotation = np.zeros(volume.shape, dtype=np.uint8)
    middle = volume.shape[0] // 2
    annotation[middle] = labels_of(volume[middle]) + 1
    config = TrainConfig(iterations=2, time_budget=None, device="cpu", seed=0)
    model = run_to_completion(train(volume, annotation, config))
    if model.config.n_classes != classes:
        raise SystemExit(f"the painted slice holds {model.config.n_classes - 1} structures")
    save_model(path, model)


def predict_in_this_process(model_path: str, volume_path: str, device: str, full: bool) -> None:
    from napari_medseg.checkpoint import load_model
    from napari_medseg.inference import PredictConfig, predict, tile_overlaps
    from napari_medseg.progress import run_to_completion
    from napari_medseg.tiling import GridSampler

    model = load_model(model_path)
    volume = np.load(volume_path)
    config = PredictConfig(device=device, mixed_precision=not full)
    start = time.perf_counter()
    result = run_to_completion(predict(model, volume, config, live=False))
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    tiles = result.tile_shape
    count = len(GridSampler(volume.shape, tiles, tile_overlaps(model, config.overlap)))
    print(json.dumps({
        "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1), "tiles": count,
        "tile_shape": list(tiles), "classes": model.config.n_classes,
        "shape": list(volume.shape), "device": result.device, "mixed_precision": not full,
        "overlap": config.overlap,
        "structure_voxels": int((result.labels > 0).sum()),
    }))  # fmt: skip


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` of ``/proc/self/status`` where
    there is one (``ru_maxrss`` would count the parent's memory at ``fork``: Linux keeps it
    across ``exec``), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=4, help="classes, background included")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full-precision", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        predict_in_this_process(*args.child, args.device, args.full_precision)
        return
    with tempfile.TemporaryDirectory() as folder:
        volume = synthetic_ct(tuple(args.shape), args.classes)
        model_path, volume_path = Path(folder) / "model.safetensors", Path(folder) / "ct.npy"
        make_model(volume, args.classes, model_path)
        np.save(volume_path, volume)
        del volume
        command = [sys.executable, __file__, "--child", str(model_path), str(volume_path),
                   "--device", args.device]  # fmt: skip
        if args.full_precision:
            command.append("--full-precision")
        subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
