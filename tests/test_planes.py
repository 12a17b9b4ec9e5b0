"""2D networks on the three orthogonal planes: which planes, training on them, averaging."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_checkpoint import rewrite_config

from napari_medseg.checkpoint import TrainedModel, load_model, save_model
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig, predict, predict_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, choose_planes, plan_training, train
from napari_medseg.training.loop import make_batch, plane_samplers

SHAPE = (12, 16, 20)  # every axis a different length: a plane mix-up changes shapes


@pytest.fixture(scope="module")
def case():
    return make_synthetic_case(shape=SHAPE, seed=0, slices_per_axis=(1, 1, 1))


def train_three_planes(case, iterations: int = 3, ensemble: int = 1) -> TrainedModel:
    """A tiny 2D U-Net trained on the three planes of ``case``."""
    config = TrainConfig(arch="unet2d", iterations=iterations, time_budget=None, device="cpu",
                         base_channels=4, planes="three", ensemble=ensemble)  # fmt: skip
    return run_to_completion(train(case.image, case.annotation, config, spacing=case.spacing))


def one_plane_twin(model: TrainedModel) -> TrainedModel:
    """The same network, told to read slices across the first axis only."""
    return TrainedModel(model.network, replace(model.config, planes=(0,)))


def passes_by_hand(model: TrainedModel, image: np.ndarray, config: PredictConfig) -> list:
    """Each plane's prediction, made by the one-plane twin on the moved volume: the
    probabilities (or, for ``uncertainty``, the disagreement), in the volume's axis order."""
    twin, passes = one_plane_twin(model), []
    for axis in (0, 1, 2):
        result = predict_volume(twin, np.moveaxis(image, axis, 0), config)
        if config.uncertainty:
            passes.append(np.moveaxis(result.uncertainty, 0, axis))
        else:
            passes.append(np.moveaxis(result.probabilities, 1, axis + 1))
    return passes


@pytest.fixture(scope="module")
def three_plane_model(case) -> TrainedModel:
    torch.set_num_threads(1)
    return train_three_planes(case)


def test_which_planes_each_network_reads(case):
    three = TrainConfig(arch="unet2d", planes="three")
    assert choose_planes(three, SHAPE) == (0, 1, 2)
    assert choose_planes(TrainConfig(arch="fcn", planes="three"), SHAPE) == (0, 1, 2)
    assert choose_planes(TrainConfig(arch="unet2d"), SHAPE) == (0,)  # the default: one
    assert choose_planes(TrainConfig(planes="three"), SHAPE) == (0,)  # the 3D U-Net
    assert choose_planes(three, (1, 16, 20)) == (0,)  # a 2D image has one plane
    with pytest.raises(MedsegInputError, match="planes must be one or three"):
        TrainConfig(planes="auto")


def test_batches_come_from_every_planes_view_with_its_spacing(case):
    normalized = case.image[np.newaxis].astype(np.float32)
    target = case.annotation.astype(np.int64) - 1
    spacing = (1.0, 2.0, 3.0)
    config = TrainConfig(arch="unet2d", planes="three")
    plan = plan_training(case.image, case.annotation, config, spacing=spacing)
    assert plan.planes == (0, 1, 2)
    rng = np.random.default_rng(0)
    samplers = plane_samplers(plan, normalized, target, rng)
    assert [s.patch_shape for s, _ in samplers] == [(4, 16, 20), (4, 12, 20), (4, 12, 16)]
    assert [sp for _, sp in samplers] == [(1.0, 2.0, 3.0), (2.0, 1.0, 3.0), (3.0, 1.0, 2.0)]
    shapes = {make_batch(samplers, 2, None, rng)[0].shape[2:] for _ in range(40)}
    assert shapes == {(4, 16, 20), (4, 12, 20), (4, 12, 16)}
    # a patch of the y view holds the volume's voxels with y first
    sampler = samplers[1][0]
    np.testing.assert_array_equal(sampler.image[0], np.moveaxis(normalized[0], 1, 0))


def test_a_three_plane_model_records_its_planes(three_plane_model):
    assert three_plane_model.config.planes == (0, 1, 2)
    assert three_plane_model.config.history["planes"] == [0, 1, 2]


