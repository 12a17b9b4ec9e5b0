"""Tests of the bundled real cases and the synthetic sample generator script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.annotation import fully_annotated_slices
from napari_medseg.errors import MedsegInputError
from napari_medseg.sample_data import (
    BRAIN_TISSUE,
    BUNDLED_CASES,
    DEFAULT_AXIAL_SLICES,
    RealCase,
    annotation_from_slices,
    load_real_case,
    load_sample,
    real_case_annotation,
    sample_data_dir,
    slices_per_axis_annotation,
)
from napari_medseg.synthetic import pick_slices

REPO = Path(__file__).resolve().parent.parent

EXPECTED = {  # name: (shape z, y, x), spacing z, y, x, number of structures
    "brain1": ((25, 256, 256), (6.5, 0.78125, 0.78125), 1),
    "breast1": ((21, 120, 45), (2.1, 0.664062, 0.664062), 1),
    "prostate_phantom": ((13, 67, 82), (3.0, 0.5, 0.5), 4),
    "brain_tissue": ((81, 97, 79), (2.0, 2.0, 2.0), 3),
}


@pytest.fixture(scope="module")
def cases() -> dict[str, RealCase]:
    return {name: load_real_case(name) for name in BUNDLED_CASES}


def test_sample_data_dir_holds_the_files_and_attribution():
    folder = sample_data_dir()
    attribution = (folder / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for name in BUNDLED_CASES:
        assert (folder / f"{name}_image.nrrd").is_file()
        assert (folder / f"{name}_label.nrrd").is_file()
    assert "PyRadiomics" in attribution
    assert "Copyright (C) 1993-2009 Louis Collins" in attribution


@pytest.mark.parametrize("name", BUNDLED_CASES)
def test_real_case_geometry_and_labels(cases, name):
    case = cases[name]
    shape, spacing, n_structures = EXPECTED[name]
    assert case.image.shape == shape
    assert case.label.shape == shape
    np.testing.assert_allclose(case.image.spacing, spacing, rtol=1e-5)
    assert case.label.spacing == case.image.spacing
    assert case.label.array.dtype == np.uint8
    assert set(np.unique(case.label.array)) == set(range(n_structures + 1))
    assert len(case.class_names) == n_structures
    assert case.image.direction.shape == (3, 3)


def test_origin_and_direction_are_in_array_order(cases):
    brain = cases["brain1"]
    # file (x, y, z) origin (-99.6, 99.6, -78.0), direction diag(1, -1, 1)
    np.testing.assert_allclose(brain.image.origin, (-78.0, 99.609375, -99.609375), atol=1e-4)
    np.testing.assert_allclose(brain.image.direction, np.diag([1.0, -1.0, 1.0]), atol=1e-9)
    phantom = cases["prostate_phantom"]
    np.testing.assert_allclose(phantom.image.direction, np.diag([1.0, -1.0, -1.0]), atol=1e-9)


def test_prostate_labels_are_remapped_and_documented(cases):
    case = cases["prostate_phantom"]
    assert case.class_names == ("label_1", "label_7", "label_8", "label_9")
    assert case.source_values == {1: 1, 2: 7, 3: 8, 4: 9}
    counts = np.bincount(case.label.array.ravel())
    assert counts[1:].tolist() == [168, 170, 2997, 9088]


@pytest.mark.parametrize("name", BUNDLED_CASES)
def test_default_slices_go_through_the_structures(cases, name):
    case = cases[name]
    slices = DEFAULT_AXIAL_SLICES[name]
    assert case.default_slices == slices
    assert list(slices) == pick_slices(case.label.array, 0, len(slices))
    for index in slices:
        assert case.label.array[index].any()


def test_brain_and_breast_default_slices():
    assert DEFAULT_AXIAL_SLICES["brain1"] == (12, 14, 16)
    assert DEFAULT_AXIAL_SLICES["breast1"] == (8, 10)


def test_real_case_annotation(cases):
    case = cases["brain1"]
    label = case.label.array
    ann = real_case_annotation(case)
    assert ann.dtype == np.uint8 and ann.shape == label.shape
    for index in (12, 14, 16):
        np.testing.assert_array_equal(ann[index], label[index] + 1)
    # slices outside the ROI box (z 9-19) are fully background, inside only the painted ones
    assert fully_annotated_slices(ann, 0) == [*range(9), 12, 14, 16, *range(20, 25)]
    # the ROI box: foreground z 11-17, y 84-153, x 162-208, grown by (2, 20, 20)
    box = (slice(9, 20), slice(64, 174), slice(142, 229))
    outside = np.ones(label.shape, bool)
    outside[box] = False
    assert (ann[outside] == 1).all()
    inside = ann[box]
    unpainted = np.ones(inside.shape[0], bool)
    unpainted[[12 - 9, 14 - 9, 16 - 9]] = False
    assert (inside[unpainted] == 0).all()
    no_roi = real_case_annotation(case, axial_slices=[13], roi_margin=None)
    assert set(np.unique(no_roi)) == {0, 1, 2}
    assert fully_annotated_slices(no_roi, 0) == [13]
    assert (no_roi[np.arange(25) != 13] == 0).all()


def test_real_case_annotation_by_name_breast():
    ann = real_case_annotation("breast1")
    # lesion on z 8-10, margin 2: slices 6-12 are inside the ROI box
    assert fully_annotated_slices(ann, 0) == [*range(6), 8, 10, *range(13, 21)]
    assert (ann[9] == 0).any()  # the lesion slice 9 is left to predict
    assert set(np.unique(ann)) == {0, 1, 2}


def test_annotation_from_slices():
    label = np.zeros((4, 3, 3), np.uint8)
    label[1, 1, 1] = 2
    ann = annotation_from_slices(label, [1, 3])
    assert ann[1, 1, 1] == 3 and ann[1, 0, 0] == 1 and (ann[3] == 1).all()
    assert (ann[0] == 0).all() and (ann[2] == 0).all()
    along_x = annotation_from_slices(label, [0], axis=2)
    assert (along_x[:, :, 0] == 1).all()


def test_unknown_names_are_refused():
    with pytest.raises(MedsegInputError, match="unknown sample"):
        load_real_case("liver7")
    with pytest.raises(MedsegInputError):
        load_sample("nope")


def test_load_sample_synthetic_and_real():
    synthetic = load_sample("synthetic")
    assert synthetic.class_names == ("tube",)
    assert synthetic.image.shape == synthetic.label.shape == (48, 64, 64)
    assert len(synthetic.default_slices) == 1
    assert load_sample("breast1").image.shape == EXPECTED["breast1"][0]


def test_generate_synthetic_script(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    script = REPO / "sample_data" / "generate_synthetic.py"
    args = [str(tmp_path), "--shape", "12", "24", "24", "--spacing", "3", "1", "0.5"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    names = ("image", "label", "annotation")
    paths = [tmp_path / f"synthetic_{n}.nii.gz" for n in names]
    assert all(p.is_file() for p in paths)
    image = sitk.ReadImage(str(paths[0]))
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 1.0, 3.0))
    assert sitk.GetArrayFromImage(image).shape == (12, 24, 24)
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[1])))
    annotation = sitk.GetArrayFromImage(sitk.ReadImage(str(paths[2])))
    painted = annotation > 0
    assert painted.any()
    np.testing.assert_array_equal(annotation[painted], label[painted] + 1)


def test_brain_tissue_is_three_tissues_ordered_by_t1_brightness(cases):
    case = cases[BRAIN_TISSUE]
    assert case.class_names == ("CSF", "grey matter", "white matter")
    image, label = case.image.array, case.label.array
    assert image.dtype == np.uint8
    assert (image[label == 0] < 128).all()  # outside the skull-stripped brain: dark
    medians = [float(np.median(image[label == k])) for k in (1, 2, 3)]
    assert medians == sorted(medians)  # T1: CSF darkest, white matter brightest
    counts = np.bincount(label.ravel(), minlength=4)
    assert counts[1:].tolist() == [18584, 139965, 78909]
    # the template's orientation is kept (file direction diag(-1, -1, 1), x y z)
    np.testing.assert_allclose(case.image.direction, np.diag([1.0, -1.0, -1.0]), atol=1e-9)


def test_slices_per_axis_annotation_paints_whole_slices_on_every_axis(cases):
    case = cases[BRAIN_TISSUE]
    label = case.label.array
    ann = slices_per_axis_annotation(case, (3, 2, 1))
    assert ann.dtype == np.uint8 and ann.shape == label.shape
    for axis, n in enumerate((3, 2, 1)):
        slices = pick_slices(label, axis, n)
        assert fully_annotated_slices(ann, axis) == slices
        for index in slices:
            np.testing.assert_array_equal(
                np.take(ann, index, axis=axis), np.take(label, index, axis=axis) + 1
            )
    assert set(np.unique(ann)) == {0, 1, 2, 3, 4}
    painted = ann > 0
    np.testing.assert_array_equal(ann[painted], label[painted] + 1)
    with pytest.raises(MedsegInputError, match="3 values"):
        slices_per_axis_annotation(case, (3, 3))
