"""Cross-validation over the annotated slices (the paper's semi-automatic setup)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_medseg.annotation import fill_slice_background, mark_outside_box_background
from napari_medseg.cli import main
from napari_medseg.crossval import (
    CrossValConfig,
    CrossValProgress,
    CrossValResult,
    SliceUnit,
    assign_folds,
    crossval,
    find_units,
    fold_annotation,
    held_out_mask,
)
from napari_medseg.errors import MedsegInputError
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case, sparse_annotation_from_mask
from napari_medseg.training import TrainConfig

TINY = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu", seed=0)


def _cube_mask(shape=(12, 24, 24)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[3:9, 6:18, 5:17] = 1
    mask[5:8, 8:12, 8:12] = 2
    return mask


def test_units_are_the_painted_slices_not_the_crossing_lines():
    mask = _cube_mask()
    slices = {0: [4, 7], 1: [10], 2: [8, 12]}
    annotation = sparse_annotation_from_mask(mask, slices)
    units = find_units(annotation)
    assert units == [
        SliceUnit(0, 4),
        SliceUnit(0, 7),
        SliceUnit(1, 10),
        SliceUnit(2, 8),
        SliceUnit(2, 12),
    ]
    for shape, n, slices in [((24, 32, 32), 3, (3, 2, 1)), ((12, 24, 24), 1, (1, 1, 1))]:
        case = make_synthetic_case(shape=shape, n_structures=n, slices_per_axis=slices)
        expected = sorted(SliceUnit(a, i) for a, idx in case.annotated_slices.items() for i in idx)
        assert find_units(case.annotation) == expected


def test_units_of_adjacent_slices_and_full_volumes():
    mask = _cube_mask()
    adjacent = sparse_annotation_from_mask(mask, {0: [4, 5, 6], 1: [9, 10]})
    assert [u.label() for u in find_units(adjacent)] == ["z4", "z5", "z6", "y9", "y10"]
    full = (mask + 1).astype(np.uint8)  # every voxel annotated
    assert [u.label() for u in find_units(full)] == [f"z{i}" for i in range(3, 9)]
    assert find_units(np.ones(mask.shape, np.uint8)) == []


def test_folds_partition_the_units_interleaved():
    units = [
        SliceUnit(2, 5),
        SliceUnit(0, 3),
        SliceUnit(1, 7),
        SliceUnit(0, 9),
        SliceUnit(1, 2),
        SliceUnit(0, 1),
        SliceUnit(2, 1),
    ]
    folds = assign_folds(units, 3)
    assert len(folds) == 3
    flat = [u for fold in folds for u in fold]
    assert sorted(flat) == sorted(units) and len(set(flat)) == len(units)
    ordered = sorted(units)
    for i, unit in enumerate(ordered):
        assert unit in folds[i % 3]
    assert {u.axis for u in folds[0]} == {0, 1, 2}  # every plane in the first fold


def test_too_few_units_is_a_clear_error():
    mask = _cube_mask()
    annotation = sparse_annotation_from_mask(mask, {0: [4], 2: [8]})
    fill_slice_background(annotation, 0, 0)  # a background-only slice is no unit
    with pytest.raises(MedsegInputError) as info:
        assign_folds(find_units(annotation), 3)
    assert str(info.value) == (
        "crossval needs at least 3 annotated slices with a structure; found 2"
    )
    image = np.zeros(mask.shape, np.float32)
    with pytest.raises(MedsegInputError, match="found 2"):
        run_to_completion(crossval(image, annotation, CrossValConfig(3, TINY)))
    with pytest.raises(MedsegInputError, match="at least 2 folds"):
        run_to_completion(crossval(image, annotation, CrossValConfig(1, TINY)))


def test_a_fold_without_background_is_refused_before_training():
    mask = _cube_mask()
    annotation = sparse_annotation_from_mask(mask, {0: [4]})
    for z in (6, 8):  # structure painted, no background on these slices
        annotation[z][mask[z] > 0] = mask[z][mask[z] > 0] + 1
    assert [u.label() for u in find_units(annotation)] == ["z4", "z6", "z8"]
    gen = crossval(np.zeros(mask.shape, np.float32), annotation, CrossValConfig(3, TINY))
    with pytest.raises(MedsegInputError, match="fold 1: .* no background"):
        next(gen)


def test_held_out_voxels_are_unknown_and_everything_else_is_kept():
    mask = _cube_mask()
    annotation = sparse_annotation_from_mask(mask, {0: [4, 7], 1: [10], 2: [8, 12]})
    units = find_units(annotation)
    plan = assign_folds(units, 3)
    covered = np.zeros(mask.shape, bool)
    for held in plan:
        heldout = held_out_mask(annotation, held, units)
        training = fold_annotation(annotation, heldout)
        planes = np.zeros(mask.shape, bool)
        for unit in held:
            np.moveaxis(planes, unit.axis, 0)[unit.index] = True
        # every annotated voxel of a held-out slice (crossings included) is held out
        np.testing.assert_array_equal(heldout, planes & (annotation > 0))
        assert np.all(training[heldout] == 0)
        np.testing.assert_array_equal(training[~heldout], annotation[~heldout])
        assert training.dtype == annotation.dtype
        covered |= heldout
    # the crossing of z4 (fold 0) and x8 (fold 2) is held out in both folds
    assert covered[4, :, 8].all()


def test_roi_fill_and_background_slices_are_never_held_out():
    mask = _cube_mask((16, 32, 32))
    annotation = sparse_annotation_from_mask(mask, {0: [4, 6, 8]})
    mark_outside_box_background(annotation, [(2, 11), (4, 20), (3, 19)])
    fill_slice_background(annotation, 0, 10)  # background-only slice inside the box
    units = find_units(annotation)
    assert units == [SliceUnit(0, 4), SliceUnit(0, 6), SliceUnit(0, 8)]
    outside = annotation.copy()
    outside[2:11, 4:20, 3:19] = 0  # the region-of-interest fill
    for held in assign_folds(units, 3):
        heldout = held_out_mask(annotation, held, units)
        (z,) = [u.index for u in held]
        assert not heldout[outside > 0].any()
        assert not heldout[10].any()
        np.testing.assert_array_equal(heldout[z, 4:20, 3:19], True)
        assert heldout.sum() == 16 * 16
        training = fold_annotation(annotation, heldout)
        assert (training[10] == 1).all()
        np.testing.assert_array_equal(training[outside > 0], annotation[outside > 0])


def _tiny_case():
    return make_synthetic_case(shape=(12, 24, 24), n_structures=1, slices_per_axis=(1, 1, 1))


def test_tiny_crossval_end_to_end():
    case = _tiny_case()
    gen = crossval(
        case.image,
        case.annotation,
        CrossValConfig(3, TINY),
        spacing=case.spacing,
        class_names=case.class_names,
    )
    items: list[CrossValProgress] = []
    result: CrossValResult = run_to_completion(gen, items.append)
    assert result.complete and len(result.folds) == 3 and result.n_folds == 3
    assert [f.fold for f in result.folds] == [0, 1, 2]
    assert sorted(u for f in result.folds for u in f.held_out) == result.units
    for fold in result.folds:
        assert fold.train_steps == 2 and fold.n_scored > 0
        for value in [*fold.iou.values(), *fold.dice.values(), fold.mean_iou, fold.mean_dice]:
            assert 0.0 <= value <= 1.0
    assert {p.phase for p in items} == {"train", "predict"}
    assert {p.fold for p in items} == {0, 1, 2}
    fractions = [p.fraction for p in items]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1.0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["complete"] and data["folds_done"] == 3
    assert data["class_names"] == {"1": "tube"}
    assert 0.0 <= data["summary"]["mean"]["iou"] <= 1.0
    table = result.format_table()
    assert "tube" in table and "fold 3" in table and "±" in table


def test_stop_returns_the_finished_folds_marked_incomplete():
    case = _tiny_case()
    stop = threading.Event()

    def on_item(p: CrossValProgress) -> None:
        if p.fold == 1:
            stop.set()

    gen = crossval(case.image, case.annotation, CrossValConfig(3, TINY), stop=stop)
    result = run_to_completion(gen, on_item)
    assert not result.complete
    assert len(result.folds) == 1 and result.folds[0].fold == 0
    assert result.to_dict()["folds_done"] == 1
    assert "stopped" in result.format_table()


def test_cli_crossval_json(tmp_path, capsys):
    case = _tiny_case()
    image, annotation = tmp_path / "image.npy", tmp_path / "annotation.npy"
    np.save(image, case.image)
    np.save(annotation, case.annotation)
    code = main(
        [
            "crossval",
            str(image),
            str(annotation),
            "--folds",
            "3",
            "--iterations",
            "2",
            "--base-channels",
            "4",
            "--device",
            "cpu",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["complete"] and len(data["folds"]) == 3
    assert data["config"]["train"]["iterations"] == 2


def test_cli_crossval_table_and_user_error(tmp_path, capsys):
    case = _tiny_case()
    image, annotation = tmp_path / "image.npy", tmp_path / "annotation.npy"
    np.save(image, case.image)
    np.save(annotation, case.annotation)
    code = main(
        [
            "crossval",
            str(image),
            str(annotation),
            "--folds",
            "2",
            "--iterations",
            "1",
            "--base-channels",
            "4",
            "--device",
            "cpu",
            "--class-names",
            "pipe",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "pipe" in captured.out and "fold 2" in captured.out
    code = main(["crossval", str(image), str(annotation), "--folds", "4", "--iterations", "1"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines()[-1] == (
        "medseg crossval: error: crossval needs at least 4 annotated slices with a structure; "
        "found 3"
    )


def test_cli_crossval_first_ctrl_c_prints_the_folds_done(tmp_path, capsys, monkeypatch):
    import os
    import signal

    import napari_medseg.cli as cli
    from napari_medseg.progress import ProgressBar

    class InterruptingBar(ProgressBar):
        def update(self, fraction: float, detail: str = "") -> None:
            if "fold 2/" in detail and not getattr(self, "sent", False):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
            super().update(fraction, detail)

    monkeypatch.setattr(cli, "ProgressBar", InterruptingBar)
    case = _tiny_case()
    image, annotation = tmp_path / "image.npy", tmp_path / "annotation.npy"
    np.save(image, case.image)
    np.save(annotation, case.annotation)
    before = signal.getsignal(signal.SIGINT)
    code = main(
        [
            "crossval",
            str(image),
            str(annotation),
            "--iterations",
            "2",
            "--base-channels",
            "4",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 130
    assert "stopping after the current step" in captured.err
    assert "stopped: 1 fold(s) done" in captured.out
    assert signal.getsignal(signal.SIGINT) is before
