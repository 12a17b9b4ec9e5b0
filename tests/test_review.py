"""The review numbers: volumes in mL, the per-slice Dice strip, its worst slice, error maps."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.errors import MedsegInputError
from napari_medseg.review import (
    error_maps,
    review,
    slice_dice_strip,
    volume_difference_percent,
    volumes_ml,
    worst_slice,
)


def _pair() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:5, 2:6, 2:6] = 1  # 4 slices x 16 voxels
    ref[2:4, 0:2, 0:2] = 2  # 2 slices x 4 voxels
    seg = ref.copy()
    seg[3, 2:6, 2:4] = 0  # slice 3 loses half of structure 1
    seg[5, 0, 0] = 1  # a stray voxel on slice 5, where the expert has nothing
    return seg, ref


def test_volumes_in_ml_follow_the_voxel_size():
    seg, ref = _pair()
    volumes = volumes_ml(ref, (2.0, 0.5, 0.5), [1, 2, 3])
    assert volumes[1] == pytest.approx(64 * 0.5 / 1000)
    assert volumes[2] == pytest.approx(8 * 0.5 / 1000)
    assert volumes[3] == 0.0
    assert volume_difference_percent(0.9, 1.0) == pytest.approx(-10.0)
    assert volume_difference_percent(1.0, 0.0) is None
    with pytest.raises(MedsegInputError):
        volumes_ml(ref, (1.0, 1.0), [1])


def test_strip_scores_each_slice_and_marks_empty_ones():
    seg, ref = _pair()
    strip = slice_dice_strip(seg, ref, 0, [1, 2])
    assert np.isnan(strip[0])  # nothing on slice 0
    assert strip[1] == 1.0 and strip[2] == 1.0 and strip[4] == 1.0
    # slice 3: structure 1 Dice 2*8/(8+16), structure 2 perfect -> mean
    assert strip[3] == pytest.approx((16 / 24 + 1.0) / 2)
    assert strip[5] == 0.0  # only the stray voxel
    assert worst_slice(strip) == 5
    along_x = slice_dice_strip(seg, ref, 2, [1, 2])
    assert along_x.shape == (8,) and np.isnan(along_x[7])


def test_strip_respects_the_scoring_mask():
    seg, ref = _pair()
    mask = np.ones(seg.shape, bool)
    mask[5] = False  # the stray voxel is painted: not scored
    strip = slice_dice_strip(seg, ref, 0, [1, 2], mask)
    assert np.isnan(strip[5])
    assert worst_slice(strip) == 3


def test_worst_slice_of_an_empty_strip_is_none():
    assert worst_slice(np.full(4, np.nan)) is None
    assert worst_slice(np.zeros(0)) is None


def test_error_maps_label_each_error_with_its_structure():
    seg, ref = _pair()
    fp, fn = error_maps(seg, ref)
    assert fp[5, 0, 0] == 1 and np.count_nonzero(fp) == 1
    assert np.count_nonzero(fn) == 8 and set(np.unique(fn[fn > 0])) == {1}
    swapped = ref.copy()
    swapped[ref == 2] = 1  # structure 2 called 1: FP of 1 and FN of 2 at the same voxels
    fp, fn = error_maps(swapped, ref)
    assert set(np.unique(fp)) == {0, 1} and set(np.unique(fn)) == {0, 2}
    mask = np.zeros(seg.shape, bool)
    fp, fn = error_maps(seg, ref, mask)
    assert not fp.any() and not fn.any()


def test_review_bundles_everything():
    seg, ref = _pair()
    found = review(seg, ref, (1.0, 1.0, 1.0), [1, 2])
    assert set(found.strips) == {0, 1, 2}
    assert found.segmentation_ml[1] == pytest.approx((64 - 8 + 1) / 1000)
    assert found.expert_ml[2] == pytest.approx(8 / 1000)
    assert found.false_positive.shape == seg.shape


def test_mismatched_shapes_are_refused():
    with pytest.raises(MedsegInputError):
        slice_dice_strip(np.zeros((2, 2)), np.zeros((2, 3)), 0, [1])
    with pytest.raises(MedsegInputError):
        slice_dice_strip(np.zeros((2, 2)), np.zeros((2, 2)), 2, [1])
