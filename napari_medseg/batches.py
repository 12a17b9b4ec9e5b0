"""Training batches, made on the training thread or ahead of time by worker threads.

A GPU step on a 3D U-Net takes a few tens of milliseconds; drawing and augmenting its patches
with numpy and scipy on one CPU core takes several times that (figures: docs/DEFAULTS.md).
So on a GPU the batches are made by a pool of threads (scipy's resampling releases the
GIL) and handed out in order. On a CPU, torch already uses every core for the step, and the
batches are made on the training thread, as before.

Repeatability: the serial source draws everything from the run's generator, exactly as
training always did; the prefetching source gives batch ``i`` a generator seeded from the
run's generator in order, so a fixed seed gives the same batches whatever the thread timing.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

Batch = tuple[np.ndarray, np.ndarray]
#: Makes one batch from the generator it is given.
MakeBatch = Callable[[np.random.Generator], Batch]


def default_workers(device_type: str, cpu_count: int | None = None) -> int:
    """Threads that make batches ahead of the step: none on a CPU, most cores on a GPU.

    Parameters
    ----------
    device_type : str
        ``"cpu"``, ``"cuda"`` or ``"mps"``.
    cpu_count : int, optional
        CPU cores (default: ``os.cpu_count()``).
    """
    if device_type == "cpu":
        return 0
    cores = cpu_count or os.cpu_count() or 2
    return max(1, min(16, cores - 1))


class SerialBatches:
    """Batches made on the calling thread from one generator."""

    def __init__(self, make: MakeBatch, rng: np.random.Generator) -> None:
        self._make = make
        self._rng = rng

    def next(self) -> Batch:
        """The next batch."""
        return self._make(self._rng)

    def close(self) -> None:
        """Nothing to release."""


class PrefetchedBatches:
    """Batches made ahead by ``workers`` threads and handed out in the order they were asked.

    Parameters
    ----------
    make : callable
        Makes one batch from a generator; called on worker threads at once, so it must only
        read shared state.
    rng : np.random.Generator
        Seeds one generator per batch, in order.
    workers : int
        Threads (at least 1).
    depth : int, optional
        Batches kept in flight (default: twice the workers).
    """

    def __init__(
        self, make: MakeBatch, rng: np.random.Generator, workers: int, depth: int | None = None
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._make = make
        self._rng = rng
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="medseg-batches")
        self._pending: deque[Future[Batch]] = deque()
        for _ in range(depth or 2 * workers):
            self._submit()

    def _submit(self) -> None:
        seed = int(self._rng.integers(2**63))
        self._pending.append(self._pool.submit(self._make, np.random.default_rng(seed)))

    def next(self) -> Batch:
        """The next batch (waits for it if the workers are behind); re-raises their errors."""
        future = self._pending.popleft()
        self._submit()
        return future.result()

    def close(self) -> None:
        """Drop the batches not started and wait for the running ones to end."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
