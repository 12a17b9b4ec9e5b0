"""``medseg demo``'s cases: each bundled case comes with the annotation the demo trains on."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.annotation import fully_annotated_slices
from napari_medseg.demo import load_demo_case
from napari_medseg.errors import MedsegInputError
from napari_medseg.sample_data import BUNDLED_CASES


@pytest.mark.parametrize("name", ["synthetic", *BUNDLED_CASES])
def test_demo_cases_hold_a_sparse_annotation_of_the_expert_mask(name):
    case = load_demo_case(name)
    assert case.image.shape == case.annotation.shape == case.expert_mask.shape
    painted = case.annotation > 0
    assert painted.any() and (~painted).any()  # something left to predict
    # painted voxels carry the expert's label (+1), the convention of every annotation
    np.testing.assert_array_equal(case.annotation[painted], case.expert_mask[painted] + 1)
    assert len(case.class_names) == int(case.expert_mask.max())


def test_brain_tissue_demo_is_painted_along_every_axis():
    case = load_demo_case("brain_tissue")
    assert all(fully_annotated_slices(case.annotation, axis) for axis in range(3))
    assert case.class_names == ["CSF", "grey matter", "white matter"]


def test_unknown_demo_case_is_refused():
    with pytest.raises(MedsegInputError, match="brain_tissue"):
        load_demo_case("liver7")
