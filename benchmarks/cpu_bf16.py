"""bf16 on a CPU that computes it natively (AVX-512 BF16 or AMX): speed, and what it changes.

``speed`` prints the milliseconds of one training step (batch of two, forward + backward +
AdamW) and of one prediction tile (the default tile) of each network, in float32 and under
bf16 autocast, for the patches the planner chooses.

``quality`` trains the default 3D U-Net on a case (in float32, as training on a CPU does),
predicts with it in float32 and in bf16, and prints one JSON line per seed: steps, Dice on the
voxels nobody painted for each, and how many voxels the two predictions label differently.
``--train-bf16`` also trains a second network in bf16 with the same seed (what an earlier
version did on such CPUs, for the record; see :func:`napari_medseg.device.autocast_dtype`).
Runs are sequential; run it alone::

    .venv/bin/python benchmarks/cpu_bf16.py speed
    .venv/bin/python benchmarks/cpu_bf16.py quality --cases brain_tissue --budget 120 --seeds 0,1
    .venv/bin/python benchmarks/cpu_bf16.py quality --cases brain1 --budget 180 --train-bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import numpy as np
import torch
from paper_table import load_case  # benchmarks/ is on the path when run as a script
from step_speed import _median_ms

from napari_medseg.device import cpu_has_fast_bf16, memory_format_for
from napari_medseg.inference import PredictConfig, predict, tile_shape_for
from napari_medseg.losses import masked_cross_entropy, masked_soft_dice
from napari_medseg.metrics import evaluate
from napari_medseg.models import build_network
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, network_config_for, patch_shape_for, train

#: name -> (image shape, spacing), array order (z, y, x).
SCANS = {
    "three-tissue brain, 2 mm": ((81, 97, 79), (2.0, 2.0, 2.0)),
    "brain1, 6.5 mm slices": ((25, 256, 256), (6.5, 0.78, 0.78)),
}


def _timings(arch: str, shape, spacing, amp: torch.dtype | None, repeats: int):
    """(patch, tile, training step ms, prediction tile ms) of ``arch`` in ``amp``."""
    config = TrainConfig(arch=arch)
    patch = patch_shape_for(config, shape, spacing)
    torch.manual_seed(0)
    network = build_network(network_config_for(config, 4, spacing, patch))
    layout = memory_format_for(network)
    network = network.to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    x = torch.randn(2, 1, *patch).contiguous(memory_format=layout)
    y = torch.randint(-1, 4, (2, *patch))
    weights = torch.ones(4)

    def autocast():
        return torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None)

    def step() -> None:
        optimizer.zero_grad()
        with autocast():
            logits = network(x)
        (masked_cross_entropy(logits, y, weights) + masked_soft_dice(logits, y)).backward()
        optimizer.step()

    train_ms = _median_ms(step, repeats)
    network.eval()
    tile = tile_shape_for(arch, patch, shape)
    xt = torch.randn(1, 1, *tile).contiguous(memory_format=layout)

    def infer() -> None:
        with torch.inference_mode(), autocast():
            network(xt)

    return patch, tile, train_ms, _median_ms(infer, repeats)


def speed(repeats: int) -> None:
    print(f"# cpu_bf16 speed: torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| network | scan | patch | step ms fp32 | step ms bf16 | tile | tile ms fp32 "
          "| tile ms bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in ("unet3d", "unet2d", "fcn"):
        for name, (shape, spacing) in SCANS.items():
            patch, tile, step32, infer32 = _timings(arch, shape, spacing, None, repeats)
            _, _, step16, infer16 = _timings(arch, shape, spacing, torch.bfloat16, repeats)
            print(
                f"| {arch} | {name} | {patch} | {step32:.0f} | {step16:.0f} | {tile} "
                f"| {infer32:.0f} | {infer16:.0f} |",
                flush=True,
            )


@contextlib.contextmanager
def _cpu_training_in_bf16():
    """Let training use the prediction's autocast dtype, as an earlier version did."""
    import napari_medseg.training.optimisation as optimisation

    real = optimisation.autocast_dtype
    optimisation.autocast_dtype = lambda device, mixed_precision=True, training=False: real(
        device, mixed_precision
    )
    try:
        yield
    finally:
        optimisation.autocast_dtype = real


def _train(case, budget: float, seed: int, bf16: bool):
    config = TrainConfig(time_budget=budget, seed=seed)
    with _cpu_training_in_bf16() if bf16 else contextlib.nullcontext():
        return run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))


def quality(cases: list[str], budget: float, seeds: list[int], train_bf16: bool) -> None:
    for name in cases:
        case = load_case(name)
        labels = [int(v) for v in np.unique(case.expert) if v]
        scored = case.annotation == 0
        for seed in seeds:
            row: dict = {"case": name, "budget": budget, "seed": seed}
            for trained in ("fp32", "bf16") if train_bf16 else ("fp32",):
                model = _train(case, budget, seed, bf16=trained == "bf16")
                row[f"steps_{trained}"] = model.config.history["steps"]
                segs = {}
                for predicted in ("fp32", "bf16"):
                    start = time.perf_counter()
                    precision = PredictConfig(mixed_precision=predicted == "bf16")
                    segs[predicted] = run_to_completion(
                        predict(model, case.image, precision)
                    ).labels
                    row[f"predict_s_{predicted}"] = round(time.perf_counter() - start, 2)
                    result = evaluate(
                        segs[predicted],
                        case.expert,
                        labels=labels,
                        mask=scored,
                        surface_distances=False,
                    )
                    row[f"dice_{trained}_{predicted}"] = round(result.mean.dice, 4)
                differ = int(np.count_nonzero(segs["fp32"] != segs["bf16"]))
                row[f"voxels_differ_{trained}"] = differ
            print(json.dumps(row), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["speed", "quality"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", default="brain_tissue", help="comma-separated case names")
    parser.add_argument("--budget", type=float, default=120.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--train-bf16", action="store_true", help="also train in bf16")
    args = parser.parse_args()
    if not cpu_has_fast_bf16():
        print("this CPU has no native bf16 (AVX-512 BF16 or AMX): nothing to compare")
        return 0
    if args.what == "speed":
        speed(args.repeats)
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        quality(args.cases.split(","), args.budget, seeds, args.train_bf16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
