"""Tests of the synthetic case generator, the slice helpers and the threshold baselines."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.annotation import fully_annotated_slices, validate_annotation
from napari_medseg.errors import MedsegInputError
from napari_medseg.metrics import dice
from napari_medseg.synthetic import (
    STRUCTURE_NAMES,
    SyntheticCase,
    best_threshold_dice,
    make_synthetic_case,
    nearest_mean_from_annotation,
    pick_slices,
    sparse_annotation_from_mask,
    threshold_from_annotation,
)

SMALL = (24, 32, 32)


@pytest.fixture(scope="module")
def default_case() -> SyntheticCase:
    return make_synthetic_case()


def test_case_types_and_conventions(default_case):
    case = default_case
    assert case.image.shape == (48, 64, 64)
    assert case.image.dtype == np.float32
    assert case.expert_mask.dtype == np.uint8
    assert case.annotation.dtype == np.uint8
    assert np.isfinite(case.image).all()
    assert set(np.unique(case.expert_mask)) == {0, 1}
    assert set(np.unique(case.annotation)) == {0, 1, 2}
    assert case.class_names == ("tube",)
    assert case.spacing == (1.0, 1.0, 1.0)
    assert validate_annotation(case.annotation, case.image.shape) == 2


def test_annotation_is_painted_slices_of_the_mask(default_case):
    case = default_case
    painted = case.annotation > 0
    np.testing.assert_array_equal(case.annotation[painted], case.expert_mask[painted] + 1)
    for axis in range(3):
        (index,) = case.annotated_slices[axis]
        assert fully_annotated_slices(case.annotation, axis) == [index]
        view = np.moveaxis(case.expert_mask, axis, 0)[index]
        assert view.any(), "annotated slices go through the structure"


def test_deterministic_for_a_seed():
    a = make_synthetic_case(SMALL, seed=5)
    b = make_synthetic_case(SMALL, seed=5)
    c = make_synthetic_case(SMALL, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.expert_mask, b.expert_mask)
    np.testing.assert_array_equal(a.annotation, b.annotation)
    assert not np.array_equal(a.image, c.image)


def test_three_structures_have_distinct_labels():
    case = make_synthetic_case(n_structures=3, seed=1)
    assert set(np.unique(case.expert_mask)) == {0, 1, 2, 3}
    assert case.class_names == STRUCTURE_NAMES
    assert set(np.unique(case.annotation)) <= {0, 1, 2, 3, 4}
    counts = np.bincount(case.expert_mask.ravel())
    assert (counts[1:] > 300).all()


def test_intensity_ranges_of_structures_overlap():
    case = make_synthetic_case(n_structures=3, seed=0)
    ranges = [np.percentile(case.image[case.expert_mask == k], [10, 90]) for k in (1, 2, 3)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert ranges[i][0] < ranges[j][1] and ranges[j][0] < ranges[i][1]


def test_anisotropic_spacing_and_custom_slices():
    case = make_synthetic_case((12, 32, 32), spacing=(3.0, 1.0, 1.0), slices_per_axis=(2, 0, 1))
    assert case.spacing == (3.0, 1.0, 1.0)
    assert len(case.annotated_slices[0]) == 2
    assert 1 not in case.annotated_slices
    assert case.expert_mask.any()


def test_distractors_are_bright_background(default_case):
    case = default_case
    inside = case.image[case.expert_mask == 1]
    bright_background = (case.image > np.median(inside)) & (case.expert_mask == 0)
    assert bright_background.sum() > 200


def test_plain_threshold_is_clearly_imperfect(default_case):
    case = default_case
    oracle = best_threshold_dice(case.image, case.expert_mask)
    assert 0.5 < oracle.dice[1] < 0.85
    fair = threshold_from_annotation(case.image, case.annotation)
    scored = case.annotation == 0
    assert dice(fair == 1, case.expert_mask == 1, mask=scored) <= oracle.dice[1] + 1e-6


def test_bad_arguments():
    with pytest.raises(MedsegInputError):
        make_synthetic_case((4, 32, 32))
    with pytest.raises(MedsegInputError):
        make_synthetic_case(SMALL, n_structures=4)
    with pytest.raises(MedsegInputError):
        make_synthetic_case(SMALL, spacing=(1.0, 0.0, 1.0))


# ----------------------------------------------------------------- slices


def test_pick_slices_evenly_through_foreground():
    mask = np.zeros((25, 4, 4), np.uint8)
    mask[11:18, 1, 1] = 1
    assert pick_slices(mask, 0, 3) == [12, 14, 16]
    assert pick_slices(mask, 0, 1) == [14]
    assert pick_slices(mask, 0, 0) == []
    assert pick_slices(mask, 0, 20) == list(range(11, 18))
    assert pick_slices(mask, 1, 2) == [1]
    breast = np.zeros((21, 3, 3), np.uint8)
    breast[8:11] = 1
    assert pick_slices(breast, 0, 2) == [8, 10]


def test_pick_slices_empty_mask_spreads_over_axis():
    assert pick_slices(np.zeros((10, 2, 2)), 0, 2) == [2, 7]


def test_sparse_annotation_from_mask():
    mask = np.zeros((4, 5, 6), np.uint8)
    mask[1:3, 1:4, 2:5] = 2
    ann = sparse_annotation_from_mask(mask, {0: [1], 2: [0]})
    np.testing.assert_array_equal(ann[1], mask[1] + 1)
    np.testing.assert_array_equal(ann[:, :, 0], 1)
    assert (ann[0, :, 1:] == 0).all() and (ann[3, :, 1:] == 0).all()
    with pytest.raises(MedsegInputError):
        sparse_annotation_from_mask(mask, {0: [4]})
    with pytest.raises(MedsegInputError):
        sparse_annotation_from_mask(mask, {3: [0]})


# ----------------------------------------------------------------- baselines


def _separable():
    image = np.zeros((6, 8, 8), np.float32)
    mask = np.zeros(image.shape, np.uint8)
    mask[1:4, 2:6, 2:6] = 1
    mask[4:6, 0:3, 0:3] = 2
    image[mask == 1] = 5.0
    image[mask == 2] = 9.0
    image += np.random.default_rng(0).uniform(0, 0.5, image.shape).astype(np.float32)
    return image, mask


def test_best_threshold_on_separable_image_is_perfect():
    image, mask = _separable()
    result = best_threshold_dice(image, mask)
    assert result.dice == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}
    low, high = result.windows[1]
    assert 0.5 <= low <= 5.0 and 5.5 <= high <= 9.0
    # a lower threshold alone cannot isolate the middle class
    assert best_threshold_dice(image, mask, window=False).dice[1] < 1.0
    assert result.mean_dice == pytest.approx(1.0)


def test_best_threshold_respects_scored_voxels():
    image, mask = _separable()
    image[0, 0, 0] = 5.2  # a background voxel with the intensity of structure 1
    scored = np.ones(mask.shape, bool)
    assert best_threshold_dice(image, mask, scored).dice[1] < 1.0
    scored[0, 0, 0] = False
    assert best_threshold_dice(image, mask, scored).dice[1] == pytest.approx(1.0)


def test_threshold_from_annotation_on_separable_image():
    image, mask = _separable()
    annotation = sparse_annotation_from_mask(mask, {0: [2, 4]})
    segmentation = threshold_from_annotation(image, annotation)
    assert segmentation.dtype == np.uint8
    np.testing.assert_array_equal(segmentation, mask)
    with pytest.raises(MedsegInputError):
        threshold_from_annotation(image, np.zeros(mask.shape, np.uint8))


def test_nearest_mean_from_annotation_assigns_the_closest_painted_mean():
    image = np.array([[[0.0, 0.2, 0.45, 0.55, 0.8, 1.0, 5.0]]])
    annotation = np.array([[[1, 0, 0, 0, 0, 2, 0]]], dtype=np.uint8)  # bg at 0, structure at 1
    np.testing.assert_array_equal(
        nearest_mean_from_annotation(image, annotation), [[[0, 0, 0, 1, 1, 1, 1]]]
    )
    # a structure nobody painted (3 -> structure 2 absent) is never chosen
    annotation = np.array([[[1, 0, 0, 0, 0, 2, 4]]], dtype=np.uint8)
    seg = nearest_mean_from_annotation(image, annotation)
    assert seg[0, 0, -1] == 3 and 2 not in seg
    with pytest.raises(MedsegInputError):
        nearest_mean_from_annotation(image, np.zeros((1, 1, 7), np.uint8))
