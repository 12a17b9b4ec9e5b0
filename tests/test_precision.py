"""bf16 on CPUs that compute it natively, and the switch back to float32 (core and CLI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training_inference import _cube_case  # tests/ is on the path (no package)

import napari_medseg.device as device_module
from napari_medseg.checkpoint import load_model
from napari_medseg.cli import main
from napari_medseg.device import autocast_dtype, cpu_has_fast_bf16
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.io import write_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train

CPU = torch.device("cpu")


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given flags (the answer is cached, so clear it around)."""

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(device_module, "_cpu_flags", lambda: set(flags))
        cpu_has_fast_bf16.cache_clear()

    yield set_flags
    cpu_has_fast_bf16.cache_clear()


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        (("avx2", "avx512f", "avx512_bf16"), True),  # AMD Zen 4, Intel Cooper Lake
        (("avx512f", "amx_tile", "amx_bf16"), True),  # Intel Sapphire Rapids
        (("avx2", "avx512f", "avx512bw"), False),  # AVX-512 without bf16: emulated, slower
        (("sse4_2", "avx2"), False),
        ((), False),  # no /proc/cpuinfo (macOS, Windows)
    ],
)
def test_bf16_predicts_on_a_cpu_only_where_it_is_native(cpu_flags, flags, native):
    cpu_flags(*flags)
    assert cpu_has_fast_bf16() is native
    assert autocast_dtype(CPU) == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, mixed_precision=False) is None
    assert autocast_dtype(CPU, training=True) is None  # a CPU trains in float32


def test_cpu_flags_are_read_from_the_flags_line(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC avx512_bf16\nflags\t\t: fpu avx2\n")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert device_module._cpu_flags() == {"fpu", "avx2"}  # the model name does not count


def _spy_autocast(monkeypatch) -> list:
    """Record the dtype of every autocast region entered on the CPU (``None``: disabled)."""
    seen: list = []
    real = torch.autocast

    def autocast(device_type, dtype=None, enabled=True, **kwargs):
        if device_type == "cpu":
            seen.append(dtype if enabled else None)
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    return seen


def test_such_a_cpu_trains_in_float32_and_predicts_in_bf16(cpu_flags, monkeypatch):
    cpu_flags("avx512_bf16")
    image, annotation, truth = _cube_case()
    seen_training = _spy_autocast(monkeypatch)
    config = TrainConfig(iterations=40, time_budget=None, base_channels=8, seed=0, device="cpu")
    model = run_to_completion(train(image, annotation, config, spacing=(1.0, 1.0, 1.0)))
    assert seen_training and set(seen_training) == {None}
    seen_prediction = _spy_autocast(monkeypatch)
    fast = predict_volume(model, image, PredictConfig(device="cpu")).labels
    assert seen_prediction and set(seen_prediction) == {torch.bfloat16}
    seen_prediction.clear()
    full = predict_volume(model, image, PredictConfig(device="cpu", mixed_precision=False))
    assert set(seen_prediction) == {None}
    # the same network, two precisions: labels differ at most on a few boundary voxels
    assert np.mean(fast != full.labels) < 0.01
    unknown = annotation == 0
    for labels in (fast, full.labels):
        found = (labels == 1) & unknown
        dice = 2 * (found & (truth == 1)).sum() / (found.sum() + ((truth == 1) & unknown).sum())
        assert dice > 0.8


def test_full_precision_option_of_the_command_line(cpu_flags, monkeypatch, tmp_path):
    cpu_flags("avx512_bf16")
    image, annotation, _ = _cube_case()
    image_path = write_volume(tmp_path / "image.nrrd", image)
    annotation_path = write_volume(tmp_path / "annotation.nrrd", annotation, labels=True)
    model_path = tmp_path / "m.safetensors"
    args = ["train", str(image_path), str(annotation_path), "--out", str(model_path),
            "--iterations", "2", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--full-precision"]) == 0  # recorded; on a GPU it keeps float32
    assert load_model(model_path).config.training["mixed_precision"] is False
    seen_prediction = _spy_autocast(monkeypatch)
    predict_args = ["predict", str(model_path), str(image_path), "--device", "cpu"]
    assert main([*predict_args, "--out", str(tmp_path / "a.nrrd")]) == 0
    assert set(seen_prediction) == {torch.bfloat16}
    seen_prediction.clear()
    assert main([*predict_args, "--out", str(tmp_path / "b.nrrd"), "--full-precision"]) == 0
    assert set(seen_prediction) == {None}
