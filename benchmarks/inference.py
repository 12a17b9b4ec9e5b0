"""Tiled prediction: napari-medseg's engine against MONAI's ``sliding_window_inference``.

The same trained 3D U-Net, the same tiles and overlap, side by side in one process,
alternating runs, median of ``--repeats``:

- ``seconds``: :func:`napari_medseg.inference.predict` with its defaults (bf16 where the
  device computes it natively, channels-last, batch norm folded), labels only;
- ``monai_seconds``: MONAI's default use (float32, the network as trained, Gaussian
  blending as ours, one tile per batch);
- ``monai_same_precision_seconds``: MONAI given our precision and memory format (the same
  autocast dtype, channels-last network and input).

Also printed: GFLOP/s of our run (the network's FLOPs per tile, counted by torch, times the
tiles computed), the machine's measured conv3d peaks in bf16 and float32, the peak resident
memory of a run of ours in a fresh process, and the Dice between our default labels and our
float32 labels. The case: the three-tissue brain template (``brain_tissue``) resampled to
about 1 mm (159 x 189 x 153), a 3D U-Net trained ``--train-seconds`` on its painted slices
(cached in ``benchmarks/.cache``). One JSON line::

    {"seconds": .., "monai_seconds": .., "monai_same_precision_seconds": .., "speedup": ..,
     "speedup_same_precision": .., "gflops": .., "peak_rss_mb": .., "dice_vs_fp32": ..}

Usage (alone on the machine; needs ``pip install 'napari-medseg[bench]'`` for MONAI)::

    .venv/bin/python benchmarks/inference.py [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

CACHE = Path(__file__).resolve().parent / ".cache"
SHAPE = (159, 189, 153)


def load_case() -> tuple[np.ndarray, np.ndarray]:
    """The brain template and its painted slices, resampled to :data:`SHAPE`."""
    from scipy.ndimage import zoom

    from napari_medseg.sample_data import BRAIN_TISSUE, load_real_case
    from napari_medseg.slice_painting import paint_slices_per_axis

    case = load_real_case(BRAIN_TISSUE)
    factors = [t / s for t, s in zip(SHAPE, case.image.shape)]
    image = zoom(case.image.array.astype(np.float32), factors, order=1)
    expert = zoom(case.label.array, factors, order=0)
    return image, paint_slices_per_axis(expert, (3, 3, 3))[0]


def trained_model(seconds: float, device: str):
    from napari_medseg.checkpoint import load_model, save_model
    from napari_medseg.progress import run_to_completion
    from napari_medseg.training import TrainConfig, train

    path = CACHE / f"inference_brain_{seconds:g}s.safetensors"
    if not path.exists():
        image, annotation = load_case()
        config = TrainConfig(time_budget=seconds, device=device, seed=0)
        CACHE.mkdir(exist_ok=True)
        save_model(path, run_to_completion(train(image, annotation, config)))
    return load_model(path), path


def ours(model, image, device: str, tiles, overlap: float, mixed: bool = True):
    from napari_medseg.inference import PredictConfig, predict
    from napari_medseg.progress import run_to_completion

    config = PredictConfig(device=device, overlap=overlap, tile_shape=tiles,
                           mixed_precision=mixed)  # fmt: skip
    return run_to_completion(predict(model, image, config, live=False))


def monai(model, image, device: str, tiles, overlap: float, same_precision: bool) -> np.ndarray:
    """Labels by MONAI's sliding window over the same network (normalised as ours)."""
    from monai.inferers import sliding_window_inference

    from napari_medseg.device import autocast_dtype, memory_format_for, place

    target = torch.device(device)
    layout = memory_format_for(model.network) if same_precision else torch.contiguous_format
    network = place(model.network, target, layout).eval()
    amp = autocast_dtype(target) if same_precision else None
    x = torch.from_numpy(model.config.normalization.apply(image))[None, None].to(target)
    x = x.contiguous(memory_format=layout)

    def predictor(tile: torch.Tensor) -> torch.Tensor:
        tile = tile.contiguous(memory_format=layout)
        return torch.softmax(network(tile).float(), dim=1)

    with torch.inference_mode(), torch.autocast(target.type, dtype=amp or torch.float32,
                                                enabled=amp is not None):  # fmt: skip
        scores = sliding_window_inference(
            x, tiles, 1, predictor, overlap=overlap, mode="gaussian", sigma_scale=0.125
        )
    labels = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
    place(model.network, "cpu", torch.contiguous_format)
    return labels


