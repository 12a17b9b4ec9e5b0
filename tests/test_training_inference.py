"""Training on sparse labels and tiled inference, on tiny synthetic volumes."""

import threading

import numpy as np
import pytest
import torch

from napari_medseg.checkpoint import load_model, save_model
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig, predict, predict_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, TrainProgress, train


def _cube_case(shape=(16, 24, 24)):
    rng = np.random.default_rng(0)
    truth = np.zeros(shape, np.uint8)
    truth[4:12, 6:18, 6:18] = 1
    image = (truth * 2.0 + rng.normal(0, 0.3, shape)).astype(np.float32)
    annotation = np.zeros(shape, np.uint8)
    annotation[8] = truth[8] + 1  # one axial slice painted
    annotation[:, 12] = truth[:, 12] + 1  # one coronal slice painted
    return image, annotation, truth


def test_training_yields_progress_and_returns_a_model():
    image, annotation, _ = _cube_case()
    gen = train(
        image, annotation, TrainConfig(iterations=3, time_budget=None, base_channels=4, seed=0)
    )
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as done:
            model = done.value
            break
    assert [p.step for p in items] == [1, 2, 3, 3]
    assert items[-1].message.startswith("validation Dice")  # the run's own estimate, last
    assert all(isinstance(p, TrainProgress) and np.isfinite(p.loss) for p in items)
    assert items[-1].fraction == pytest.approx(1.0)
    assert model.config.n_classes == 2
    assert model.config.history["steps"] == 3
    assert not model.network.training
    # trained in channels-last (faster 3D convolutions), handed back in the default layout
    assert all(t.is_contiguous() for t in model.network.state_dict().values())


def test_three_dimensional_networks_run_channels_last():
    from napari_medseg.device import memory_format_for
    from napari_medseg.models import NetworkConfig, build_network

    unet3d = build_network(NetworkConfig(arch="unet3d", in_channels=1, n_classes=2))
    unet2d = build_network(NetworkConfig(arch="unet2d", in_channels=1, n_classes=2))
    assert memory_format_for(unet3d) == torch.channels_last_3d
    assert memory_format_for(unet2d) == torch.contiguous_format


@pytest.mark.parametrize("arch", ["unet3d", "unet2d", "fcn"])
def test_every_architecture_learns_from_sparse_slices(arch):
    image, annotation, truth = _cube_case()
    config = TrainConfig(arch=arch, iterations=60, time_budget=None, base_channels=8, seed=0)
    model = run_to_completion(train(image, annotation, config, spacing=(1.0, 1.0, 1.0)))
    labels = predict_volume(model, image, PredictConfig(device="cpu")).labels
    unknown = annotation == 0
    inter = np.logical_and(labels == 1, truth == 1)[unknown].sum()
    dice = 2 * inter / ((labels == 1)[unknown].sum() + (truth == 1)[unknown].sum())
    assert dice > 0.8, f"{arch}: Dice {dice:.3f} on unannotated voxels"


def test_fixed_seed_and_iterations_repeat_exactly_on_cpu():
    image, annotation, _ = _cube_case()
    config = TrainConfig(iterations=4, time_budget=None, base_channels=4, seed=7, device="cpu")
    a = run_to_completion(train(image, annotation, config))
    b = run_to_completion(train(image, annotation, config))
    for (name, ta), tb in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(ta, tb), name


def test_stop_event_ends_training_with_a_usable_model():
    image, annotation, _ = _cube_case()
    stop = threading.Event()
    gen = train(image, annotation, TrainConfig(time_budget=600, base_channels=4), stop=stop)
    next(gen)
    next(gen)
    stop.set()
    model = run_to_completion(gen)
    assert model.config.history["stop_reason"] == "stopped"
    assert model.config.history["steps"] == 2
    assert predict_volume(model, image).labels.shape == image.shape


