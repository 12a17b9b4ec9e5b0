"""Time of one augmentation and one training step, per patch shape (no timed tests: here).

For the patches the planner chooses for typical scans, print the milliseconds that
augmenting one patch and one optimisation step (batch of two, forward + backward + AdamW) of
the default 3D U-Net take on this machine, in the default and channels-last layouts.

    .venv/bin/python benchmarks/step_speed.py
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from napari_medseg.augmentation import AugmentConfig, augment
from napari_medseg.models import build_network
from napari_medseg.models.planning import plan_patch_shape
from napari_medseg.training import PATCH_VOXELS, TrainConfig, _network_config

#: name -> (image shape, spacing), array order (z, y, x).
SCANS = {
    "isotropic 1 mm (synthetic)": ((48, 64, 64), (1.0, 1.0, 1.0)),
    "thick slices 6.5 mm (brain1)": ((25, 256, 256), (6.5, 0.78, 0.78)),
    "2.1 mm slices (breast1)": ((21, 120, 45), (2.1, 0.664, 0.664)),
}


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"# step_speed: {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| scan | patch | augment ms | step ms | step ms, channels-last |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, (shape, spacing) in SCANS.items():
        patch = plan_patch_shape(shape, spacing, PATCH_VOXELS["cpu"])
        # the network training builds for this patch (widths, pooling, kernels)
        net_config = _network_config(TrainConfig(), 2, spacing, patch, torch.device("cpu"))
        image = rng.standard_normal((1, *patch)).astype(np.float32)
        target = rng.integers(-1, 2, patch)
        augment_ms = _median_ms(
            lambda i=image, t=target, s=spacing: augment(i, t, rng, AugmentConfig(), s),
            args.repeats,
        )
        step = []
        for layout in (torch.contiguous_format, torch.channels_last_3d):
            torch.manual_seed(0)
            net = build_network(net_config).to(memory_format=layout)
            optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
            x = torch.randn(2, 1, *patch).contiguous(memory_format=layout)
            y = torch.randint(0, 2, (2, *patch))

            def one_step(net=net, optimizer=optimizer, x=x, y=y) -> None:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                optimizer.step()

            step.append(_median_ms(one_step, args.repeats))
        print(
            f"| {name} | {patch} | {augment_ms:.0f} | {step[0]:.0f} | {step[1]:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
