"""Degenerate volume shapes: a few large tiles, not thousands of tiny ones.

A volume thinner than the network's divisor (or 8 voxels) along an axis the network pads,
such as ``(1, 1, 200000)``, ``(2, 3, 50000)`` or ``(400, 2, 2)``, is padded there anyway.
Before, its tiles stayed the size of the thin axes and the long axis needed thousands of
them (8333 tiles for ``(1, 1, 200000)`` with the tiny 3D U-Net below). The tile now grows
along the long axes up to the padded voxels of the default tile. No timing is asserted:
the tile counts are.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_training_inference import _cube_case

from napari_medseg.inference import (
    PredictConfig,
    TileProgress,
    default_tile_shape,
    predict,
    tile_shape_for,
)
from napari_medseg.progress import run_to_completion
from napari_medseg.tiling import GridSampler
from napari_medseg.training import TrainConfig, train

DEGENERATE = [(1, 1, 200000), (2, 3, 50000), (400, 2, 2)]
#: Before: 8333, 2083 and 24 tiles (3D U-Net), 1562, 390 and 99 (2D U-Net).
MOST_TILES = 100


@pytest.fixture(scope="module", params=["unet3d", "unet2d"])
def model(request):
    image, annotation, _ = _cube_case()
    config = TrainConfig(
        arch=request.param, iterations=2, time_budget=None, base_channels=4, seed=0, device="cpu"
    )
    return run_to_completion(train(image, annotation, config))


def _first_tile(model, image: np.ndarray) -> TileProgress:
    """The first progress item of a prediction (its ``total`` counts every tile)."""
    generator = predict(model, image, PredictConfig(device="cpu"))
    first = next(generator)
    generator.close()
    return first


@pytest.mark.parametrize("shape", DEGENERATE, ids=lambda s: "x".join(map(str, s)))
def test_degenerate_shapes_need_few_tiles(model, shape):
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    first = _first_tile(model, image)
    assert first.total <= MOST_TILES, f"{model.config.arch} {shape}: {first.total} tiles"
    tile = default_tile_shape(model, shape)
    assert all(t <= s for t, s in zip(tile, shape)), (tile, shape)  # never beyond the volume


def test_thin_volume_within_the_default_tile_is_one_tile(model):
    """(400, 2, 2) holds fewer padded voxels than the default tile: one tile (before: 24 with
    the 3D U-Net, 99 with the 2D U-Net)."""
    image = np.random.default_rng(0).random((400, 2, 2), dtype=np.float32)
    assert _first_tile(model, image).total == 1
    assert default_tile_shape(model, image.shape) == (400, 2, 2)


@pytest.mark.parametrize("shape", DEGENERATE, ids=lambda s: "x".join(map(str, s)))
def test_degenerate_shapes_are_predicted_whole(model, shape):
    rng = np.random.default_rng(1)
    image = rng.random(shape, dtype=np.float32)
    generator = predict(model, image, PredictConfig(device="cpu"))
    items: list[TileProgress] = [next(generator)]
    assert items[0].total <= MOST_TILES, items[0].total  # before the change: fail here, fast
    result = run_to_completion(generator, items.append)
    assert result.complete and result.labels.shape == shape
    assert len(items) == items[-1].total <= MOST_TILES
    covered = np.zeros(shape, bool)
    for item in items:
        covered[item.region] = True
    assert covered.all()


def test_grown_tiles_keep_the_padded_voxels_of_the_default_tile(model):
    """Memory per tile stays that of the default tile: its voxels once padded to the divisor."""
    from napari_medseg.tiling import padded_voxels

    divisor = model.network.divisor
    full = tile_shape_for(model.config.arch, model.config.patch_shape, (10**6,) * 3)
    budget = padded_voxels(full, divisor)
    for shape in DEGENERATE:
        tile = default_tile_shape(model, shape)
        assert padded_voxels(tile, divisor) <= budget, (shape, tile)
        assert math.prod(tile) <= math.prod(full), (shape, tile)


@pytest.mark.parametrize(
    "shape", [(16, 24, 24), (32, 48, 48), (40, 300, 300), (1, 256, 256), (64, 64, 64)]
)
def test_ordinary_shapes_keep_their_tiles(model, shape):
    """No padded axis thinner than the divisor (or 8 voxels): the tile is the default one,
    capped by the volume (the rule before this change, for every shape that is not thin)."""
    from napari_medseg.tiling import is_thin

    arch, patch = model.config.arch, model.config.patch_shape
    before = (
        (min(shape[0], 8), *(min(s, 256) for s in shape[1:]))
        if arch != "unet3d"
        else tuple(min(s, 2 * p) for s, p in zip(shape, patch))
    )
    if is_thin(shape, model.network.divisor):
        pytest.skip("one slice is thinner than the 3D U-Net's divisor: a thin shape")
    assert default_tile_shape(model, shape) == before
    assert tile_shape_for(arch, patch, shape) == before  # without a divisor: the old rule


def test_grid_sampler_never_exceeds_the_volume():
    sampler = GridSampler((2, 3, 50000), (8, 8, 4608), overlap=0.5)
    assert sampler.tile_shape == (2, 3, 4608)
    assert all(r[-1].stop <= 50000 for r in sampler)
    assert len(sampler) == len(list(sampler)) <= 30
