"""Ensembles: several networks trained with their own seeds, applied as one."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_training_inference import _cube_case

from napari_medseg.checkpoint import TrainedModel, load_model, save_model
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.models import Ensemble
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train


def _case():
    image, annotation, _ = _cube_case()
    return image, annotation


def _config(**kwargs) -> TrainConfig:
    return TrainConfig(iterations=3, time_budget=None, base_channels=4, seed=5, **kwargs)


def _weights(network: torch.nn.Module) -> list[torch.Tensor]:
    return list(network.state_dict().values())


@pytest.fixture(scope="module")
def trained():
    image, annotation = _case()
    items = []
    model = run_to_completion(train(image, annotation, _config(ensemble=3)), items.append)
    return image, annotation, model, items


def test_members_train_in_turn_with_their_own_seeds(trained):
    image, annotation, model, reports = trained
    items = [p for p in reports if "validation Dice" not in p.message]  # step reports
    assert len(reports) - len(items) == 3  # and one validation figure per network
    assert isinstance(model.network, Ensemble) and len(model.network.members) == 3
    assert model.config.network.members == 3
    assert model.config.history["ensemble"] == 3
    assert model.config.history["member_steps"] == [3, 3, 3]
    assert [p.step for p in items] == list(range(1, 10))
    assert all(p.total_steps == 9 for p in items)
    assert [p.message for p in items[::3]] == ["network 1/3", "network 2/3", "network 3/3"]
    fractions = [p.fraction for p in items]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    # the first member is the single network of the same seed; the others differ from it
    single = run_to_completion(train(image, annotation, _config()))
    first, second = model.network.members[0], model.network.members[1]
    assert all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(single.network)))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(second)))


def test_prediction_averages_the_members_probabilities(trained):
    image, _, model, _ = trained
    config = PredictConfig(device="cpu", probabilities=True)
    together = predict_volume(model, image, config)
    alone = [
        predict_volume(TrainedModel(member, model.config), image, config).probabilities
        for member in model.network.members
    ]
    np.testing.assert_allclose(together.probabilities, np.mean(alone, axis=0), atol=1e-4)
    assert (together.labels == together.probabilities.argmax(0)).all()


def test_an_ensemble_is_saved_and_loaded_as_one_model(trained, tmp_path):
    image, _, model, _ = trained
    path = save_model(tmp_path / "ensemble.safetensors", model)
    loaded = load_model(path)
    assert isinstance(loaded.network, Ensemble) and len(loaded.network.members) == 3
    before = predict_volume(model, image, PredictConfig(device="cpu", probabilities=True))
    after = predict_volume(loaded, image, PredictConfig(device="cpu", probabilities=True))
    np.testing.assert_allclose(before.probabilities, after.probabilities, atol=1e-6)


def test_stop_keeps_the_finished_members_only():
    image, annotation = _case()
    stop = threading.Event()
    gen = train(image, annotation, _config(ensemble=3), stop=stop)
    items = []

    def on_progress(p):
        items.append(p)
        if p.step == 4:  # the second member's first step
            stop.set()

    model = run_to_completion(gen, on_progress)
    assert items[-1].step == 4
    assert not isinstance(model.network, Ensemble)  # one finished member: a single network
    assert model.config.network.members == 1
    assert model.config.history["stop_reason"] == "stopped"
    assert model.config.history["member_steps"] == [3]


def test_a_stop_in_the_first_member_keeps_it():
    image, annotation = _case()
    stop = threading.Event()
    model = run_to_completion(
        train(image, annotation, _config(ensemble=2), stop=stop), lambda p: stop.set()
    )
    assert model.config.history["member_steps"] == [1]
    assert model.config.history["stop_reason"] == "stopped"


def test_time_budget_is_shared_between_members():
    image, annotation = _case()
    config = TrainConfig(time_budget=2.0, base_channels=4, seed=0, ensemble=2)
    model = run_to_completion(train(image, annotation, config))
    history = model.config.history
    assert len(history["member_steps"]) == 2 and min(history["member_steps"]) >= 1
    assert history["steps"] == sum(history["member_steps"])


@pytest.mark.parametrize("members", [0, 11])
def test_ensemble_size_is_checked(members):
    image, annotation = _case()
    with pytest.raises(MedsegInputError, match="ensemble"):
        next(train(image, annotation, _config(ensemble=members)))


def test_disagreement_is_zero_when_networks_agree_and_one_when_they_are_sure_and_differ():
    from napari_medseg.inference import disagreement

    sure_a = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    sure_b = torch.tensor([0.0, 1.0]).view(1, 2, 1)
    unsure = torch.tensor([0.5, 0.5]).view(1, 2, 1)
    assert float(disagreement(torch.stack([sure_a, sure_a]))) == pytest.approx(0.0, abs=1e-6)
    assert float(disagreement(torch.stack([unsure, unsure]))) == pytest.approx(0.0, abs=1e-6)
    assert float(disagreement(torch.stack([sure_a, sure_b]))) == pytest.approx(1.0, abs=1e-6)


def test_uncertainty_map_comes_with_an_ensemble_prediction(trained):
    image, annotation, model, _ = trained
    result = predict_volume(model, image, PredictConfig(device="cpu", uncertainty=True))
    assert result.uncertainty.shape == image.shape and result.uncertainty.dtype == np.float32
    assert 0.0 <= result.uncertainty.min() and result.uncertainty.max() <= 1.0
    assert result.uncertainty.max() > 0.0  # three 3-step networks do not agree everywhere
    plain = predict_volume(model, image, PredictConfig(device="cpu"))
    assert plain.uncertainty is None
    assert np.mean(plain.labels != result.labels) < 1e-3  # the same segmentation
    single = run_to_completion(train(image, annotation, _config()))
    alone = predict_volume(single, image, PredictConfig(device="cpu", uncertainty=True))
    assert alone.uncertainty.shape == image.shape  # one network: its own doubt
    assert 0.0 <= alone.uncertainty.min() and alone.uncertainty.max() <= 1.0


def test_a_single_network_is_unsure_where_its_probabilities_are_even():
    from napari_medseg._passes import doubt

    probabilities = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]]).T.reshape(1, 2, 3)
    values = doubt(probabilities)[0]
    assert float(values[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(values[1]) == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < float(values[2]) < 1.0


def test_a_model_file_cannot_ask_for_thousands_of_networks():
    from napari_medseg.models import NetworkConfig

    with pytest.raises(MedsegInputError, match="members"):
        NetworkConfig.from_dict({"arch": "unet3d", "members": 100_000})


def test_planes_to_paint_ranks_the_doubt_left_unpainted_in_every_plane():
    from napari_medseg.painted_slices import describe_slices, planes_to_paint

    uncertainty = np.zeros((5, 6, 7), np.float32)
    uncertainty[3] = 0.5  # the most doubt, but axial slice 3 is painted
    uncertainty[:, :, 6] = 0.4  # sagittal slice 6: 30 voxels, 12.0 in all (4.8 unpainted)
    uncertainty[1, 2, 0] = 1.0
    annotation = np.zeros(uncertainty.shape, np.uint8)
    annotation[3] = 1
    assert planes_to_paint(uncertainty, count=1) == [(0, 3)]
    # painted voxels score nothing: sagittal slice 6 first, then the axial slices through it
    best = planes_to_paint(uncertainty, annotation, count=3)
    assert best[0] == (2, 6) and all((annotation[k] == 0).all() for axis, k in best if axis == 0)
    assert (0, 3) not in planes_to_paint(uncertainty, annotation, count=100)
    turned = planes_to_paint(uncertainty.transpose(2, 1, 0), annotation.transpose(2, 1, 0))
    assert turned[0] == (0, 6)  # the same slice, now across the first axis
    assert planes_to_paint(np.zeros((3, 3, 3))) == []  # no doubt: nothing to suggest
    assert describe_slices([(2, 6), (0, 1)]) == "sagittal slice 6, axial slice 1"
    with pytest.raises(MedsegInputError, match="differs"):
        planes_to_paint(uncertainty, annotation[:-1])
    with pytest.raises(MedsegInputError, match="3D"):
        planes_to_paint(uncertainty[0])
