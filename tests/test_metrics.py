"""Tests of napari_medseg.metrics against hand-computed and brute-force values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from napari_medseg.errors import MedsegInputError
from napari_medseg.metrics import (
    EvaluationResult,
    average_symmetric_surface_distance,
    dice,
    evaluate,
    hausdorff95,
    jaccard,
    per_slice_dice,
    segmentation_accuracy,
    surface_distances,
)


def _cube(shape, lo, hi):
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out


def _brute_surface(region):
    """Surface voxels: inside, with a 6-neighbour outside (or beyond the border)."""
    padded = np.pad(region, 1)
    inner = np.ones_like(region)
    for axis in range(region.ndim):
        for shift in (-1, 1):
            rolled = np.roll(padded, shift, axis=axis)[(slice(1, -1),) * region.ndim]
            inner &= rolled
    return region & ~inner


def _brute_distances(a, b, spacing):
    pa = np.argwhere(_brute_surface(a)) * np.asarray(spacing)
    pb = np.argwhere(_brute_surface(b)) * np.asarray(spacing)
    d = cdist(pa, pb)
    return d.min(axis=1), d.min(axis=0)


# ----------------------------------------------------------------- overlap metrics


def test_overlap_metrics_hand_computed():
    pred = np.array([1, 1, 0, 0, 1], bool).reshape(1, 1, 5)
    ref = np.array([1, 0, 1, 0, 0], bool).reshape(1, 1, 5)
    # |P & R| = 1, |P| = 3, |R| = 2, FP = 2, FN = 1
    assert dice(pred, ref) == pytest.approx(2 / 5)
    assert jaccard(pred, ref) == pytest.approx(1 / 4)
    assert segmentation_accuracy(pred, ref) == pytest.approx((1 - 3 / 2) * 100)  # -50 %


def test_dice_matches_set_implementation():
    rng = np.random.default_rng(3)
    pred = rng.random((6, 7, 8)) > 0.6
    ref = rng.random((6, 7, 8)) > 0.5
    a = {tuple(i) for i in np.argwhere(pred)}
    b = {tuple(i) for i in np.argwhere(ref)}
    expected = 2 * len(a & b) / (len(a) + len(b))
    assert abs(dice(pred, ref) - expected) < 1e-9
    assert abs(jaccard(pred, ref) - len(a & b) / len(a | b)) < 1e-9


def test_perfect_prediction():
    ref = _cube((6, 6, 6), (1, 1, 1), (4, 4, 4))
    assert dice(ref, ref) == 1.0
    assert jaccard(ref, ref) == 1.0
    assert segmentation_accuracy(ref, ref) == 100.0
    assert hausdorff95(ref, ref, (2.0, 1.0, 1.0)) == 0.0
    assert average_symmetric_surface_distance(ref, ref) == 0.0


# ----------------------------------------------------------------- surface distances


def test_hd95_and_assd_of_shifted_cubes_known_values():
    shape, spacing = (12, 7, 7), (3.0, 1.0, 1.0)
    ref = _cube(shape, (2, 2, 2), (5, 5, 5))  # z 2..4
    pred = _cube(shape, (7, 2, 2), (10, 5, 5))  # z 7..9: shifted by 5 voxels = 15 mm
    # surface voxels of a 3x3x3 cube: 26; distances 15 mm (9), 12 mm (8), 9 mm (9)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(15.0)
    assert average_symmetric_surface_distance(pred, ref, spacing) == pytest.approx(12.0)
    assert hausdorff95(ref, pred, spacing) == pytest.approx(15.0)


def test_surface_distances_match_brute_force_anisotropic():
    shape, spacing = (14, 12, 12), (3.0, 0.8, 0.8)
    ref = _cube(shape, (3, 2, 2), (8, 9, 8))
    pred = _cube(shape, (5, 3, 2), (10, 9, 10))  # shifted by 2 voxels (6 mm) along z
    got = surface_distances(pred, ref, spacing)
    want = _brute_distances(pred, ref, spacing)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.sort(g), np.sort(w), atol=1e-9)
    hd = max(np.percentile(want[0], 95), np.percentile(want[1], 95))
    assd = (want[0].sum() + want[1].sum()) / (want[0].size + want[1].size)
    assert hausdorff95(pred, ref, spacing) == pytest.approx(hd)
    assert average_symmetric_surface_distance(pred, ref, spacing) == pytest.approx(assd)
    # the z faces are 2 voxels apart: 6 mm
    assert 6.0 in np.round(got[0], 9)


def test_surface_distances_random_blobs_brute_force():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.random((10, 12, 11)), 1.5) > 0.5
    b = ndimage.gaussian_filter(rng.random((10, 12, 11)), 1.5) > 0.5
    spacing = (2.0, 1.0, 0.5)
    got = surface_distances(a, b, spacing)
    want = _brute_distances(a, b, spacing)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.sort(g), np.sort(w), atol=1e-9)


# ----------------------------------------------------------------- empty cases


def test_both_empty_defined_values():
    empty = np.zeros((4, 5, 6), bool)
    assert dice(empty, empty) == 1.0
    assert jaccard(empty, empty) == 1.0
    assert segmentation_accuracy(empty, empty) == 100.0
    assert hausdorff95(empty, empty, (2, 1, 1)) == 0.0
    assert average_symmetric_surface_distance(empty, empty, (2, 1, 1)) == 0.0


@pytest.mark.parametrize("pred_empty", [True, False])
def test_one_empty_defined_values(pred_empty):
    shape, spacing = (4, 5, 6), (2.0, 1.0, 1.0)
    full = _cube(shape, (1, 1, 1), (3, 3, 3))
    empty = np.zeros(shape, bool)
    pred, ref = (empty, full) if pred_empty else (full, empty)
    diagonal = math.sqrt(8**2 + 5**2 + 6**2)
    assert dice(pred, ref) == 0.0
    assert jaccard(pred, ref) == 0.0
    assert segmentation_accuracy(pred, ref) == 0.0
    assert hausdorff95(pred, ref, spacing) == pytest.approx(diagonal)
    assert average_symmetric_surface_distance(pred, ref, spacing) == pytest.approx(diagonal)
    assert surface_distances(pred, ref, spacing) is None


def test_sa_negative_with_many_false_positives():
    ref = _cube((5, 5, 5), (2, 2, 2), (3, 3, 3))  # 1 voxel
    pred = _cube((5, 5, 5), (0, 0, 0), (2, 2, 2))  # 8 voxels, all wrong
    assert segmentation_accuracy(pred, ref) == pytest.approx((1 - 9 / 1) * 100)


# ----------------------------------------------------------------- scoring mask


def test_mask_restricts_overlap_metrics():
    ref = _cube((6, 6, 6), (1, 1, 1), (5, 5, 5))
    pred = ref.copy()
    pred[0] = True  # false positives on slice 0 only
    assert dice(pred, ref) < 1.0
    scored = np.ones(ref.shape, bool)
    scored[0] = False
    assert dice(pred, ref, mask=scored) == 1.0
    assert jaccard(pred, ref, mask=scored) == 1.0
    assert segmentation_accuracy(pred, ref, mask=scored) == 100.0
    assert hausdorff95(pred, ref, mask=scored) == 0.0
    assert hausdorff95(pred, ref) > 0.0


def test_mask_excluding_all_errors_and_all_reference():
    ref = _cube((6, 6, 6), (1, 1, 1), (3, 3, 3))
    pred = np.zeros_like(ref)
    scored = ~ref  # only voxels where both are background are scored
    assert dice(pred, ref, mask=scored) == 1.0
    assert average_symmetric_surface_distance(pred, ref, (1, 1, 1), mask=scored) == 0.0


def test_masked_surface_has_no_artificial_cut_faces():
    cube = _cube((9, 9, 9), (2, 2, 2), (7, 7, 7))  # 5x5x5: 98 surface voxels
    assert surface_distances(cube, cube)[0].size == 98
    scored = np.ones(cube.shape, bool)
    scored[4] = False  # an annotated slice through the middle
    dists = surface_distances(cube, cube, mask=scored)
    # faces z=2 and z=6 (25 each) + rings on z=3 and z=5 (16 each); the cut adds nothing
    assert dists[0].size == 25 + 25 + 16 + 16
    assert np.all(dists[0] == 0)


def test_masked_surface_distance_counts_only_scored_voxels():
    spacing = (3.0, 1.0, 1.0)
    ref = _cube((12, 8, 8), (2, 2, 2), (9, 6, 6))
    pred = ref.copy()
    pred[8] = False  # error on slice 8 only
    assert hausdorff95(pred, ref, spacing) > 0.0
    scored = np.ones(ref.shape, bool)
    scored[7:] = False
    assert hausdorff95(pred, ref, spacing, mask=scored) == 0.0


# ----------------------------------------------------------------- per slice


def test_per_slice_dice():
    ref = np.zeros((3, 2, 2), np.uint8)
    pred = np.zeros_like(ref)
    ref[1] = 1
    pred[1] = 1
    ref[2, 0] = 1  # 2 voxels
    pred[2, :, 0] = 1  # 2 voxels, one shared
    pred[2, 1, 1] = 2  # another label: ignored
    result = per_slice_dice(pred, ref, label=1, axis=0)
    np.testing.assert_allclose(result.dice, [1.0, 1.0, 0.5])
    assert not np.isnan(result.dice).any()
    np.testing.assert_array_equal(result.has_reference, [False, True, True])
    np.testing.assert_array_equal(result.has_prediction, [False, True, True])
    assert result.mean_over_reference() == pytest.approx(0.75)
    along_x = per_slice_dice(pred, ref, label=1, axis=2)
    assert along_x.dice.shape == (2,)


# ----------------------------------------------------------------- evaluate


def _two_label_case():
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:4, 1:4, 1:4] = 1
    ref[2:5, 5:8, 5:8] = 2
    seg = ref.copy()
    seg[3, 1:4, 1:4] = 0  # misses one slice of structure 1
    return seg, ref


def test_evaluate_per_class_and_mean():
    seg, ref = _two_label_case()
    result = evaluate(seg, ref, spacing=(2.0, 1.0, 1.0))
    assert isinstance(result, EvaluationResult)
    assert sorted(result.classes) == [1, 2]
    assert result.classes[1].dice == pytest.approx(dice(seg == 1, ref == 1))
    assert result.classes[1].sa == pytest.approx((1 - 9 / 27) * 100)
    assert result.classes[1].n_reference == 27
    assert result.classes[1].n_predicted == 18
    assert result.classes[2].dice == 1.0
    assert result.classes[2].hd95_mm == 0.0
    assert result.mean.dice == pytest.approx((result.classes[1].dice + 1.0) / 2)


def test_evaluate_to_dict_is_exact_and_json():
    seg, ref = _two_label_case()
    d = evaluate(seg, ref).to_dict()
    assert set(d) == {"classes", "mean"}
    assert set(d["classes"]) == {"1", "2"}
    for values in d["classes"].values():
        assert {"dice", "jaccard", "sa", "hd95_mm", "assd_mm"} <= set(values)
        assert all(type(values[k]) is float for k in ("dice", "jaccard", "sa", "hd95_mm"))
    assert set(d["mean"]) == {"dice", "jaccard", "sa"}
    assert all(type(v) is float for v in d["mean"].values())
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d


def test_evaluate_labels_mask_and_empty_classes():
    seg, ref = _two_label_case()
    only = evaluate(seg, ref, labels=[2])
    assert list(only.classes) == [2]
    missing = evaluate(seg, ref, labels=[3])  # absent in both: defined values
    assert missing.classes[3].dice == 1.0
    assert missing.classes[3].hd95_mm == 0.0
    scored = np.ones(ref.shape, bool)
    scored[3] = False
    masked = evaluate(seg, ref, mask=scored)
    assert masked.classes[1].dice == 1.0
    json.dumps(evaluate(np.zeros_like(ref), ref).to_dict(), allow_nan=False)
    nothing = evaluate(np.zeros_like(ref), np.zeros_like(ref))
    assert nothing.classes == {}
    assert nothing.mean.dice == 1.0


def test_evaluate_without_surface_distances():
    seg, ref = _two_label_case()
    result = evaluate(seg, ref, surface_distances=False)
    assert result.classes[1].hd95_mm is None
    json.dumps(result.to_dict(), allow_nan=False)


def test_evaluate_shape_mismatch_and_bad_spacing():
    with pytest.raises(MedsegInputError, match="shapes differ"):
        evaluate(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(MedsegInputError):
        evaluate(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)), mask=np.ones((2, 3, 3), bool))
    with pytest.raises(MedsegInputError):
        hausdorff95(np.ones((2, 3, 4)), np.ones((2, 3, 4)), spacing=(1.0, 1.0))
    with pytest.raises(MedsegInputError):
        dice(np.ones((2, 3)), np.ones((3, 2)))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda a: a + 0.25, "value 0.25 is not a whole number"),
        (lambda a: np.where(a > 0, a, np.nan), "it holds NaN or infinite"),
        (lambda a: a - 3.0, "it holds negative values \\(e.g. -3\\)"),
        (lambda a: a.astype(np.int16) - 1, "it holds negative values"),
        (lambda a: a.astype(np.complex64), "voxel type complex64"),
    ],
)
@pytest.mark.parametrize("which", ["segmentation", "reference"])
def test_evaluate_refuses_maps_that_are_not_label_maps(bad, message, which):
    """An intensity image given instead of a mask is refused, not scored class by class."""
    labels = np.zeros((4, 5, 6), np.float32)
    labels[1:3, 1:4, 1:5] = 1
    arrays = {"segmentation": labels, "reference": labels}
    arrays[which] = bad(labels)
    with pytest.raises(MedsegInputError, match=f"the {which} is not a label map: {message}"):
        evaluate(arrays["segmentation"], arrays["reference"])


def test_evaluate_accepts_boolean_and_whole_float_label_maps():
    labels = np.zeros((4, 5, 6), np.float64)
    labels[1:3, 1:4, 1:5] = 2.0
    result = evaluate(labels, labels.astype(np.uint16))
    assert list(result.classes) == [2] and result.classes[2].dice == 1.0
    assert evaluate(labels > 0, labels > 0).classes[1].dice == 1.0


def test_tables():
    seg, ref = _two_label_case()
    result = evaluate(seg, ref, class_names=["tumour", "oedema"])
    md = result.to_markdown()
    assert md.splitlines()[0].startswith("| class | name | Dice")
    assert "tumour" in md and "oedema" in md
    assert md.splitlines()[-1].startswith("| mean")
    table = result.format_table()
    assert "HD95 mm" in table.splitlines()[0]
    assert len(table.splitlines()) == 2 + 2 + 1


def test_evaluate_scores_a_brain_sized_volume():
    shape = (25, 256, 256)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ref = ((zz - 14) / 4.0) ** 2 + ((yy - 120) / 30.0) ** 2 + ((xx - 180) / 25.0) ** 2 < 1
    seg = ((zz - 14) / 4.0) ** 2 + ((yy - 124) / 30.0) ** 2 + ((xx - 178) / 27.0) ** 2 < 1
    result = evaluate(seg.astype(np.uint8), ref.astype(np.uint8), spacing=(6.5, 0.78, 0.78))
    assert 0.8 < result.classes[1].dice < 1.0


def test_an_empty_structure_shows_empty_distances_not_the_diagonal():
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[2:4, 2:5, 2:5] = 1
    ref[1, 6, 6] = 2
    seg = ref.copy()
    seg[seg == 2] = 0  # structure 2 missed entirely
    result = evaluate(seg, ref, spacing=(2.0, 1.0, 1.0))
    assert result.classes[2].empty == "segmentation" and result.classes[1].empty is None
    assert result.to_dict()["classes"]["2"]["empty"] == "segmentation"
    row = next(line for line in result.format_table().splitlines() if line.startswith("2 "))
    assert row.split()[-4:-2] == ["empty", "empty"]  # HD95 and ASSD; n_ref, n_pred follow
    assert "empty" not in next(
        line for line in result.format_table().splitlines() if line.startswith("1 ")
    )
