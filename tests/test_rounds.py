"""Training rounds on disk: what a round keeps, and that a killed process loses no round."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_checkpoint import SHAPE, tiny_case  # the same tiny cube case

from napari_medseg.errors import MedsegInputError
from napari_medseg.progress import run_to_completion
from napari_medseg.rounds import RoundStore, RoundWarning
from napari_medseg.training import TrainConfig, train

KEY = "cube-0123456789abcdef"


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    image, annotation = tiny_case()
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu", seed=0)
    return run_to_completion(train(image, annotation, config, class_names=["cube"]))


def test_rounds_keep_annotation_model_and_figures(model, tmp_path):
    _, annotation = tiny_case()
    store = RoundStore(KEY, tmp_path)
    first = store.add(annotation, model, model_name="unet3d · cube · 10:00")
    more = annotation.copy()
    more[:, 8] = 1  # a coronal slice of background
    second = store.add(more, model, dice=0.5)
    rounds = store.rounds()
    assert [r.number for r in rounds] == [1, 2]
    assert rounds[0].slices == [1, 0, 0] and rounds[1].slices == [1, 1, 0]
    assert rounds[1].painted == 2 and rounds[1].dice == 0.5
    assert rounds[0].model_name == first.model_name and rounds[0].class_names == ["cube"]
    assert rounds[0].steps == model.config.history["steps"]
    np.testing.assert_array_equal(store.load_annotation(second, SHAPE), more)
    loaded = store.load_model(rounds[0])
    for key, value in model.network.state_dict().items():
        torch.testing.assert_close(loaded.network.state_dict()[key], value)
    assert store.load_segmentation(first) is None
    labels = np.ones(SHAPE, np.uint8)
    store.save_segmentation(first, labels, dice=0.75)
    np.testing.assert_array_equal(store.load_segmentation(store.rounds()[0]), labels)
    assert store.rounds()[0].dice == 0.75


def test_wrong_shape_and_damaged_annotation_are_refused(model, tmp_path):
    _, annotation = tiny_case()
    store = RoundStore(KEY, tmp_path)
    record = store.add(annotation, model)
    with pytest.raises(MedsegInputError, match="painted on"):
        store.load_annotation(record, (8, 16, 15))
    record.checksum = "00000000-|u1-8x16x16"
    with pytest.raises(MedsegInputError, match="damaged"):
        store.load_annotation(record, SHAPE)
    with pytest.raises(MedsegInputError):
        RoundStore("../escape", tmp_path)


def test_a_damaged_round_is_skipped_with_a_warning(model, tmp_path):
    _, annotation = tiny_case()
    store = RoundStore(KEY, tmp_path)
    store.add(annotation, model)
    second = store.add(annotation, model)
    (second.folder / "model.safetensors").unlink()
    with pytest.warns(RoundWarning, match="round_002"):
        assert [r.number for r in store.rounds()] == [1]


KILLED_MID_ROUND = """
import os, signal, sys
import numpy as np, torch
sys.path.insert(0, {tests!r})
from test_checkpoint import tiny_case
from test_rounds import KEY
from napari_medseg import checkpoint
from napari_medseg.progress import run_to_completion
from napari_medseg.rounds import RoundStore
from napari_medseg.training import TrainConfig, train
from test_checkpoint import SHAPE, tiny_case  # the same tiny cube case
torch.set_num_threads(1)
image, annotation = tiny_case()
config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu", seed=0)
model = run_to_completion(train(image, annotation, config, class_names=["cube"]))
store = RoundStore(KEY, {root!r})
store.add(annotation, model)
real_save = checkpoint.save_model
def save_then_die(path, model):
    real_save(path, model)
    os.kill(os.getpid(), signal.SIGKILL)  # killed between the model and the record
checkpoint.save_model = save_then_die
store.add(annotation, model)
"""


def test_a_process_killed_mid_round_keeps_the_earlier_rounds(model, tmp_path):
    script = KILLED_MID_ROUND.format(tests=str(Path(__file__).parent), root=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], check=False)
    assert result.returncode == -9  # really killed
    store = RoundStore(KEY, tmp_path)
    assert [r.number for r in store.rounds()] == [1]
    _, annotation = tiny_case()
    assert store.add(annotation, model).number == 2