def test_nan_loss_stops_and_keeps_last_good_weights(monkeypatch):
    import napari_medseg.training.optimisation as optimisation

    image, annotation, _ = _cube_case()
    calls = {"n": 0}
    real = optimisation.masked_cross_entropy

    def flaky(logits, target, weights=None):
        calls["n"] += 1
        loss = real(logits, target, weights)
        return loss * float("nan") if calls["n"] > 12 else loss

    monkeypatch.setattr(optimisation, "masked_cross_entropy", flaky)
    gen = train(image, annotation, TrainConfig(iterations=50, time_budget=None, base_channels=4))
    items = []
    model = run_to_completion(gen, items.append)
    assert "NaN" in items[-2].message and "validation" in items[-1].message
    assert model.config.history["stop_reason"] == "diverged"
    assert all(
        torch.isfinite(t).all()
        for t in model.network.state_dict().values()
        if t.is_floating_point()
    )


def test_training_refuses_bad_input_before_starting():
    image, annotation, _ = _cube_case()
    with pytest.raises(MedsegInputError, match="no annotated voxel"):
        next(train(image, np.zeros_like(annotation), TrainConfig(iterations=1)))
    with pytest.raises(MedsegInputError, match="shape"):
        next(train(image, annotation[:-1], TrainConfig(iterations=1)))
    with pytest.raises(MedsegInputError, match="time budget or an iteration"):
        next(train(image, annotation, TrainConfig(iterations=None, time_budget=None)))
    with pytest.raises(MedsegInputError, match="device"):
        next(train(image, annotation, TrainConfig(iterations=1, device="tpu")))
    with pytest.raises(MedsegInputError, match="flips"):
        next(train(image, annotation, TrainConfig(iterations=1, flips="sometimes")))
    with pytest.raises(MedsegInputError, match="batch workers"):
        next(train(image, annotation, TrainConfig(iterations=1, batch_workers=-1)))


def test_tiled_prediction_matches_whole_volume_and_yields_each_tile(tmp_path):
    image, annotation, _ = _cube_case(shape=(12, 30, 26))
    model = run_to_completion(
        train(image, annotation, TrainConfig(iterations=3, time_budget=None, base_channels=4))
    )
    tiles = []
    gen = predict(
        model, image, PredictConfig(tile_shape=(8, 16, 16), overlap=0.5, probabilities=True)
    )
    result = run_to_completion(gen, tiles.append)
    assert len(tiles) == tiles[-1].total > 1
    for t in tiles:
        assert t.labels.shape == tuple(s.stop - s.start for s in t.region)
    assert result.labels.shape == image.shape and result.complete
    assert result.probabilities.shape == (2, *image.shape)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-4)
    assert (result.labels == result.probabilities.argmax(0)).all()
    save_model(tmp_path / "m.safetensors", model)
    reloaded = load_model(tmp_path / "m.safetensors")
    again = predict_volume(reloaded, image, PredictConfig(tile_shape=(8, 16, 16), overlap=0.5))
    assert (again.labels == result.labels).all()


def test_stopping_prediction_marks_it_incomplete():
    image, annotation, _ = _cube_case()
    model = run_to_completion(
        train(image, annotation, TrainConfig(iterations=1, time_budget=None, base_channels=4))
    )
    stop = threading.Event()
    gen = predict(model, image, PredictConfig(tile_shape=(8, 8, 8)), stop=stop)
    next(gen)
    stop.set()
    result = run_to_completion(gen)
    assert not result.complete


def test_cuda_out_of_memory_retries_with_smaller_tiles(monkeypatch):
    import napari_medseg._passes as passes

    image, annotation, _ = _cube_case()
    model = run_to_completion(
        train(image, annotation, TrainConfig(iterations=1, time_budget=None, base_channels=4))
    )
    real = passes.forward
    seen = []

    def oom_for_big_tiles(network, x, amp, mirror, uncertainty=False):
        seen.append(tuple(x.shape[2:]))
        if x.shape[-1] > 12:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(network, x, amp, mirror, uncertainty)

    monkeypatch.setattr(passes, "forward", oom_for_big_tiles)
    messages = []
    result = run_to_completion(
        predict(model, image, PredictConfig(tile_shape=(16, 24, 24))),
        lambda t: messages.append(t.message),
    )
    assert result.complete and result.labels.shape == image.shape
    assert any("out of memory" in m for m in messages)
    assert max(s[-1] for s in seen[1:]) <= 12


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"overlap": 1.0}, "overlap must be between 0 and 1"),
        ({"overlap": -0.1}, "overlap must be between 0 and 1"),
        ({"overlap": float("nan")}, "overlap must be between 0 and 1"),
        ({"tile_shape": (8, 0, 16)}, "tile sizes must be positive"),
        ({"tile_shape": (8, 16, -4)}, "tile sizes must be positive"),
        ({"device": "tpu"}, "device must be .*'tpu'"),
    ],
)
def test_impossible_prediction_settings_are_refused_when_made(settings, match):
    with pytest.raises(MedsegInputError, match=match):
        PredictConfig(**settings)


