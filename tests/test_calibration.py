"""Batch-norm statistics re-estimated on the whole image after training."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_medseg.annotation import annotation_to_target
from napari_medseg.models import NetworkConfig, build_network
from napari_medseg.models.calibration import (
    batch_norm_layers,
    calibration_regions,
    recalibrate_batch_norm,
)
from napari_medseg.progress import run_to_completion
from napari_medseg.sampling import unknown_region
from napari_medseg.training import TrainConfig, train


def _two_halves(shape=(1, 8, 8, 16)) -> np.ndarray:
    """An image whose two x halves (one tile each) have different means and spreads."""
    rng = np.random.default_rng(0)
    image = np.empty(shape, np.float32)
    image[..., :8] = rng.normal(1.0, 0.5, shape[:-1] + (8,))
    image[..., 8:] = rng.normal(5.0, 2.0, shape[:-1] + (8,))
    return image


def test_statistics_become_the_average_over_the_tiles():
    image = _two_halves()
    network = torch.nn.Sequential(torch.nn.BatchNorm3d(1)).eval()
    used = recalibrate_batch_norm(network, image, (8, 8, 8))
    assert used == 2
    layer = network[0]
    left, right = image[..., :8], image[..., 8:]
    expected_mean = (left.mean() + right.mean()) / 2
    expected_var = (left.var(ddof=1) + right.var(ddof=1)) / 2
    np.testing.assert_allclose(layer.running_mean.item(), expected_mean, rtol=1e-5)
    np.testing.assert_allclose(layer.running_var.item(), expected_var, rtol=1e-4)
    assert layer.momentum == 0.1  # restored after the cumulative average
    assert not network.training  # left in the mode it was in


def test_weights_are_untouched_and_a_network_without_batch_norm_is_left_alone():
    net = build_network(NetworkConfig(arch="unet3d", n_classes=2, base_channels=4)).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k}
    image = np.random.default_rng(1).normal(3.0, 1.0, (1, 12, 20, 20)).astype(np.float32)
    assert recalibrate_batch_norm(net, image, (8, 16, 16)) > 0
    after = net.state_dict()
    for name, value in weights.items():
        if "num_batches_tracked" not in name:
            assert torch.equal(after[name], value), name
    first = batch_norm_layers(net)[0]
    assert abs(first.running_mean).sum() > 0  # moved from the initial zeros
    plain = build_network(
        NetworkConfig(arch="unet3d", n_classes=2, base_channels=4, batch_norm=False)
    )
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert batch_norm_layers(plain) == []
    assert recalibrate_batch_norm(plain, image, (8, 16, 16)) == 0
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in before.items())


def test_a_set_stop_keeps_the_old_statistics():
    network = torch.nn.Sequential(torch.nn.BatchNorm3d(1))
    network[0].running_mean.fill_(7.0)
    stop = threading.Event()
    stop.set()
    assert recalibrate_batch_norm(network, _two_halves(), (8, 8, 8), stop=stop) == 0
    assert network[0].running_mean.item() == 7.0


def test_regions_are_capped_and_spread_over_the_volume():
    regions = calibration_regions((40, 40, 40), (8, 8, 8), max_tiles=10)
    assert len(regions) == 10
    assert regions[0] == (slice(0, 8),) * 3
    assert regions[-1] == (slice(32, 40),) * 3
    every = calibration_regions((16, 16, 16), (8, 8, 8))
    assert len(every) == 8  # non-overlapping cover


def test_a_volume_smaller_than_the_patch_is_padded_like_training():
    net = build_network(NetworkConfig(arch="unet3d", n_classes=2, base_channels=4))
    tiny = np.random.default_rng(2).normal(size=(1, 3, 5, 5)).astype(np.float32)
    # unpadded, the deepest level would hold one value per channel and batch norm would fail
    assert recalibrate_batch_norm(net, tiny, (16, 16, 16)) == 1


@pytest.mark.parametrize("arch", ["unet3d", "unet2d"])
def test_training_calibrates_and_only_the_statistics_differ(arch, cube_case):
    image, annotation = cube_case
    base = TrainConfig(
        arch=arch,
        iterations=3,
        time_budget=None,
        base_channels=4,
        seed=0,
        calibrate_batch_norm=True,
    )
    gen = train(image, annotation, base)
    messages = []
    while True:
        try:
            messages.append(next(gen).message)
        except StopIteration as done:
            calibrated = done.value
            break
    assert messages[-1] == "calibrating batch norm on the unpainted region"
    assert calibrated.config.history["batch_norm_calibration_tiles"][0] > 0
    plain = run_to_completion(
        train(image, annotation, TrainConfig(**{**vars(base), "calibrate_batch_norm": False}))
    )
    assert plain.config.history["batch_norm_calibration_tiles"] == []
    a, b = calibrated.network.state_dict(), plain.network.state_dict()
    for name in a:
        same = torch.equal(a[name], b[name])
        assert same == ("running_" not in name and "num_batches" not in name), name


def test_every_ensemble_member_is_calibrated(cube_case):
    image, annotation = cube_case
    model = run_to_completion(
        train(
            image,
            annotation,
            TrainConfig(
                iterations=2,
                time_budget=None,
                base_channels=4,
                ensemble=2,
                calibrate_batch_norm=True,
            ),
        )
    )
    tiles = model.config.history["batch_norm_calibration_tiles"]
    assert len(tiles) == 2 and min(tiles) > 0


def test_statistics_come_from_where_prediction_decides():
    """Everything outside a box painted background: only tiles around the box are used."""
    rng = np.random.default_rng(3)
    shape = (16, 192, 192)
    image = rng.normal(0, 1, shape).astype(np.float32)
    image[6:10, 88:104, 88:104] += 3.0
    annotation = np.ones(shape, np.uint8)  # background everywhere ...
    annotation[4:12, 84:108, 84:108] = 0  # ... but a box nobody painted
    annotation[8, 88:104, 88:104] = 2  # and the structure on its middle slice
    model = run_to_completion(
        train(
            image,
            annotation,
            TrainConfig(
                iterations=2, time_budget=None, base_channels=4, calibrate_batch_norm=True
            ),
        )
    )
    patch = model.config.patch_shape
    box = unknown_region(annotation_to_target(annotation), [p // 2 for p in patch])
    expected = len(calibration_regions([b.stop - b.start for b in box], patch))
    whole = len(calibration_regions(shape, patch))
    assert model.config.history["batch_norm_calibration_tiles"] == [expected]
    assert expected < whole


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "fcn"])
def test_by_default_networks_are_left_as_trained(arch, cube_case):
    image, annotation = cube_case
    items = []
    model = run_to_completion(
        train(image, annotation, TrainConfig(arch=arch, iterations=2, time_budget=None)),
        items.append,
    )
    assert model.config.history["batch_norm_calibration_tiles"] == []
    assert [p.step for p in items][:2] == [1, 2]
    assert not any("calibrat" in p.message for p in items)


def test_a_stopped_run_ends_at_once_as_trained(cube_case):
    image, annotation = cube_case
    stop = threading.Event()
    items = []

    def on_progress(p) -> None:
        items.append(p)
        if p.step == 2:
            stop.set()

    model = run_to_completion(
        train(
            image,
            annotation,
            TrainConfig(iterations=20, time_budget=None, calibrate_batch_norm=True),
            stop=stop,
        ),
        on_progress,
    )
    assert [p.step for p in items] == [1, 2]
    assert model.config.history["stop_reason"] == "stopped"
    assert model.config.history["batch_norm_calibration_tiles"] == []


@pytest.mark.parametrize(("freeze", "tracked"), [(0.0, 10), (0.3, 7), (0.5, 5), (1.0, 0)])
def test_frozen_batch_norm_stops_following_the_batches(cube_case, freeze, tracked):
    image, annotation = cube_case
    config = TrainConfig(
        iterations=10, time_budget=None, base_channels=4, seed=0, freeze_batch_norm=freeze
    )
    model = run_to_completion(train(image, annotation, config))
    layers = batch_norm_layers(model.network)
    # each training-mode forward pass counts one batch; frozen steps count none
    assert {int(m.num_batches_tracked) for m in layers} == {tracked}
    if freeze == 1.0:  # never followed a batch: still the initial statistics
        assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in layers)
    # frozen or not, the weights go on learning: they moved after the first step
    one_step = TrainConfig(**{**vars(config), "iterations": 1})
    early = run_to_completion(train(image, annotation, one_step))
    first = next(n for n, _ in model.network.named_parameters())
    assert not torch.equal(model.network.state_dict()[first], early.network.state_dict()[first])


def test_a_frozen_phase_outside_the_run_is_refused(cube_case):
    from napari_medseg.errors import MedsegInputError

    image, annotation = cube_case
    for bad in (-0.1, 1.5):
        with pytest.raises(MedsegInputError, match="fraction of the run"):
            next(train(image, annotation, TrainConfig(iterations=1, freeze_batch_norm=bad)))


def test_batch_norm_is_frozen_by_default_only_for_several_structures(cube_case):
    from napari_medseg.training import FROZEN_BATCH_NORM_FRACTION, default_freeze_batch_norm

    assert default_freeze_batch_norm(1) == 0.0
    assert default_freeze_batch_norm(3) == FROZEN_BATCH_NORM_FRACTION == 0.3
    image, one = cube_case
    two = one.copy()
    two[8, 14:18, 14:18][one[8, 14:18, 14:18] == 2] = 3  # a corner of the cube: structure 2
    config = TrainConfig(iterations=10, time_budget=None, base_channels=4, seed=0)
    for annotation, frozen, tracked in ((one, 0.0, 10), (two, 0.3, 7)):
        model = run_to_completion(train(image, annotation, config))
        assert model.config.history["freeze_batch_norm"] == frozen
        layers = batch_norm_layers(model.network)
        assert {int(m.num_batches_tracked) for m in layers} == {tracked}
