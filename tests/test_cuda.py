"""The CUDA path: mixed precision, pinned memory, channels-last and tiled prediction on a GPU.

Skipped where torch sees no CUDA device (CI never has one); run on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_medseg.device import autocast_dtype
from napari_medseg.inference import PredictConfig, predict, predict_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train
from napari_medseg.training.optimisation import Optimisation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def case():
    return make_synthetic_case(shape=(24, 48, 48), spacing=(2.0, 1.0, 1.0), seed=0)


def _dice(labels: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    a, b = labels[mask] == 1, truth[mask] == 1
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def test_training_runs_on_the_gpu_in_mixed_precision(case, monkeypatch):
    seen = {}
    real_step = Optimisation.step

    def spy(self, images, targets, lr):
        seen["amp"] = self.amp_dtype
        seen["pinned"] = self.pin
        seen["param_device"] = next(self.network.parameters()).device.type
        return real_step(self, images, targets, lr)

    monkeypatch.setattr(Optimisation, "step", spy)
    config = TrainConfig(iterations=150, time_budget=None, device="cuda", seed=0)
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))
    assert seen == {
        "amp": autocast_dtype(torch.device("cuda")),
        "pinned": True,
        "param_device": "cuda",
    }
    assert seen["amp"] in (torch.bfloat16, torch.float16)
    assert model.config.history["device"].startswith("cuda")
    # handed back on the CPU, in the default layout, having learnt the structure
    assert all(t.device.type == "cpu" for t in model.network.state_dict().values())
    labels = predict_volume(model, case.image, PredictConfig(device="cuda")).labels
    assert _dice(labels, case.expert_mask, case.annotation == 0) > 0.7


def test_gpu_prediction_matches_the_cpu(case):
    config = TrainConfig(iterations=30, time_budget=None, device="cpu", seed=0, base_channels=8)
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))
    on_cpu = predict_volume(model, case.image, PredictConfig(device="cpu", probabilities=True))
    on_gpu = predict_volume(model, case.image, PredictConfig(device="cuda", probabilities=True))
    # bf16/fp16 autocast on the GPU: probabilities agree to about 1e-2, labels almost everywhere
    assert np.abs(on_cpu.probabilities - on_gpu.probabilities).max() < 0.1
    assert np.mean(on_cpu.labels != on_gpu.labels) < 0.005


def test_gpu_prediction_tiles_a_large_volume_and_yields_each_tile(case):
    config = TrainConfig(iterations=2, time_budget=None, device="cuda", seed=0, base_channels=8)
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))
    big = np.tile(case.image, (2, 4, 4))  # 48 x 192 x 192
    tiles = []
    result = run_to_completion(
        predict(model, big, PredictConfig(device="cuda", tile_shape=(24, 64, 64))),
        lambda t: tiles.append(t.index),
    )
    assert result.complete and result.labels.shape == big.shape
    assert result.device.startswith("cuda")
    assert len(tiles) > 8 and tiles == sorted(tiles)


def test_an_ensemble_trains_and_reports_its_disagreement_on_the_gpu(case):
    config = TrainConfig(iterations=20, time_budget=None, device="cuda", seed=0, ensemble=2)
    model = run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))
    assert model.config.history["member_steps"] == [20, 20]
    on_gpu = predict_volume(model, case.image, PredictConfig(device="cuda", uncertainty=True))
    on_cpu = predict_volume(model, case.image, PredictConfig(device="cpu", uncertainty=True))
    assert on_gpu.device.startswith("cuda")
    assert np.abs(on_gpu.uncertainty - on_cpu.uncertainty).max() < 0.1
    assert np.mean(on_gpu.labels != on_cpu.labels) < 0.005
