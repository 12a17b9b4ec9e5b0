"""Training batches made ahead by worker threads: same batches for a seed, errors surface."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medseg.batches import PrefetchedBatches, SerialBatches, default_workers
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train


def _make(rng: np.random.Generator):
    return rng.standard_normal((2, 3)), rng.integers(0, 5, (2, 3))


def test_prefetched_batches_do_not_depend_on_thread_timing():
    first = PrefetchedBatches(_make, np.random.default_rng(3), workers=4)
    second = PrefetchedBatches(_make, np.random.default_rng(3), workers=1, depth=1)
    try:
        for _ in range(20):
            (a, b), (c, d) = first.next(), second.next()
            assert np.array_equal(a, c) and np.array_equal(b, d)
    finally:
        first.close()
        second.close()


def test_batches_come_from_worker_threads_and_errors_reach_the_caller():
    names = set()

    def make(rng):
        names.add(threading.current_thread().name)
        if rng.random() < 0.2:
            raise RuntimeError("augmentation failed")
        return _make(rng)

    batches = PrefetchedBatches(make, np.random.default_rng(0), workers=2)
    with pytest.raises(RuntimeError, match="augmentation failed"):
        for _ in range(100):
            batches.next()
    batches.close()
    assert names and all(n.startswith("medseg-batches") for n in names)


def test_serial_batches_draw_from_the_run_generator():
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    a = SerialBatches(_make, rng_a).next()
    assert np.array_equal(a[0], _make(rng_b)[0])


def test_worker_count_follows_the_device():
    assert default_workers("cpu", cpu_count=64) == 0
    assert default_workers("cuda", cpu_count=16) == 15
    assert default_workers("cuda", cpu_count=128) == 16
    assert default_workers("mps", cpu_count=1) == 1


def test_training_with_batch_workers_repeats_for_a_seed_and_learns():
    case = make_synthetic_case(shape=(16, 32, 32), seed=0)
    config = TrainConfig(
        iterations=3, time_budget=None, device="cpu", seed=4, base_channels=4, batch_workers=2
    )
    a = run_to_completion(train(case.image, case.annotation, config))
    b = run_to_completion(train(case.image, case.annotation, config))
    assert a.config.history["batch_workers"] == 2
    for ta, tb in zip(a.network.state_dict().values(), b.network.state_dict().values()):
        assert np.array_equal(ta.numpy(), tb.numpy())
    serial = run_to_completion(
        train(case.image, case.annotation, TrainConfig(**{**config.__dict__, "batch_workers": 0}))
    )
    assert serial.config.history["batch_workers"] == 0
    assert not all(
        np.array_equal(ta.numpy(), tb.numpy())
        for ta, tb in zip(a.network.state_dict().values(), serial.network.state_dict().values())
    )
