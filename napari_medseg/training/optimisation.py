"""One network, its optimiser and its mixed-precision state on one device."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from ..device import autocast_dtype, memory_format_for, place, release_device
from ..losses import masked_cross_entropy, masked_soft_dice
from ..models import NetworkConfig, build_network
from ..models.calibration import batch_norm_layers, recalibrate_batch_norm
from .averaging import WeightAverage
from .config import TrainConfig
from .warm import grown_state


def import_optimiser_parts() -> None:
    """Import now what the first optimiser step would import (``torch._dynamo``, a second of
    Python). A GUI calls this on its own thread before training: in the worker, that import
    would freeze the viewer and race the GUI thread's imports. Command-line runs skip it, so
    that every ``medseg`` command does not start a second slower."""
    import torch._dynamo  # noqa: F401


class Optimisation:
    """The network, its optimiser and mixed-precision state on one device."""

    def __init__(
        self,
        config: TrainConfig,
        net_config: NetworkConfig,
        device: torch.device,
        class_weights: torch.Tensor,
        initial_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.device = device
        network = build_network(net_config)
        if initial_state is not None:  # a warm start; new classes keep their fresh weights
            network.load_state_dict(grown_state(network.state_dict(), initial_state))
        self.network = network.to(device)
        self.memory_format = memory_format_for(self.network)
        place(self.network, None, self.memory_format)
        self.network.train()
        self.weights = class_weights.to(device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=1e-4
        )
        self.amp_dtype = autocast_dtype(device, config.mixed_precision, training=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.pin = device.type == "cuda"
        self.last_good = copy.deepcopy(self.network.state_dict())
        self.average = WeightAverage(self.network) if config.weight_average else None

    @property
    def kept(self) -> torch.nn.Module:
        """The network a run validates and returns: the weight average when there is one."""
        return self.average.model if self.average is not None else self.network

    def _to_device(self, array: np.ndarray, dtype: npt.DTypeLike) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
        if self.pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=self.pin)

    def _input(self, images: np.ndarray) -> torch.Tensor:
        return self._to_device(images, np.float32).contiguous(memory_format=self.memory_format)

    def step(self, images: np.ndarray, targets: np.ndarray, lr: float) -> float:
        """One optimisation step; returns the loss (not applied when it is not finite)."""
        x = self._input(images)
        y = self._to_device(targets, np.int64)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        amp = self.amp_dtype
        with torch.autocast(self.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = self.network(x)
        loss = masked_cross_entropy(logits, y, self.weights)
        if self.config.dice_weight > 0:
            loss = loss + self.config.dice_weight * masked_soft_dice(logits, y)
        value = float(loss.detach())
        if math.isfinite(value):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.average is not None:
                self.average.update(self.network)
        return value

    def freeze_batch_norm(self) -> None:
        """From now on batch norm uses (and keeps) its running statistics, as in prediction."""
        for layer in batch_norm_layers(self.network):
            layer.eval()

    def remember_good(self) -> None:
        """Keep a copy of the current weights to fall back on."""
        self.last_good = copy.deepcopy(self.network.state_dict())

    def restore_last_good(self) -> None:
        """Return to the last weights remembered as good (the average starts again there)."""
        self.network.load_state_dict(self.last_good)
        if self.average is not None:
            self.average.reset(self.network)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of the weights and batch-norm statistics as they are now."""
        return {k: v.detach().clone() for k, v in self.kept.state_dict().items()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Put weights taken by :meth:`snapshot` back."""
        self.kept.load_state_dict(state)

    @torch.no_grad()
    def predict_classes(self, images: np.ndarray) -> np.ndarray:
        """The class of every voxel of ``(B, C, *patch)`` images, as prediction would give it
        (eval mode), without disturbing the training mode of any layer."""
        network = self.kept
        modes = {module: module.training for module in network.modules()}
        network.eval()
        try:
            amp = self.amp_dtype
            with torch.autocast(
                self.device.type, dtype=amp or torch.float32, enabled=amp is not None
            ):
                logits = network(self._input(images))
            classes: np.ndarray = logits.argmax(1).cpu().numpy()
            return classes
        finally:
            for module, mode in modes.items():
                module.training = mode

    def calibrate(self, normalized: np.ndarray, patch_shape: Sequence[int]) -> int:
        """Batch-norm statistics from tiles of ``normalized`` (returns the tile count)."""
        return recalibrate_batch_norm(
            self.kept,
            normalized,
            patch_shape,
            device=self.device,
            memory_format=self.memory_format,
            amp_dtype=self.amp_dtype,
        )

    def release(self) -> None:
        """The kept weights in the network, eval mode, back to the CPU, device memory freed."""
        if self.average is not None:
            self.network.load_state_dict(self.average.model.state_dict())
            self.average = None
        self.network.eval()
        place(self.network, "cpu", torch.contiguous_format)
        release_device(self.device)