def tile_flops(model, tiles, device: str) -> float:
    """FLOPs of the network on one tile, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    network = model.network.to(device).eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.zeros((1, 1, *tiles), device=device))
    model.network.to("cpu")
    return float(counter.get_total_flops())


def conv_peak_gflops(device: str, dtype: torch.dtype) -> float:
    """Throughput of a wide 3D convolution (64 -> 64 channels, 3^3, 48^3 voxels)."""
    conv = torch.nn.Conv3d(64, 64, 3, padding=1, bias=False).to(device)
    conv = conv.to(memory_format=torch.channels_last_3d).eval()
    x = torch.randn(1, 64, 48, 48, 48, device=device).contiguous(
        memory_format=torch.channels_last_3d
    )
    flops = 2 * 64 * 64 * 27 * 48**3
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=dtype,
                                                enabled=dtype != torch.float32):  # fmt: skip
        conv(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            conv(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return flops / min(times) / 1e9


def dice(a: np.ndarray, b: np.ndarray) -> float:
    scores = []
    for k in np.union1d(np.unique(a), np.unique(b)):
        if k == 0:
            continue
        x, y = a == k, b == k
        scores.append(2 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum()))
    return float(np.mean(scores)) if scores else 1.0


def child_peak(model_path: Path, device: str, tiles, overlap: float) -> float:
    """Peak resident memory (MB) of one run of ours in a fresh process."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from inference import load_case, ours\n"
        "from memory import peak_rss_mb\n"
        "from napari_medseg.checkpoint import load_model\n"
        f"image, _ = load_case(); model = load_model({str(model_path)!r})\n"
        f"ours(model, image, {device!r}, {tuple(tiles)!r}, {overlap!r})\n"
        "print(peak_rss_mb())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--train-seconds", type=float, default=60)
    args = parser.parse_args()
    model, path = trained_model(args.train_seconds, args.device)
    image, _ = load_case()
    first = ours(model, image, args.device, None, args.overlap)
    tiles = tuple(first.tile_shape)
    timings: dict[str, list[float]] = {"ours": [], "monai": [], "monai_same": []}
    runs = {
        "ours": lambda: ours(model, image, args.device, tiles, args.overlap),
        "monai": lambda: monai(model, image, args.device, tiles, args.overlap, False),
        "monai_same": lambda: monai(model, image, args.device, tiles, args.overlap, True),
    }
    for run in runs.values():  # warm-up
        run()
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if args.device == "cuda":
                torch.cuda.synchronize()
            timings[name].append(time.perf_counter() - start)
    seconds = {name: statistics.median(values) for name, values in timings.items()}
    full = ours(model, image, args.device, tiles, args.overlap, mixed=False)
    from napari_medseg.tiling import GridSampler

    count = len(GridSampler(image.shape, tiles, args.overlap))
    flops = tile_flops(model, tiles, args.device) * count
    print(json.dumps({
        "seconds": round(seconds["ours"], 3),
        "monai_seconds": round(seconds["monai"], 3),
        "monai_same_precision_seconds": round(seconds["monai_same"], 3),
        "speedup": round(seconds["monai"] / seconds["ours"], 2),
        "speedup_same_precision": round(seconds["monai_same"] / seconds["ours"], 2),
        "gflops": round(flops / seconds["ours"] / 1e9, 1),
        "peak_rss_mb": round(child_peak(path, args.device, tiles, args.overlap), 1),
        "dice_vs_fp32": round(dice(first.labels, full.labels), 4),
        "dice_vs_monai": round(dice(first.labels, monai(
            model, image, args.device, tiles, args.overlap, False)), 4),
        "peak_gflops_bf16": round(conv_peak_gflops(args.device, torch.bfloat16), 1),
        "peak_gflops_fp32": round(conv_peak_gflops(args.device, torch.float32), 1),
        "tiles": count, "tile_shape": list(tiles), "shape": list(image.shape),
        "device": first.device, "repeats": args.repeats, "torch": torch.__version__,
        "max_rss_this_process_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
