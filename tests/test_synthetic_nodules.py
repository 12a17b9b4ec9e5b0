"""The nodules-among-vessels volume: a case where one slice cannot tell a ball from a tube."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_medseg.errors import MedsegInputError
from napari_medseg.synthetic_nodules import NODULE_NAME, make_nodule_case


@pytest.fixture(scope="module")
def case():
    return make_nodule_case(seed=1)


def test_conventions_and_annotation(case):
    assert case.image.dtype == np.float32 and case.image.shape == (48, 64, 64)
    assert set(np.unique(case.expert_mask)) == {0, 1}
    assert case.class_names == (NODULE_NAME,)
    _, n_nodules = ndimage.label(case.expert_mask)
    assert n_nodules == 5
    painted = case.annotation > 0
    assert set(case.annotated_slices) == {0, 1, 2}
    np.testing.assert_array_equal(case.annotation[painted], case.expert_mask[painted] + 1)
    assert (case.annotation == 2).any() and (case.annotation == 0).mean() > 0.8


def test_deterministic_for_a_seed(case):
    again, other = make_nodule_case(seed=1), make_nodule_case(seed=2)
    np.testing.assert_array_equal(case.image, again.image)
    np.testing.assert_array_equal(case.annotation, again.annotation)
    assert not np.array_equal(case.expert_mask, other.expert_mask)


def test_vessels_are_background_discs_as_bright_as_the_nodules(case):
    """On a slice through nodules, as many bright discs are vessels as nodules, or more."""
    bright = case.image > np.percentile(case.image[case.expert_mask == 1], 25)
    smooth = ndimage.binary_opening(bright, structure=np.ones((1, 2, 2)))
    background_bright = smooth & ~ndimage.binary_dilation(case.expert_mask > 0, iterations=2)
    assert background_bright.sum() > case.expert_mask.sum()
    without = make_nodule_case(seed=1, n_vessels=0)
    bright_without = without.image > np.percentile(without.image[without.expert_mask == 1], 25)
    assert (bright_without & (without.expert_mask == 0)).sum() < 0.5 * (
        bright & (case.expert_mask == 0)
    ).sum()
    z = int(np.argmax(case.expert_mask.sum(axis=(1, 2))))
    _, vessel_discs = ndimage.label(background_bright[z])
    _, nodule_discs = ndimage.label(case.expert_mask[z])
    assert vessel_discs >= nodule_discs >= 1


def test_bad_arguments():
    with pytest.raises(MedsegInputError, match="16"):
        make_nodule_case((8, 64, 64))
    with pytest.raises(MedsegInputError, match="spacing"):
        make_nodule_case(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MedsegInputError, match="nodule"):
        make_nodule_case(n_nodules=0)