def test_possible_prediction_settings_are_kept():
    for settings in ({"overlap": 0.0}, {"overlap": 0.95}, {"device": "mps"},
                     {"tile_shape": (1, 1, 1)}):  # fmt: skip
        config = PredictConfig(**settings)
        assert all(getattr(config, k) == v for k, v in settings.items())


def test_every_prediction_setting_has_a_one_line_help():
    import dataclasses

    for field in dataclasses.fields(PredictConfig):
        text = field.metadata.get("help", "")
        assert text and "\n" not in text and len(text) < 160, field.name


def test_tile_progress_says_how_far_it_is():
    from napari_medseg.inference import TileProgress

    tile = TileProgress(index=3, total=12, region=(), labels=np.zeros(0), elapsed=0.0)
    assert tile.fraction == 0.25 and tile.describe() == "tile 3/12"
    tile.message = "slices across y (2/3)"
    assert tile.describe() == "tile 3/12 slices across y (2/3)"
    assert TileProgress(index=0, total=0, region=(), labels=tile.labels, elapsed=0).fraction == 0


def test_two_dimensional_images_are_segmented():
    image, annotation, _ = _cube_case()
    model = run_to_completion(
        train(image[8], annotation[8], TrainConfig(iterations=2, time_budget=None, base_channels=4))
    )
    assert predict_volume(model, image[8]).labels.shape == image[8].shape


def test_loss_weighting_is_chosen_from_the_painted_counts():
    from napari_medseg.training import default_class_weight_power

    assert default_class_weight_power([10_000, 61]) == 0.0  # one structure: never weighted
    assert default_class_weight_power([27_000, 900, 340, 370]) == 0.0  # all well painted
    assert default_class_weight_power([14_000, 32, 37, 520, 1777]) == 0.5  # barely painted


@pytest.mark.parametrize(
    ("structures", "spacing", "setting", "expected"),
    [
        (1, (3.0, 1.0, 1.0), "auto", True),
        (1, (1.0, 1.0, 1.0), "auto", False),
        (2, (3.0, 1.0, 1.0), "auto", False),
        (2, (1.0, 1.0, 1.0), "on", True),
        (1, (3.0, 1.0, 1.0), "off", False),
    ],
)
def test_flips_are_used_for_a_lone_structure_on_thick_slices_only(
    monkeypatch, structures, spacing, setting, expected
):
    import napari_medseg.training.loop as loop

    image, annotation, _ = _cube_case()
    if structures == 2:
        annotation[8, 1:4, 1:4] = 3  # a second structure painted on the axial slice
    seen = []
    real_augment = loop.augment

    def spy(image, target, rng, config, spacing):
        seen.append((config.flips, config.rotate90))
        return real_augment(image, target, rng, config, spacing)

    monkeypatch.setattr(loop, "augment", spy)
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, flips=setting)
    model = run_to_completion(train(image, annotation, config, spacing=spacing))
    assert seen and set(seen) == {(expected, expected)}
    assert model.config.history["flips"] is expected


def test_default_flips_rule():
    from napari_medseg.training import default_flips

    assert default_flips(1, (6.5, 0.78, 0.78)) and default_flips(1, (2.1, 0.66, 0.66))
    assert not default_flips(1, (1.0, 1.0, 1.0)) and not default_flips(1, (1.2, 1.0, 1.0))
    assert not default_flips(3, (6.5, 0.78, 0.78))
    # a 2D image (one slice): only its two in-plane axes count
    assert not default_flips(1, (5.0, 0.5, 0.5), shape=(1, 64, 64))
    assert default_flips(1, (1.0, 2.0, 0.5), shape=(1, 64, 64))


def test_torch_threads_are_restored_after_training():
    image, annotation, _ = _cube_case()
    before = torch.get_num_threads()
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, threads=1)
    seen = []
    for _ in train(image, annotation, config):
        seen.append(torch.get_num_threads())
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
