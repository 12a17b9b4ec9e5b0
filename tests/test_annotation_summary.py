"""The Annotate widget's pure-numpy helpers, without a display: painted slices per plane,
the "Annotated slices" text, and the region-of-interest box of a drawn rectangle."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medseg.annotation import box_from_rectangle, rectangle_axis
from napari_medseg.errors import MedsegInputError
from napari_medseg.painted_slices import (
    MAX_LISTED_SLICES,
    annotation_summary,
    axis_name,
    format_slice_list,
    painted_in_plane,
    painted_per_plane,
)


def test_axis_names():
    assert [axis_name(a, 3) for a in range(3)] == ["z", "y", "x"]
    assert axis_name(1, 2) == "axis 1" and axis_name(3, 4) == "axis 3"


def test_slices_painted_in_another_plane_are_not_listed():
    annotation = np.zeros((8, 10, 12), np.uint8)
    annotation[5] = 1  # a whole z slice painted as background
    annotation[5, 2:4, 2:4] = 2
    annotation[:, 7, :] = 1  # a y slice
    annotation[:, :, 3] = 2  # an x slice
    # each crosses the other planes as 1-voxel lines only
    assert painted_in_plane(annotation, 0) == [5]
    assert painted_in_plane(annotation, 1) == [7]
    assert painted_in_plane(annotation, 2) == [3]


def test_a_two_by_two_patch_makes_a_slice_painted():
    annotation = np.zeros((4, 6, 6), np.uint8)
    annotation[2, 1:3, 1:3] = 3
    assert painted_in_plane(annotation, 0) == [2]
    # a 2 x 2 patch in z, y is also a patch of the x slices it lies on
    assert painted_in_plane(annotation, 2) == []
    annotation[1, 4, 4] = 2  # a single voxel: not a patch
    assert painted_in_plane(annotation, 0) == [2]
    annotation[0:2, 0, 0:2] = 1  # a 2 x 2 patch in the y = 0 plane
    assert painted_in_plane(annotation, 1) == [0]


def test_background_filled_around_a_box_is_not_slices_painted():
    """Marking everything outside a region-of-interest box as background paints no slice;
    the slices painted inside the box, and structures anywhere, count."""
    annotation = np.ones((10, 12, 12), np.uint8)
    annotation[3:7, 2:9, 2:9] = 0  # the box: unknown inside
    annotation[4, 2:9, 2:9] = 1  # one slice painted inside it, background only
    annotation[6, 3:5, 3:5] = 2  # a structure on another
    annotation[0, 0:2, 0:2] = 2  # and one outside the box
    assert painted_in_plane(annotation, 0) == [0, 4, 6]
    assert painted_in_plane(annotation, 1) == [] and painted_in_plane(annotation, 2) == []
    annotation[annotation == 1] = 0  # without the fill: the box's slice 4 has nothing left
    assert painted_in_plane(annotation, 0) == [0, 6]


def test_a_volume_painted_throughout_is_painted_in_every_plane():
    annotation = np.ones((4, 5, 6), np.uint8)
    annotation[1:3, 1:4, 1:5] = 2
    assert painted_per_plane(annotation) == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]]


def test_2d_and_thin_arrays_count_any_annotated_voxel():
    image = np.zeros((5, 6), np.uint8)
    image[1, 2] = 1
    image[4, 0] = 2
    assert painted_in_plane(image, 0) == [1, 4]
    assert painted_in_plane(image, 1) == [0, 2]
    thin = np.zeros((3, 1, 5), np.uint8)  # one voxel thick in y: no 2 x 2 patch can exist
    thin[2, 0, 4] = 1
    assert painted_in_plane(thin, 0) == [2]
    assert painted_in_plane(np.zeros((3, 4, 4), np.uint8), 0) == []


def test_format_slice_list():
    assert format_slice_list([]) == "none"
    assert format_slice_list([12, 14, 16]) == "12, 14, 16"
    many = list(range(30))
    shown = format_slice_list(many)
    assert shown.startswith("0, 1, 2") and shown.endswith(", … (30 slices)")
    assert f"{MAX_LISTED_SLICES - 1}, …" in shown and f"{MAX_LISTED_SLICES}," not in shown
    assert format_slice_list([1, 2, 3], limit=2) == "1, 2, … (3 slices)"
    assert format_slice_list([1, 2], limit=2) == "1, 2"


def test_annotation_summary_text():
    annotation = np.zeros((4, 6, 6), np.uint8)
    annotation[1] = 1
    annotation[1, 1:3, 1:3] = 2
    annotation[1, 4, 4] = 3
    annotation[1, 5, 5] = 9  # a stray value
    text = annotation_summary(annotation, ["liver", "tumour"])
    assert text.splitlines() == [
        "axis 0 (z): 1",
        "axis 1 (y): none",
        "axis 2 (x): none",
        "painted voxels: background 30 · liver 4 · tumour 1 · label 9 1 (75.0 % not annotated)",
    ]


def test_annotation_summary_of_an_empty_2d_annotation():
    text = annotation_summary(np.zeros((3, 4), np.uint8), [])
    assert text == (
        "axis 0 (axis 0): none\naxis 1 (axis 1): none\n"
        "painted voxels: none (100.0 % not annotated)"
    )


def test_rectangle_axis():
    on_z = np.array([[6, 8, 8], [6, 8, 20], [6, 20, 20], [6, 20, 8]], float)
    assert rectangle_axis(on_z) == 0
    assert rectangle_axis(on_z[:, [1, 0, 2]]) == 1
    assert rectangle_axis(on_z + [[0.2], [0.0], [-0.2], [0.1]] * np.array([1, 0, 0])) == 0
    assert rectangle_axis(np.array([[1, 1, 1], [1, 1, 5]], float)) is None  # two flat axes
    assert rectangle_axis(np.array([[0, 0, 0], [3, 3, 3]], float)) is None  # none flat


def test_box_from_rectangle_rounds_to_voxel_centres_inside():
    on_z = np.array([[6, 8, 8], [6, 8, 20], [6, 20, 20], [6, 20, 8]], float)
    assert box_from_rectangle(on_z, (16, 32, 32), 0, (3, 10)) == [(3, 11), (8, 21), (8, 21)]
    assert box_from_rectangle(on_z, (16, 32, 32), 0, (10, 3)) == [(3, 11), (8, 21), (8, 21)]
    # vertices between voxel centres: only the centres inside count; a vertex within 1e-6
    # of a centre counts as on it
    y0, y1, x0, x1 = 8.5, 19.5, 8 - 5e-7, 12 + 5e-7
    between = np.array([[6, y0, x0], [6, y0, x1], [6, y1, x1], [6, y1, x0]])
    assert box_from_rectangle(between, (16, 32, 32), 0, (6, 6)) == [(6, 7), (9, 20), (8, 13)]
    # clipped to the annotation
    wide = np.array([[2, -5, -5], [2, -5, 40], [2, 40, 40], [2, 40, -5]], float)
    assert box_from_rectangle(wide, (16, 32, 32), 0, (-3, 99)) == [(0, 16), (0, 32), (0, 32)]


def test_box_outside_the_annotation_is_refused():
    outside = np.array([[2, 40, 40], [2, 40, 50], [2, 50, 50], [2, 50, 40]], float)
    with pytest.raises(MedsegInputError, match="does not overlap"):
        box_from_rectangle(outside, (16, 32, 32), 0, (0, 15))
    inside = np.array([[2, 4, 4], [2, 4, 8], [2, 8, 8], [2, 8, 4]], float)
    with pytest.raises(MedsegInputError, match="does not overlap"):
        box_from_rectangle(inside, (16, 32, 32), 0, (20, 30))
