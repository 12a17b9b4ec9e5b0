"""Running out of CPU memory while predicting: smaller tiles, then one clear line.

The retry that CUDA out-of-memory errors had (tiles halved, then the CPU) also takes the
CPU allocator's errors (``RuntimeError: DefaultCPUAllocator: can't allocate memory`` from
torch, ``MemoryError`` from numpy). Simulated by a tile forward that fails on large tiles
or always; and once for real, in a subprocess whose address space is limited
(``RLIMIT_AS``) so that the default tile does not fit but half of it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_medseg._passes as passes
from napari_medseg.cli import main
from napari_medseg.errors import MedsegError
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.io import write_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"


@pytest.fixture(scope="module")
def model():
    case = make_synthetic_case(shape=(16, 24, 24))
    config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu")
    return run_to_completion(train(case.image, case.annotation, config)), case.image


def _failing_forward(monkeypatch, error: BaseException, above: int = -1) -> list[tuple]:
    """Make the tile forward raise ``error`` for tiles of more than ``above`` voxels."""
    real, seen = passes.forward, []

    def forward(network, x, amp, mirror, uncertainty=False):
        seen.append(tuple(x.shape[2:]))
        if int(np.prod(x.shape[2:])) > above:
            raise error
        return real(network, x, amp, mirror, uncertainty)

    monkeypatch.setattr(passes, "forward", forward)
    return seen


@pytest.mark.parametrize(
    "error",
    [RuntimeError(CPU_OOM), MemoryError(), RuntimeError("[enforce fail] out of memory")],
    ids=["torch-allocator", "MemoryError", "out-of-memory"],
)
def test_cpu_out_of_memory_retries_with_smaller_tiles(monkeypatch, model, error):
    network_model, image = model
    seen = _failing_forward(monkeypatch, error, above=8 * 12 * 12)
    messages: list[str] = []
    config = PredictConfig(device="cpu", tile_shape=(16, 24, 24))
    result = run_to_completion(
        predict(network_model, image, config), lambda t: messages.append(t.message)
    )
    assert result.complete and result.labels.shape == image.shape
    assert any("out of memory: retrying with smaller tiles (8, 12, 12)" in m for m in messages)
    assert seen[0] == (16, 24, 24) and max(np.prod(s) for s in seen[1:]) <= 8 * 12 * 12


def test_cpu_out_of_memory_even_with_the_smallest_tiles_is_one_clear_error(monkeypatch, model):
    network_model, image = model
    _failing_forward(monkeypatch, RuntimeError(CPU_OOM))
    with pytest.raises(MedsegError) as raised:
        run_to_completion(predict(network_model, image, PredictConfig(device="cpu")))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("not enough memory to predict even with tiles of 8 x 8 x 8 voxels")
    assert "close other programs or use a smaller volume" in message


def test_other_runtime_errors_are_not_taken_for_out_of_memory(monkeypatch, model):
    network_model, image = model
    seen = _failing_forward(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        run_to_completion(predict(network_model, image, PredictConfig(device="cpu")))
    assert len(seen) == 1  # no retry


def test_cli_out_of_memory_is_one_line_and_writes_nothing(monkeypatch, model, tmp_path, capsys):
    from napari_medseg.checkpoint import save_model

    network_model, image = model
    save_model(tmp_path / "m.safetensors", network_model)
    write_volume(tmp_path / "image.nii.gz", image)
    _failing_forward(monkeypatch, RuntimeError(CPU_OOM))
    seg = tmp_path / "seg.nii.gz"
    code = main(["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "image.nii.gz"),
                 "--out", str(seg), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith("medseg predict: error: not enough memory to predict"), err
    assert not seg.exists()


def test_cli_memory_error_outside_the_tiles_is_one_line(monkeypatch, tmp_path, capsys):
    """Memory that runs out where no smaller tile helps (reading the image): one line, 1."""
    import napari_medseg.api as api

    def no_memory(*args, **kwargs):
        raise MemoryError

    image = write_volume(tmp_path / "image.nii.gz", np.zeros((4, 8, 8), np.float32))
    monkeypatch.setattr(api, "read_volume", no_memory)
    code = main(["train", str(image), str(image), "--out", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert (
        err.strip() == "medseg train: error: not enough memory: close other programs or "
        "use a smaller volume"
    ), err


# ---- for real: a process whose address space is limited --------------------------------

TILE = (64, 192, 192)
HALF = (32, 96, 96)
_PEAK = """
import sys
from napari_medseg.cli import main
code = main(sys.argv[1:])
peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmPeak:')]
print('peak', peak[0] if peak else 0, 'exit', code, file=sys.stderr)
sys.exit(code)
"""


def _run_limited(args: list[str], limit: int | None) -> subprocess.CompletedProcess[str]:
    """``medseg args`` in a subprocess, its address space limited to ``limit`` bytes."""
    import resource

    def limited() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MALLOC_ARENA_MAX": "2", "PYTHONPATH": str(REPO)}  # fmt: skip
    return subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True,
                          env=env, timeout=300, preexec_fn=limited)  # fmt: skip


def _peak(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    return int(result.stderr.split("peak ")[-1].split()[0]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_real_out_of_memory_under_an_address_space_limit_retries_and_finishes(tmp_path):
    from napari_medseg.checkpoint import save_model

    case = make_synthetic_case(shape=(16, 24, 24))
    config = TrainConfig(iterations=1, time_budget=None, device="cpu")  # default width
    trained = run_to_completion(train(case.image, case.annotation, config))
    save_model(tmp_path / "m.safetensors", trained)
    image = np.random.default_rng(0).random(TILE, dtype=np.float32)
    write_volume(tmp_path / "big.nii.gz", image)
    args = ["predict", str(tmp_path / "m.safetensors"), str(tmp_path / "big.nii.gz"),
            "--out", str(tmp_path / "seg.nii.gz"), "--device", "cpu", "--tile-shape"]  # fmt: skip
    half = _peak(_run_limited([*args, *map(str, HALF)], None))  # measured: what fits
    full = _peak(_run_limited([*args, *map(str, TILE)], None))
    if full - half < 64 << 20:
        pytest.skip(f"a full tile needs only {(full - half) >> 20} MB more than half a tile")
    (tmp_path / "seg.nii.gz").unlink()
    limit = (half + full) // 2
    done = _run_limited([*args, *map(str, TILE)], limit)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "out of memory: retrying with smaller tiles" in done.stderr, done.stderr
    assert (tmp_path / "seg.nii.gz").exists()
