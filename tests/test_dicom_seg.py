"""DICOM SEG output (highdicom): a segmentation written as a DICOM SEG reads back with
highdicom onto the source series, frame by frame on the right slice; refusals before any
work (an image that is not DICOM, a bad target, no highdicom) and the atomic write."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from test_cli import assert_user_error
from test_dicom_series import AXIAL_UID, FRAME_OF_REFERENCE, cube_array, write_series
from test_io import make_scan

from napari_medseg import __version__
from napari_medseg.cli import main
from napari_medseg.errors import MedsegError, MedsegInputError
from napari_medseg.io import dicom_seg, read_volume, write_volume
from napari_medseg.io.dicom_seg import check_dicom_seg, write_dicom_seg
from napari_medseg.volume import Volume

hd = pytest.importorskip("highdicom")

NAMES = ["liver", "tumour"]


@pytest.fixture
def coronal(tmp_path) -> Path:
    """A coronal series (6 x 9 x 7, rows along +x, slices along +y) whose file names run
    against the slice order."""
    image = make_scan((6, 9, 7))
    folder = tmp_path / "coronal"
    write_series(folder, None, AXIAL_UID, "coronal", image=image,
                 names=[f"im{(5 - k) * 7 % 11:02d}.dcm" for k in range(6)])  # fmt: skip
    return folder


def asymmetric_labels(shape: tuple[int, int, int]) -> np.ndarray:
    """Labels 0-2 that differ on every slice, row and column (no flip maps them onto
    themselves)."""
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[(x + 2 * y + 3 * z) % 5 == 0] = 1
    labels[(z >= 2) & (y < z) & (x > 1)] = 2
    labels[0] = 0  # a slice without any structure: its frames are left out
    return labels


def source_index(folder: Path) -> dict[str, int]:
    """SOPInstanceUID -> slice index, found here independently of the code under test:
    the files sorted by their position along the slice normal."""
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir()]
    cosines = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    order = sorted(datasets, key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    return {str(ds.SOPInstanceUID): k for k, ds in enumerate(order)}


def labels_from_frames(seg, index: dict[str, int], shape) -> np.ndarray:
    """Rebuild the label map from the SEG's frames: each frame's source image and segment
    number, from the per-frame functional groups (the shared group when it holds them)."""
    frames = seg.pixel_array  # (frames, rows, columns), 0/1
    rebuilt = np.zeros(shape, np.uint8)
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0]
        identification = group if "SegmentIdentificationSequence" in group else shared
        segment = identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        k = index[str(source.ReferencedSOPInstanceUID)]
        assert not np.any(rebuilt[k][frame > 0]), "two segments on one voxel"
        rebuilt[k][frame > 0] = segment
    return rebuilt


# ---- the round trip ------------------------------------------------------------------


def test_seg_reads_back_onto_the_source_series_voxel_by_voxel(coronal, tmp_path):
    volume = read_volume(coronal)
    labels = asymmetric_labels(volume.shape)
    source = check_dicom_seg(coronal, tmp_path / "seg.dcm")
    target = write_dicom_seg(tmp_path / "seg.dcm", labels, source, NAMES, reference=volume)
    seg = hd.seg.segread(target)
    index = source_index(coronal)
    np.testing.assert_array_equal(labels_from_frames(seg, index, volume.shape), labels)
    uids = sorted(index, key=index.get)
    back = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    np.testing.assert_array_equal(back, labels)
    positions = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient]
                 for ds in map(pydicom.dcmread, coronal.iterdir())}  # fmt: skip
    for group in seg.PerFrameFunctionalGroupsSequence:
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        plane = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(plane, positions[str(uid)], atol=1e-4)


def test_seg_describes_segments_algorithm_and_source(coronal, tmp_path):
    volume = read_volume(coronal)
    source = check_dicom_seg(coronal, tmp_path / "seg.dcm")
    write_dicom_seg(tmp_path / "seg.dcm", asymmetric_labels(volume.shape), source, NAMES)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.SegmentationType == "BINARY"
    assert [seg.get_segment_description(k).segment_label for k in (1, 2)] == NAMES
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    assert segment.SegmentAlgorithmName == "napari-medseg"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "napari-medseg" and algorithm.AlgorithmVersion == __version__
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == AXIAL_UID
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert seg.PatientID == "MEDSEG-TEST" and seg.Modality == "SEG"


def test_empty_segmentation_still_makes_a_valid_seg(coronal, tmp_path):
    volume = read_volume(coronal)
    source = check_dicom_seg(coronal, tmp_path / "seg.dcm")
    write_dicom_seg(tmp_path / "seg.dcm", np.zeros(volume.shape, np.uint8), source, NAMES)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert not seg.pixel_array.any() and seg.NumberOfFrames >= 1


# ---- the command line ----------------------------------------------------------------


def test_predict_writes_a_dicom_seg_matching_the_segmentation(tmp_path, capsys):
    import torch

    folder = tmp_path / "ct"
    array, truth = cube_array((8, 24, 20))
    write_series(folder, array, AXIAL_UID, "axial", names=[f"z{7 - k}.dcm" for k in range(8)])
    volume = read_volume(folder)
    painted = np.zeros(truth.shape, np.uint8)
    painted[4] = truth[4] + 1
    annotation = write_volume(tmp_path / "ann.nii.gz", painted, reference=volume, labels=True)
    model, out, seg_path = tmp_path / "m.safetensors", tmp_path / "seg.nrrd", tmp_path / "seg.dcm"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(folder), str(annotation), "--out", str(model), "--iterations",
                     "2", "--device", "cpu", "--class-names", "box"]) == 0  # fmt: skip
        predict = ["predict", str(model), str(folder), "--out", str(out), "--dicom-seg",
                   str(seg_path), "--annotation", str(annotation), "--device", "cpu"]  # fmt: skip
        assert main(predict) == 0
    finally:
        torch.set_num_threads(threads)
    assert f"saved {seg_path}" in capsys.readouterr().out
    labels = read_volume(out).array
    assert labels[4].any()  # the painted slice is kept: the SEG is not empty
    seg = hd.seg.segread(seg_path)
    assert seg.get_segment_description(1).segment_label == "box"
    rebuilt = labels_from_frames(seg, source_index(folder), labels.shape)
    np.testing.assert_array_equal(rebuilt, labels)


def test_dicom_seg_of_an_image_that_is_not_dicom_is_refused_before_any_work(tmp_path, capsys):
    image = write_volume(tmp_path / "image.nii.gz", np.zeros((4, 8, 8), np.float32))
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"never read")  # a model error would come later: the check is first
    out, seg = tmp_path / "seg.nii.gz", tmp_path / "seg.dcm"
    argv = ["predict", str(model), str(image), "--out", str(out), "--dicom-seg", str(seg)]
    assert_user_error(main(argv), capsys.readouterr().err, "predict",
                      "a DICOM SEG needs a DICOM image", "image.nii.gz")  # fmt: skip
    assert not out.exists() and not seg.exists()


@pytest.mark.parametrize(
    ("where", "message"),
    [("seg.nii.gz", "a DICOM SEG is a .dcm file"),
     ("missing/seg.dcm", "does not exist"),
     ("coronal/seg.dcm", "folder of the source series")],
)  # fmt: skip
def test_bad_dicom_seg_targets_are_refused(coronal, tmp_path, capsys, where, message):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"never read")
    argv = ["predict", str(model), str(coronal), "--out", str(tmp_path / "s.nii.gz"),
            "--dicom-seg", str(tmp_path / where)]  # fmt: skip
    assert_user_error(main(argv), capsys.readouterr().err, "predict", message)
    assert not (tmp_path / where).exists()


def test_missing_highdicom_says_how_to_install_it(coronal, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom -> ImportError
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"never read")
    argv = ["predict", str(model), str(coronal), "--out", str(tmp_path / "s.nii.gz"),
            "--dicom-seg", str(tmp_path / "seg.dcm")]  # fmt: skip
    assert_user_error(main(argv), capsys.readouterr().err, "predict",
                      'pip install "napari-medseg[dicom]"')  # fmt: skip


def test_series_without_frame_of_reference_is_refused(coronal, tmp_path):
    for file in coronal.iterdir():
        ds = pydicom.dcmread(file)
        del ds.FrameOfReferenceUID
        ds.save_as(file)
    with pytest.raises(MedsegInputError, match="no FrameOfReferenceUID"):
        check_dicom_seg(coronal, tmp_path / "seg.dcm")


# ---- what write_dicom_seg refuses, and the atomic write ------------------------------


def test_labels_that_do_not_fit_the_series_are_refused(coronal, tmp_path):
    volume = read_volume(coronal)
    source = check_dicom_seg(coronal, tmp_path / "seg.dcm")
    with pytest.raises(MedsegInputError, match="does not fit the DICOM series"):
        write_dicom_seg(tmp_path / "seg.dcm", np.zeros((2, 9, 7), np.uint8), source, NAMES)
    too_many = np.full(volume.shape, 3, np.uint8)
    with pytest.raises(MedsegInputError, match="label 3 but only 2 structure names"):
        write_dicom_seg(tmp_path / "seg.dcm", too_many, source, NAMES)
    assert not (tmp_path / "seg.dcm").exists()


def test_slices_in_another_order_than_the_volume_are_refused(coronal, tmp_path):
    volume = read_volume(coronal)
    source = check_dicom_seg(coronal, tmp_path / "seg.dcm")
    direction = np.asarray(volume.direction, dtype=float).copy()
    direction[:, 0] *= -1  # the same slices, read the other way round
    last = np.asarray(volume.origin) + np.asarray(volume.direction) @ (
        np.asarray(volume.spacing) * np.array([volume.shape[0] - 1, 0, 0])
    )
    flipped = Volume(volume.array[::-1].copy(), volume.spacing, tuple(last), direction)
    with pytest.raises(MedsegInputError, match="not in the order of the volume's slices"):
        write_dicom_seg(tmp_path / "seg.dcm", asymmetric_labels(volume.shape), source, NAMES,
                        reference=flipped)  # fmt: skip


def test_a_seg_that_does_not_read_back_leaves_the_previous_file(coronal, tmp_path, monkeypatch):
    volume = read_volume(coronal)
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"previous")
    source = check_dicom_seg(coronal, target)

    def broken(tmp, labels, uids, sop_uid):
        raise dicom_seg.WriteCheckError("the file written does not hold the segmentation")

    monkeypatch.setattr(dicom_seg, "_verify", broken)
    with pytest.raises(MedsegError, match="does not hold the segmentation"):
        write_dicom_seg(target, asymmetric_labels(volume.shape), source, NAMES)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".medseg-tmp")] == []


def test_geometry_of_the_coronal_series_is_not_trivial(coronal):
    """The round trip above is only a test of slice mapping if the slices run along a
    direction other than the file names' order and the volume's identity."""
    volume = read_volume(coronal)
    assert not np.allclose(volume.direction, np.eye(3))
    names_in_slice_order = [Path(f).name for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
        str(coronal), AXIAL_UID)]  # fmt: skip
    assert names_in_slice_order != sorted(names_in_slice_order)


# ---- from napari: a segmentation layer of an image opened from DICOM ---------------------


def test_a_layer_of_a_dicom_image_saves_as_a_seg_on_its_series(coronal, tmp_path):
    from napari_medseg._napari.reader import get_reader
    from napari_medseg._napari.writer import write_labels_dicom_seg
    from napari_medseg.colors import CLASS_NAMES_KEY

    [(image, kwargs, kind)] = get_reader(str(coronal))(str(coronal))
    assert kind == "image" and kwargs["metadata"]["format"] == "dicom"
    labels = asymmetric_labels(image.shape)
    meta = {**kwargs, "name": "segmentation",
            "metadata": {**kwargs["metadata"], CLASS_NAMES_KEY: NAMES}}  # fmt: skip
    target = write_labels_dicom_seg(str(tmp_path / "seg.dcm"), labels, meta)
    seg = hd.seg.segread(target)
    np.testing.assert_array_equal(labels_from_frames(seg, source_index(coronal), image.shape),
                                  labels)  # fmt: skip
    assert [s.SegmentLabel for s in seg.SegmentSequence] == NAMES
    plain = {**meta, "metadata": {CLASS_NAMES_KEY: NAMES}}  # an image not read from DICOM
    with pytest.raises(MedsegInputError, match="made on a DICOM series"):
        write_labels_dicom_seg(str(tmp_path / "other.dcm"), labels, plain)
    assert not (tmp_path / "other.dcm").exists()
