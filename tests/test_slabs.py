"""Prediction with class scores held for a slab: the same labels as the whole-volume
aggregator, a lazy volume read a row of tiles at a time, slabs handed to a sink in order,
constant tiles computed once, batch norm folded without changing the function."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import napari_medseg._stream as stream
from napari_medseg.inference import PredictConfig, predict
from napari_medseg.models.fusion import fused_for_inference
from napari_medseg.models.unet3d import UNet3D
from napari_medseg.progress import run_to_completion
from napari_medseg.slabs import MemorySink, SlabAggregator
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.tiling import GaussianAggregator, GridSampler
from napari_medseg.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained():
    case = make_synthetic_case(shape=(40, 32, 36), seed=3)
    config = TrainConfig(
        iterations=2, time_budget=None, base_channels=4, device="cpu", patch_shape=(16, 16, 16)
    )
    return run_to_completion(train(case.image, case.annotation, config)), case.image


class CountingVolume:
    """A lazy volume: records every read along the first axis."""

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.reads = array, []
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key):
        z = key if isinstance(key, slice) else key[0]
        self.reads.append((z.start, z.stop))
        return self.array[key]


class RecordingSink:
    def __init__(self, shape):
        self.array = np.full(shape, 255, dtype=np.uint8)
        self.starts: list[tuple[int, int]] = []

    def write(self, start: int, labels: np.ndarray) -> None:
        self.starts.append((start, start + labels.shape[0]))
        self.array[start : start + labels.shape[0]] = labels


def test_slab_aggregator_equals_the_whole_volume_aggregator():
    rng = np.random.default_rng(0)
    shape, tile = (37, 20, 23), (12, 10, 9)
    sampler = GridSampler(shape, tile, overlap=0.4)
    whole = GaussianAggregator(3, shape, sampler.tile_shape)
    slab = SlabAggregator(3, shape, sampler.tile_shape, torch.device("cpu"), weighted=True)
    sink = MemorySink(shape, 3, probabilities=True)
    rows = sampler.rows()
    assert [r for _, regions in rows for r in regions] == list(sampler)
    for number, (_, regions) in enumerate(rows):
        for region in regions:
            scores = rng.random((3, *sampler.tile_shape)).astype(np.float32)
            whole.add(region, scores)
            slab.add(region, torch.from_numpy(scores))
        following = rows[number + 1][0] if number + 1 < len(rows) else shape[0]
        sink.take(slab.release(following))
    assert np.array_equal(sink.labels, whole.labels())
    np.testing.assert_allclose(sink.probabilities, whole.probabilities(), rtol=1e-5, atol=1e-6)


def test_a_tile_outside_the_window_is_refused():
    slab = SlabAggregator(2, (30, 8, 8), (10, 8, 8), torch.device("cpu"))
    slab.release(5)
    with pytest.raises(ValueError, match="outside the window"):
        slab.add((slice(0, 10), slice(0, 8), slice(0, 8)), torch.zeros(2, 10, 8, 8))


def test_lazy_volume_is_read_a_row_at_a_time_and_gives_the_same_labels(trained):
    model, image = trained
    config = PredictConfig(device="cpu", tile_shape=(16, 16, 16), mixed_precision=False)
    expected = run_to_completion(predict(model, image, config)).labels
    lazy = CountingVolume(image)
    sink = RecordingSink(image.shape)
    result = run_to_completion(predict(model, lazy, config, sink=sink, live=False))
    assert result.complete and result.labels is sink.array
    assert np.array_equal(sink.array, expected)
    assert max(stop - start for start, stop in lazy.reads) == 16  # never the whole volume
    covered = [z for start, stop in sink.starts for z in range(start, stop)]
    assert covered == list(range(image.shape[0]))  # each slice once, in order


def test_live_labels_only_when_asked(trained):
    model, image = trained
    config = PredictConfig(device="cpu", tile_shape=(16, 16, 16))
    quiet = list(_progress(predict(model, image, config, live=False)))
    shown = list(_progress(predict(model, image, config)))
    assert all(tile.labels is None for tile in quiet)
    assert all(tile.labels.shape == tuple(s.stop - s.start for s in tile.region) for tile in shown)


def _progress(generator):
    while True:
        try:
            yield next(generator)
        except StopIteration:
            return


def test_constant_tiles_are_computed_once_with_the_same_result(trained, monkeypatch):
    model, image = trained
    padded = np.pad(image, ((0, 0), (0, 0), (0, 40)), constant_values=image.min() - 50)
    config = PredictConfig(device="cpu", tile_shape=(16, 16, 16), mixed_precision=False)
    seen: list[stream.CachedTiles] = []
    real = stream.CachedTiles

    def recorded(compute):
        seen.append(real(compute))
        return seen[-1]

    monkeypatch.setattr(stream, "CachedTiles", recorded)
    cached = run_to_completion(predict(model, padded, config)).labels
    assert seen[0].reused > 0

    class Uncached(real):
        def __call__(self, tile):
            return self._scores(tile)

    monkeypatch.setattr(stream, "CachedTiles", Uncached)
    assert np.array_equal(run_to_completion(predict(model, padded, config)).labels, cached)


def test_stopped_prediction_keeps_the_finished_tiles(trained):
    model, image = trained
    stop = threading.Event()
    generator = predict(model, image, PredictConfig(device="cpu", tile_shape=(16, 16, 16)),
                        stop=stop)  # fmt: skip
    next(generator)
    stop.set()
    result = run_to_completion(generator)
    assert not result.complete
    assert result.labels.shape == image.shape


def test_probabilities_and_uncertainty_stream_into_memory(trained):
    model, image = trained
    config = PredictConfig(
        device="cpu", tile_shape=(16, 16, 16), probabilities=True, uncertainty=True
    )
    result = run_to_completion(predict(model, image, config))
    assert result.probabilities.shape == (model.config.n_classes, *image.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-3)
    assert np.array_equal(result.labels, result.probabilities.argmax(0))
    assert result.uncertainty.shape == image.shape
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0


@pytest.mark.parametrize("norm_groups", [0, 4])
def test_folding_batch_norm_keeps_the_function(norm_groups):
    torch.manual_seed(0)
    network = UNet3D(in_channels=1, n_classes=3, base_channels=4, norm_groups=norm_groups)
    network.train()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(3):
            network(torch.randn(2, 1, 16, 16, 16) * 3 + 1)
    network.eval()
    fused = fused_for_inference(network)
    x = torch.randn(1, 1, 16, 24, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), network(x), rtol=1e-4, atol=1e-4)
    batch_norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bool(batch_norms) == (norm_groups == 0)  # the trained network is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fused.modules())


def test_a_2d_network_computes_each_slice_once(monkeypatch):
    import napari_medseg.inference as inference

    case = make_synthetic_case(shape=(20, 32, 32), seed=4)
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu",
                         arch="unet2d")  # fmt: skip
    model = run_to_completion(train(case.image, case.annotation, config))
    settings = PredictConfig(device="cpu", tile_shape=(4, 16, 16), overlap=0.5,
                             mixed_precision=False)  # fmt: skip
    assert inference.tile_overlaps(model, 0.5) == (0.0, 0.5, 0.5)
    tiles: list = []
    alone = run_to_completion(predict(model, case.image, settings), tiles.append)
    monkeypatch.setattr(inference, "tile_overlaps", lambda model, o: (o, o, o))
    shared: list = []
    twice = run_to_completion(predict(model, case.image, settings), shared.append)
    starts = sorted({tile.region[0].start for tile in tiles})
    assert starts == [0, 4, 8, 12, 16]  # each slice in one tile
    assert len(shared) > len(tiles)  # slices computed more than once
    # the same slices' scores, blended with other weights (Gaussian weights floored at the
    # tiles' corners): a near-untrained network's labels barely move
    assert np.mean(alone.labels == twice.labels) > 0.97
