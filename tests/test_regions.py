"""Keeping only the predicted regions that touch the painting (PredictConfig.regions)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_medseg.annotation import keep_painted
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig
from napari_medseg.regions import (
    ApartRegions,
    apart_from_painting,
    apply_regions,
    describe_apart,
    keep_touching_painted,
)


def _case():
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:8, 2:8] = 1  # the painted tumour
    labels[2:6, 12:18, 12:18] = 1  # tissue far away marked as tumour too
    labels[7:9, 2:6, 12:16] = 2  # a second structure, painted
    annotation = np.zeros_like(labels)
    annotation[4] = 1
    annotation[4, 3:7, 3:7] = 2
    annotation[8, 3:5, 13:15] = 3
    return labels, annotation


def test_regions_apart_from_the_painting_are_cleared_per_structure():
    labels, annotation = _case()
    cleared = keep_touching_painted(labels, annotation)
    assert cleared == 4 * 6 * 6
    assert labels[2:6, 2:8, 2:8].all() and not labels[2:6, 12:18, 12:18].any()
    assert (labels[7:9, 2:6, 12:16] == 2).all()  # touching its own painting: kept


def test_regions_apart_from_the_painting_are_counted_and_named_when_they_weigh():
    labels, annotation = _case()
    apart = apart_from_painting(labels, annotation)
    assert apart == [ApartRegions(structure=1, regions=1, voxels=144, total=288)]
    assert (labels == _case()[0]).all()  # counting changes nothing
    line = describe_apart(apart, ["tumour", "cyst"], "Regions: touching")
    assert line.startswith("apart from the painting (tumour: 1 region(s), 50% of its voxels)")
    assert "Regions: touching" in line
    assert describe_apart([ApartRegions(2, 3, 5, 100)], ["tumour", "cyst"], "x") == ""  # 5 %


def test_a_structure_nothing_was_painted_of_keeps_its_regions_and_all_keeps_everything():
    labels, annotation = _case()
    annotation[annotation == 2] = 1  # structure 1 no longer painted
    before = labels.copy()
    assert keep_touching_painted(labels, annotation) == 0
    assert np.array_equal(labels, before)
    labels, annotation = _case()
    assert apply_regions(labels, annotation, "all") == 0
    assert apply_regions(labels, annotation, "touching") == 144


def test_a_region_touching_only_by_a_corner_counts_as_touching():
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1
    annotation = np.zeros_like(labels)
    annotation[1, 1, 1] = 2
    assert keep_touching_painted(labels, annotation) == 0 and labels[0, 0, 0] == 1


def test_an_unknown_choice_is_refused():
    with pytest.raises(MedsegInputError, match="regions"):
        PredictConfig(regions="largest")  # type: ignore[arg-type]


def test_cli_touching_needs_the_annotation(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", "predict", str(tmp_path / "m.safetensors"),
         str(tmp_path / "image.nii.gz"), "--out", str(tmp_path / "seg.nii.gz"),
         "--regions", "touching"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "needs --annotation" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "seg.nii.gz").exists()


def test_the_predict_widget_applies_the_choice_after_keeping_the_painting():
    pytest.importorskip("qtpy")
    from napari.layers import Labels

    from napari_medseg._qt.predict_widget import keep_painted_from

    labels, annotation = _case()
    kept, note = keep_painted_from(Labels(annotation, name="annotation"), labels, "touching")
    assert kept == int((annotation > 0).sum()) and not labels[2:6, 12:18, 12:18].any()
    assert "108 voxels apart from your painting cleared" in note  # slice 4: painted background
    assert "region(s)" not in note  # cleared, so not named
    labels, annotation = _case()
    kept, note = keep_painted_from(Labels(annotation, name="annotation"), labels, "all",
                                   ["tumour", "cyst"])
    assert labels[2:4, 12:18, 12:18].all()  # kept, and named in the note
    assert "apart from the painting (tumour: 2 region(s)" in note
    assert note.endswith("(Regions: touching)")


def test_the_worker_counts_what_the_gui_thread_would_have_counted():
    """The Predict widget counts the regions apart in its worker (seconds on a CT-sized
    volume); the count equals the one made after the painting is kept."""
    from napari_medseg.regions import apart_after_painting

    labels, annotation = _case()
    before = labels.copy()
    in_worker = apart_after_painting(labels, annotation)
    assert np.array_equal(labels, before)  # the prediction is left as it is
    keep_painted(labels, annotation)
    assert in_worker == apart_from_painting(labels, annotation)
    assert in_worker[0].regions == 2  # the painted background of slice 4 splits the far cube
