"""A run's own validation: what is held out, how it is scored, the best weights, a restart."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_medseg.progress import run_to_completion
from napari_medseg.run_report import describe_validation
from napari_medseg.training import TrainConfig, loop, train
from napari_medseg.training.guard import Guard
from napari_medseg.training.validation import (
    MAX_SHARE,
    MAX_WINDOWS,
    MIN_SHOWN_VOXELS,
    ValidationScore,
    ValidationSet,
    hold_out,
    score,
)

PATCH = (8, 16, 16)


def _cubes(shape=(24, 32, 32), slices=(6, 9, 12, 15, 18)):
    """Two cubes (structures 1 and 2), painted on whole axial slices."""
    rng = np.random.default_rng(0)
    truth = np.zeros(shape, np.uint8)
    truth[4:20, 4:14, 4:28] = 1
    truth[4:20, 18:28, 4:28] = 2
    image = (truth.astype(np.float32) + rng.normal(0, 0.2, shape)).astype(np.float32)
    annotation = np.zeros(shape, np.uint8)
    for z in slices:
        annotation[z] = truth[z] + 1
    return image, annotation, truth


def _counts(annotation, mask=None):
    target = annotation.astype(np.int64) - 1
    chosen = target >= 0 if mask is None else (target >= 0) & mask
    return np.bincount(target[chosen], minlength=3)


def test_five_painted_slices_hold_out_a_whole_slice_and_leave_every_class_most_voxels():
    _, annotation, _ = _cubes()
    held = hold_out(annotation, PATCH, 3, np.random.default_rng(0))
    assert held is not None and held.kind == "slices" and len(held.units) == 1
    z = held.units[0].index
    assert held.mask.any(axis=(1, 2)).nonzero()[0].tolist() == [z]  # one whole slice
    assert held.mask[z][annotation[z] > 0].all()
    assert np.all(_counts(annotation, held.mask) <= MAX_SHARE * _counts(annotation))
    assert "1 painted slice (z" in held.describe()


def test_a_slice_grazing_a_structure_is_never_the_held_out_slice():
    """A slice showing 5 voxels of a structure would judge whether the network finds it on
    those 5: a good network missing them was reported as having missed the structure."""
    _, annotation, _ = _cubes()
    annotation[18] = 1
    annotation[18, 4, 4:9] = 2  # the grazing end: 5 voxels of structure 1
    kinds = set()
    for seed in range(30):
        held = hold_out(annotation, PATCH, 3, np.random.default_rng(seed))
        assert held is not None
        kinds.add(held.kind)
        if held.kind == "slices":
            assert held.units[0].index != 18
            shown = _counts(annotation, held.mask)[1:]
            assert all(c == 0 or c >= MIN_SHOWN_VOXELS for c in shown), shown
    assert kinds == {"slices"}  # the other four slices can be held out


def test_few_slices_hold_out_blocks_showing_every_structure():
    _, annotation, _ = _cubes(slices=(8, 14))
    held = hold_out(annotation, PATCH, 3, np.random.default_rng(0))
    assert held is not None and held.kind == "blocks"
    out, total = _counts(annotation, held.mask), _counts(annotation)
    assert np.all(out[1:] > 0)  # both structures can be scored
    assert np.all(out <= MAX_SHARE * total)  # and both keep most voxels to learn from
    assert not (held.mask & (annotation == 0)).any()  # only painted voxels


def test_a_structure_painted_on_one_voxel_cannot_be_spared():
    annotation = np.ones((8, 16, 16), np.uint8)
    annotation[4, 8, 8] = 2
    assert hold_out(annotation, PATCH, 2, np.random.default_rng(0)) is None


def test_windows_score_perfect_and_empty_predictions():
    image, annotation, truth = _cubes()
    held = hold_out(annotation, PATCH, 3, np.random.default_rng(0))
    target = annotation.astype(np.int64) - 1
    vset, used = ValidationSet.build(image[None], target, held.mask, PATCH, 3,
                                     np.random.default_rng(0))
    assert 0 < len(vset.voxels) <= MAX_WINDOWS and used.sum() == sum(v.size for v in vset.voxels)
    assert vset.images.shape[1:] == (1, *PATCH)
    # an oracle that reads the class back from the image (structure k has intensity ~k)
    oracle = score(lambda x: np.clip(np.rint(x[:, 0]), 0, 2).astype(int), vset, step=7)
    assert oracle.step == 7 and oracle.score > 0.95 and all(oracle.found)
    nothing = score(lambda x: np.zeros(x[:, 0].shape, int), vset, step=8)
    assert nothing.score == 0.0 and not any(nothing.found) and all(nothing.present)


def _score(value, step, found=(True,)):
    return ValidationScore(step=step, score=value, dice=(value,), found=found, present=(True,))


def _guard():
    return Guard(vset=None, held=None)  # type: ignore[arg-type]  # scores set by hand


def test_the_best_weights_come_back_only_when_clearly_better():
    guard = _guard()
    guard.scores = [_score(0.9, 100), _score(0.7, 200)]
    guard.best, guard.best_state = guard.scores[0], {"w": "best"}
    loaded = []
    assert guard.choose(loaded.append).step == 100 and loaded == [{"w": "best"}]
    guard.scores[-1] = _score(0.895, 200)  # within the tolerance: the last weights stay
    loaded.clear()
    assert guard.choose(loaded.append).step == 200 and loaded == []


def test_a_structure_never_found_is_reported_only_after_half_the_run():
    guard = _guard()
    guard.scores = [_score(0.0, 50, (False,)), _score(0.0, 100, (False,))]
    assert guard.missed(0.3) == [] and guard.missed(0.6) == [1]
    guard.scores.append(_score(0.4, 150, (True,)))
    assert guard.missed(0.9) == []


@pytest.fixture
def seen(monkeypatch):
    """The training target each patch sampler is given."""
    targets = []

    class Spy(loop.AnnotatedPatchSampler):
        def __init__(self, image, target, *args, **kwargs):
            targets.append(target.copy())
            super().__init__(image, target, *args, **kwargs)

    monkeypatch.setattr(loop, "AnnotatedPatchSampler", Spy)
    return targets


def test_training_never_sees_the_held_out_voxels_and_reports_its_figure(seen):
    image, annotation, _ = _cubes()
    config = TrainConfig(iterations=60, time_budget=None, base_channels=4, patch_shape=PATCH)
    items = []
    model = run_to_completion(train(image, annotation, config), items.append)
    record = model.config.history["validation"]
    assert record["held_out"].startswith("1 painted slice (z")
    z = int(record["held_out"].split("(z")[1].rstrip(")"))
    assert (seen[0][z] == -1).all() and (annotation[z] > 0).any()  # held out of training
    assert 0.0 <= record["score"] <= 1.0 and set(record["dice"]) == {"structure 1",
                                                                     "structure 2"}
    assert [step for step, _ in record["curve"]][-1] == 60
    assert items[-1].validation == pytest.approx(record["score"], abs=1e-4)
    assert model.config.history["rounds"][-1]["steps"] == 60


def test_without_validation_every_painted_voxel_trains(seen):
    image, annotation, _ = _cubes()
    config = TrainConfig(iterations=3, time_budget=None, base_channels=4, validation=False)
    model = run_to_completion(train(image, annotation, config))
    assert "validation" not in model.config.history
    assert np.array_equal(seen[0], annotation.astype(np.int64) - 1)


def test_a_run_that_finds_nothing_trains_again_at_half_the_rate(monkeypatch):
    image, annotation, _ = _cubes()
    calls = []
    real = Guard.missed

    def missed_once(self, fraction):
        calls.append(fraction)
        return [1] if len(calls) == 2 else real(self, fraction)

    monkeypatch.setattr(Guard, "missed", missed_once)
    rates = []

    import napari_medseg.training.optimisation as optimisation

    step = optimisation.Optimisation.step

    def spy_step(self, images, targets, lr):
        rates.append(self.config.learning_rate)
        return step(self, images, targets, lr)

    monkeypatch.setattr(optimisation.Optimisation, "step", spy_step)
    config = TrainConfig(iterations=150, time_budget=None, base_channels=4, patch_shape=PATCH)
    items = []
    model = run_to_completion(train(image, annotation, config), items.append)
    assert any("training again at half the learning rate" in p.message for p in items)
    assert sorted(set(rates)) == [0.005, 0.01]  # the second attempt at half the rate
    assert model.config.history["validation"]["restarted"] is True
    assert model.config.history["steps"] == 150  # both attempts within the one budget
    assert items[-1].fraction == pytest.approx(1.0)


def test_the_cli_prints_the_validation_figure(tmp_path):
    from napari_medseg.io import write_volume

    image, annotation, _ = _cubes()
    write_volume(tmp_path / "image.nii.gz", image)
    write_volume(tmp_path / "annotation.nii.gz", annotation, labels=True)
    done = subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", "train", str(tmp_path / "image.nii.gz"),
         str(tmp_path / "annotation.nii.gz"), "--out", str(tmp_path / "model.safetensors"),
         "--iterations", "60", "--device", "cpu", "--base-channels", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "validation Dice" in done.stdout and "held out" in done.stdout


def test_describe_validation_warns_of_a_missed_structure():
    history = {"validation": {"score": 0.0, "held_out": "3 painted voxels in blocks",
                              "restarted": True, "missed": ["tumour"]}}
    line, warning = describe_validation(history)
    assert "0.000" in line and "trained again" in line
    assert warning is not None and "found no tumour" in warning
    assert describe_validation({}) == ("", None)