def test_prediction_averages_one_pass_per_plane(case, three_plane_model):
    config = PredictConfig(probabilities=True)
    got = predict_volume(three_plane_model, case.image, config)
    passes = passes_by_hand(three_plane_model, case.image, config)
    expected = np.mean(passes, axis=0)
    assert got.probabilities.shape == (2, *SHAPE)
    np.testing.assert_allclose(got.probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(got.labels, np.argmax(expected, axis=0))
    # and the averaged answer is not just the first pass
    assert not np.allclose(got.probabilities, passes[0], atol=1e-3)


def test_live_tiles_of_every_pass_are_in_the_volumes_axis_order(case, three_plane_model):
    config = PredictConfig(tile_shape=(4, 8, 8))
    gen = predict(three_plane_model, case.image, config)
    tiles = []
    try:
        while True:
            tiles.append(next(gen))
    except StopIteration as end:
        result = end.value
    assert [t.index for t in tiles] == list(range(1, len(tiles) + 1))
    assert {t.total for t in tiles} == {len(tiles)}
    covered = np.zeros((3, *SHAPE), bool)
    for t in tiles:
        assert t.labels.shape == tuple(s.stop - s.start for s in t.region)
        assert all(s.stop <= n for s, n in zip(t.region, SHAPE))
    for pass_index, pass_tiles in enumerate(_split_passes(tiles)):
        for t in pass_tiles:
            covered[pass_index][t.region] = True
            assert t.message == f"slices across {'zyx'[pass_index]} ({pass_index + 1}/3)"
    assert covered.all()  # each pass covers the whole volume
    # the last tile shows the finished average there
    last = tiles[-1]
    np.testing.assert_array_equal(last.labels, result.labels[last.region])


def _split_passes(tiles):
    """Tiles grouped by pass: a pass ends where the tile shape turns (views differ)."""
    groups, shape = [], None
    for t in tiles:
        key = tuple(s.stop - s.start for s in t.region)
        orientation = int(np.argmin(key))  # the 4-slice axis is the plane's axis
        if orientation != shape:
            groups.append([])
            shape = orientation
        groups[-1].append(t)
    return groups


def test_stop_during_the_second_pass_returns_an_incomplete_full_size_labelling(
    case, three_plane_model
):
    stop = threading.Event()
    gen = predict(three_plane_model, case.image, PredictConfig(tile_shape=(4, 8, 8)), stop=stop)
    first = next(gen)
    while True:
        tile = next(gen)
        if tile.index > first.total // 3 + 1:  # inside the second pass
            stop.set()
            break
    with pytest.raises(StopIteration) as end:
        next(gen)
    result = end.value.value
    assert not result.complete
    assert result.labels.shape == SHAPE


def test_a_2d_image_with_a_three_plane_model_uses_one_pass(case, three_plane_model):
    image = case.image[6]
    result = predict_volume(three_plane_model, image, PredictConfig())
    assert result.labels.shape == image.shape


def test_planes_survive_a_model_file_and_old_files_read_as_one(three_plane_model, tmp_path):
    path = save_model(tmp_path / "m.safetensors", three_plane_model)
    assert load_model(path).config.planes == (0, 1, 2)
    rewrite_config(path, lambda c: c.pop("planes"))
    assert load_model(path).config.planes == (0,)
    for bad in ([], [0, 0], [3], [2, 0], "012", [True], [0.5]):
        rewrite_config(path, lambda c, bad=bad: c.update(planes=bad))
        with pytest.raises(MedsegInputError, match="model config is incomplete or invalid"):
            load_model(path)


def test_an_ensembles_disagreement_is_averaged_over_the_planes_too(case):
    model = train_three_planes(case, iterations=1, ensemble=2)
    config = PredictConfig(uncertainty=True)
    got = predict_volume(model, case.image, config)
    passes = passes_by_hand(model, case.image, config)
    assert got.uncertainty.shape == SHAPE
    np.testing.assert_allclose(got.uncertainty, np.mean(passes, axis=0), atol=1e-5)
