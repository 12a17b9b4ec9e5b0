"""Time of one augmentation and one training step, per patch shape (no timed tests: here).

For the patches the planner chooses for typical scans, print the milliseconds that
augmenting one patch (on the CPU) and one optimisation step (batch of two, forward + backward
+ AdamW, in the precision training uses on that device) of the default 3D U-Net take on this
machine, in the default and channels-last layouts.

    .venv/bin/python benchmarks/step_speed.py
    python benchmarks/step_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from napari_medseg.augmentation import AugmentConfig, augment
from napari_medseg.device import autocast_dtype, resolve_device
from napari_medseg.models import build_network
from napari_medseg.models.planning import plan_patch_shape
from napari_medseg.training import PATCH_VOXELS, TrainConfig, network_config_for

#: name -> (image shape, spacing), array order (z, y, x).
SCANS = {
    "isotropic 1 mm (synthetic)": ((48, 64, 64), (1.0, 1.0, 1.0)),
    "thick slices 6.5 mm (brain1)": ((25, 256, 256), (6.5, 0.78, 0.78)),
    "2.1 mm slices (breast1)": ((21, 120, 45), (2.1, 0.664, 0.664)),
}


def _median_ms(fn, repeats: int, device: torch.device | None = None) -> float:
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps")
    args = parser.parse_args()
    device = resolve_device(args.device)
    amp = autocast_dtype(device, training=True)
    print(f"# step_speed: {' '.join(sys.argv)}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device} ({name})")
    print(f"autocast: {amp}\n")
    print("| scan | patch | augment ms | step ms | step ms, channels-last |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, (shape, spacing) in SCANS.items():
        patch = plan_patch_shape(shape, spacing, PATCH_VOXELS)
        # the network training builds for this patch (widths, pooling, kernels)
        net_config = network_config_for(TrainConfig(), 2, spacing, patch)
        image = rng.standard_normal((1, *patch)).astype(np.float32)
        target = rng.integers(-1, 2, patch)
        augment_ms = _median_ms(
            lambda i=image, t=target, s=spacing: augment(i, t, rng, AugmentConfig(), s),
            args.repeats,
        )
        step = []
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            torch.manual_seed(0)
            net = build_network(net_config).to(device, memory_format=layout)
            optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
            x = torch.randn(2, 1, *patch, device=device).contiguous(memory_format=layout)
            y = torch.randint(0, 2, (2, *patch), device=device)

            def one_step(net=net, optimizer=optimizer, x=x, y=y) -> None:
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=bool(amp)):
                    logits = net(x)
                torch.nn.functional.cross_entropy(logits.float(), y).backward()
                optimizer.step()

            step.append(_median_ms(one_step, args.repeats, device))
        print(
            f"| {name} | {patch} | {augment_ms:.0f} | {step[0]:.0f} | {step[1]:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
