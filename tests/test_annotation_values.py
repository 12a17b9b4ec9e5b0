"""Annotation values decide the class count only within bounds: a stray value (300, 10**9)
or a gap among the painted structures is refused with its count and position, promptly."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from napari_medseg.annotation import validate_annotation
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train
from napari_medseg.training.plan import plan_training

SHAPE = (8, 16, 16)


def tiny_case(dtype: type = np.uint16) -> tuple[np.ndarray, np.ndarray]:
    """A bright cube in noise; slice 4 painted (background 1, cube 2)."""
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:6, 4:12, 4:12] = 1
    image = (truth * 2.0 + rng.normal(0, 0.3, SHAPE)).astype(np.float32)
    annotation = np.zeros(SHAPE, dtype)
    annotation[4] = truth[4] + 1
    return image, annotation


def tiny_config() -> TrainConfig:
    return TrainConfig(iterations=1, time_budget=None, device="cpu", base_channels=4, seed=0)


def one_line(message: str) -> str:
    assert message and "\n" not in message and len(message) < 400, message
    return message


def test_a_stray_300_is_refused_with_its_count_and_position():
    image, annotation = tiny_case()
    annotation[3, 10, 12] = 300
    with pytest.raises(MedsegInputError) as refused:
        validate_annotation(annotation, annotation.shape)
    message = one_line(str(refused.value))
    assert "annotation value 300 (1 voxel, first at z=3 y=10 x=12)" in message
    with pytest.raises(MedsegInputError, match="value 300 \\(1 voxel"):
        plan_training(image, annotation, tiny_config())


def test_several_stray_voxels_are_counted_and_the_first_is_named():
    from napari_medseg.annotation import MAX_CLASSES

    _, annotation = tiny_case(np.int32)
    annotation[5, 1, 2] = annotation[6, 0, 0] = annotation[7, 15, 15] = 10**9
    with pytest.raises(MedsegInputError) as refused:
        validate_annotation(annotation, annotation.shape)
    message = one_line(str(refused.value))
    assert "annotation value 1000000000 (3 voxels, first at z=5 y=1 x=2)" in message
    assert f"{MAX_CLASSES - 1} structures" in message


def test_checking_a_huge_value_allocates_nothing_by_value():
    _, annotation = tiny_case(np.int64)
    annotation[0, 0, 0] = 2**62
    tracemalloc.start()
    try:
        with pytest.raises(MedsegInputError, match="value 4611686018427387904"):
            validate_annotation(annotation, annotation.shape)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * annotation.nbytes + 2**20


def test_a_gap_among_unnamed_structures_is_refused():
    _, annotation = tiny_case()
    annotation[3, 10, 12] = 3  # structure 2 (the cube is 1) ...
    annotation[3, 10, 13] = 250  # ... and 249: structures 3 to 248 never painted
    with pytest.raises(MedsegInputError) as refused:
        validate_annotation(annotation, annotation.shape)
    message = one_line(str(refused.value))
    assert "annotation value 250 (1 voxel, first at z=3 y=10 x=13)" in message
    assert "246 structures never painted (values 4-249)" in message
    assert "name the structures" in message and "relabel" in message


def test_one_missing_structure_is_a_gap_too_unless_the_structures_are_named():
    _, annotation = tiny_case()
    annotation[3, 10, 12] = 4  # structures 1 and 3 painted, not 2
    with pytest.raises(MedsegInputError, match="1 structure never painted"):
        validate_annotation(annotation, annotation.shape)
    assert validate_annotation(annotation, annotation.shape, n_classes=4) == 4


def test_a_value_beyond_the_named_structures_is_refused_with_its_position():
    image, annotation = tiny_case()
    annotation[3, 10, 12] = 4  # structure 3, with names for structures 1 and 2
    with pytest.raises(MedsegInputError) as refused:
        run_to_completion(train(image, annotation, tiny_config(), class_names=["a", "b"]))
    message = one_line(str(refused.value))
    assert "annotation value 4 (1 voxel, first at z=3 y=10 x=12)" in message
    assert "2 declared structure" in message and "structure k is painted as k+1" in message


def test_more_names_than_a_model_may_have_are_refused():
    from napari_medseg.annotation import MAX_CLASSES

    image, annotation = tiny_case()
    names = [f"s{k}" for k in range(MAX_CLASSES)]  # + background: one class too many
    with pytest.raises(MedsegInputError, match=f"at most {MAX_CLASSES - 1} structures"):
        plan_training(image, annotation, tiny_config(), class_names=names)


def test_medseg_train_refuses_a_billion_promptly(tmp_path):
    from napari_medseg.io import write_volume

    image, annotation = tiny_case(np.int32)
    annotation[3, 10, 12] = 10**9
    write_volume(tmp_path / "img.nii.gz", image, spacing=(1.0, 1.0, 1.0))
    write_volume(tmp_path / "ann.nii.gz", annotation, spacing=(1.0, 1.0, 1.0), labels=True)
    out = tmp_path / "model.safetensors"
    argv = [str(tmp_path / "img.nii.gz"), str(tmp_path / "ann.nii.gz"), "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", "train", *argv,
         "--iterations", "1", "--device", "cpu", "--base-channels", "4"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    err = one_line(done.stderr.strip())
    assert err.startswith("medseg train: error: ") and "value 1000000000 (1 voxel" in err
    assert not out.exists()


def test_normal_annotations_still_train():
    image, annotation = tiny_case(np.uint8)
    plan = plan_training(image, annotation, tiny_config())
    assert plan.n_classes == 2
    assert plan.class_voxel_counts == tuple(
        int(np.count_nonzero(annotation == c + 1)) for c in range(2)
    )
    model = run_to_completion(train(image, annotation, tiny_config()))
    assert model.config.n_classes == 2


def test_named_structures_may_go_unpainted():
    """Names declare the classes: structure 2 named but not painted yet trains 3 classes."""
    image, annotation = tiny_case()
    plan = plan_training(image, annotation, tiny_config(), class_names=["cube", "rim"])
    assert plan.n_classes == 3 and plan.class_voxel_counts[2] == 0
    model = run_to_completion(train(image, annotation, tiny_config(), class_names=["cube", "rim"]))
    assert model.config.class_names == ["background", "cube", "rim"]
    labels = predict_volume(model, image, PredictConfig(device="cpu")).labels
    assert set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.gui
def test_train_widget_shows_the_stray_value_in_one_line(synthetic_viewer, models):
    from napari_medseg._qt.train_widget import TrainWidget

    viewer = synthetic_viewer
    painted = np.array(viewer.layers["synthetic annotation"].data, dtype=np.uint16)
    painted[3, 10, 12] = 300
    stray = viewer.add_labels(painted, name="stray annotation", scale=(2.0, 1.0, 1.0))
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.annotation_picker.set_layer(stray)
    widget.form.set_values(time_budget=None, iterations=1)
    assert widget.start_training() is False
    text = one_line(widget.status.text())
    assert widget.status.is_error and "value 300 (1 voxel, first at z=3 y=10 x=12)" in text
    assert not widget.is_running and len(models) == 0
