"""Putting the user's painted labels into a segmentation (``annotation.keep_painted``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.annotation import check_painted, keep_painted, validate_annotation
from napari_medseg.errors import MedsegInputError


def test_painted_voxels_take_the_painted_label_and_the_rest_is_untouched():
    labels = np.array([[0, 1, 2, 1, 0]], dtype=np.uint8)
    annotation = np.array([[0, 1, 3, 2, 2]], dtype=np.uint8)  # unknown, bg, s2, s1, s1
    assert keep_painted(labels, annotation) == 4
    np.testing.assert_array_equal(labels, [[0, 0, 2, 1, 1]])


def test_nothing_painted_changes_nothing():
    labels = np.arange(6, dtype=np.uint8).reshape(2, 3) % 3
    before = labels.copy()
    assert keep_painted(labels, np.zeros_like(labels)) == 0
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (np.zeros((2, 4), dtype=np.uint8), "shape"),
        (np.full((2, 3), -1, dtype=np.int16), "negative"),
        (np.full((2, 3), 1.5), "whole numbers"),
        (np.full((2, 3), 300, dtype=np.uint16), "does not fit"),
    ],
)
def test_refusals_leave_the_segmentation_unchanged(annotation, message):
    labels = np.ones((2, 3), dtype=np.uint8)
    with pytest.raises(MedsegInputError, match=message):
        keep_painted(labels, annotation)
    assert (labels == 1).all()


def test_check_painted_refuses_structures_the_model_does_not_know():
    annotation = np.array([0, 1, 2, 4])  # structure 3
    check_painted(annotation, n_classes=4)  # background + 3 structures: fine
    with pytest.raises(MedsegInputError, match="structure 3; the model knows 2"):
        check_painted(annotation, n_classes=3)


def test_training_refuses_the_same_bad_values():
    with pytest.raises(MedsegInputError, match="negative"):
        validate_annotation(np.array([-1, 1, 2]), (3,))
    with pytest.raises(MedsegInputError, match="whole numbers"):
        validate_annotation(np.array([0.5, 1, 2]), (3,))
