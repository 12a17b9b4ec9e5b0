"""Reading and writing volumes: formats, geometry conventions, DICOM series, labels."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile

from napari_medseg.errors import MedsegInputError
from napari_medseg.io import (
    SUPPORTED_EXTENSIONS,
    GeometryWarning,
    check_image,
    dicom_series_uid,
    extension_of,
    is_supported,
    list_dicom_series,
    looks_like_labels,
    read_volume,
    write_volume,
)
from napari_medseg.volume import Volume

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"

# ITK direction (x, y, z order) of a coronal acquisition: rows along +x, columns along -z,
# slices along +y. A proper rotation, as DICOM requires (normal = row x column).
CORONAL_ITK = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


# ---- helpers -------------------------------------------------------------------------


def world(volume: Volume, index) -> np.ndarray:
    """World position, array order, of an array index."""
    index = np.asarray(index, dtype=float)
    return np.asarray(volume.origin) + volume.direction @ (np.asarray(volume.spacing) * index)


def itk_world(image: sitk.Image, array_index) -> np.ndarray:
    """SimpleITK's world position of an array index, converted to array order."""
    point = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(array_index)))
    return np.asarray(point)[::-1]


def make_scan(shape=(5, 6, 7), direction=CORONAL_ITK) -> sitk.Image:
    """A small CT-like int16 scan (Hounsfield units) with non-trivial geometry."""
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 2000, size=shape).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-12.5, 30.0, 47.0))
    image.SetDirection(tuple(np.asarray(direction, dtype=float).ravel()))
    return image


def write_dicom_series(
    folder: Path,
    image: sitk.Image,
    uid: str = "1.2.826.0.1.3680043.2.1125.7.1",
    description: str = "test series",
    names: list[str] | None = None,
    instance_numbers: list[int] | None = None,
    positions: list[tuple[float, float, float]] | None = None,
) -> list[Path]:
    """Write one DICOM file per slice with SimpleITK and the usual CT tags.

    ITK stores ``value - intercept`` (inverse rescale) as int16 with the rescale tags.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    depth = image.GetDepth()
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:g}" for v in (*direction[:, 0], *direction[:, 1]))
    files = []
    for k in range(depth):
        slice_k = image[:, :, k : k + 1]
        position = positions[k] if positions else image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0013": str(instance_numbers[k] if instance_numbers else k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:g}",
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0028|1054": "HU",
        }
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        name = names[k] if names else f"slice{k:03d}.dcm"
        writer.SetFileName(str(folder / name))
        writer.Execute(slice_k)
        files.append(folder / name)
    return files


def axis_aligned_image(shape=(6, 5, 4), spacing_z=2.0) -> sitk.Image:
    image = make_scan(shape, direction=np.eye(3))
    image.SetSpacing((0.9, 0.8, spacing_z))
    return image


# ---- formats and geometry ------------------------------------------------------------


def test_supported_extensions_and_is_supported(tmp_path):
    assert {
        ".nii",
        ".nii.gz",
        ".nrrd",
        ".nhdr",
        ".mha",
        ".mhd",
        ".dcm",
        ".tif",
        ".tiff",
        ".npy",
    } <= set(SUPPORTED_EXTENSIONS)
    assert extension_of("a/b/Scan.NII.GZ") == ".nii.gz"
    assert extension_of("scan.nrrd") == ".nrrd"
    assert is_supported("brain.nii.gz") and is_supported(Path("x.tiff"))
    assert not is_supported("photo.png") and not is_supported("archive.gz")
    assert not is_supported(tmp_path)  # an empty folder holds no DICOM series


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".tif"])
def test_write_read_round_trip_keeps_array_and_geometry(tmp_path, ext):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(4, 5, 6)).astype(np.float32)
    direction = CORONAL_ITK[::-1, ::-1]
    volume = Volume(array, (2.5, 0.8, 0.7), (47.0, 30.0, -12.5), direction)
    path = write_volume(tmp_path / f"vol{ext}", volume)
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    assert back.metadata["path"] == str(path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_npy_round_trip_keeps_array_and_warns_about_geometry(tmp_path):
    array = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    with pytest.warns(GeometryWarning, match="spacing"):
        write_volume(tmp_path / "a.npy", Volume(array, (2.0, 1.0, 1.0)))
    back = read_volume(tmp_path / "a.npy")
    np.testing.assert_array_equal(back.array, array)
    assert back.spacing == (1.0, 1.0, 1.0) and back.metadata["format"] == "npy"


def test_same_scan_in_every_format_gives_same_voxels_and_world_positions(tmp_path):
    image = make_scan()
    expected = sitk.GetArrayFromImage(image)
    paths = []
    for ext in (".nii.gz", ".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"scan{ext}"))
        paths.append(tmp_path / f"scan{ext}")
    write_dicom_series(tmp_path / "dicom", image)
    paths.append(tmp_path / "dicom")
    indices = [(0, 0, 0), (4, 5, 6), (2, 1, 3), (1, 4, 0)]
    for path in paths:
        volume = read_volume(path)
        assert volume.shape == (5, 6, 7), path
        np.testing.assert_array_equal(volume.array, expected, err_msg=str(path))
        for index in indices:
            np.testing.assert_allclose(
                world(volume, index), itk_world(image, index), atol=1e-4, err_msg=f"{path} {index}"
            )


def test_real_nrrd_sample_is_read_in_array_order():
    path = SAMPLE_DATA / "brain1_image.nrrd"
    volume = read_volume(path)
    assert volume.shape == (25, 256, 256)
    np.testing.assert_allclose(volume.spacing, (6.5, 0.78125, 0.78125), rtol=1e-6)
    image = sitk.ReadImage(str(path))
    for index in [(0, 0, 0), (24, 255, 255), (10, 3, 200)]:
        np.testing.assert_allclose(world(volume, index), itk_world(image, index), atol=1e-6)
    assert volume.metadata["format"] == "nrrd"
    assert not looks_like_labels(volume)
    assert looks_like_labels(read_volume(SAMPLE_DATA / "brain1_label.nrrd"))


def test_2d_image_is_read_as_2d(tmp_path):
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.uint8).reshape(3, 4))
    image.SetSpacing((0.5, 0.25))
    sitk.WriteImage(image, str(tmp_path / "flat.nrrd"))
    volume = read_volume(tmp_path / "flat.nrrd")
    assert volume.shape == (3, 4) and volume.spacing == (0.25, 0.5)


def test_unknown_extension_lists_supported_formats(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(MedsegInputError, match=r"unknown file type.*\.nii\.gz.*\.nrrd"):
        read_volume(path)


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(MedsegInputError, match="no such file"):
        read_volume(tmp_path / "nothing.nii.gz")


# ---- DICOM ---------------------------------------------------------------------------


def test_dicom_slices_ordered_by_position_not_name_or_instance_number(tmp_path):
    image = axis_aligned_image()
    depth = image.GetDepth()
    names = [f"IMG{n:04d}.dcm" for n in random.Random(3).sample(range(100), depth)]
    scrambled = random.Random(4).sample(range(1, depth + 1), depth)
    write_dicom_series(tmp_path / "s", image, names=names, instance_numbers=scrambled)
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(volume.spacing, (2.0, 0.8, 0.9))
    assert volume.origin == pytest.approx(tuple(reversed(image.GetOrigin())))


def test_dicom_one_file_reads_its_whole_series(tmp_path):
    image = axis_aligned_image()
    files = write_dicom_series(tmp_path / "s", image)
    volume = read_volume(files[2])
    assert volume.shape == (6, 5, 4)
    assert volume.metadata["format"] == "dicom"
    assert volume.metadata["modality"] == "CT"
    assert volume.metadata["series_uid"] == dicom_series_uid(files[0])
    assert volume.metadata["rescale_intercept"] == -1024.0
    assert volume.metadata["rescale_slope"] == 1.0


def test_dicom_two_series_need_a_choice(tmp_path):
    first, second = axis_aligned_image((6, 5, 4)), axis_aligned_image((3, 5, 4))
    write_dicom_series(
        tmp_path,
        first,
        uid="1.2.3.4.100",
        description="axial",
        names=[f"a{k}.dcm" for k in range(6)],
    )
    write_dicom_series(
        tmp_path,
        second,
        uid="1.2.3.4.200",
        description="scout",
        names=[f"b{k}.dcm" for k in range(3)],
    )
    with pytest.raises(MedsegInputError) as info:
        read_volume(tmp_path)
    message = str(info.value)
    assert "2 DICOM series" in message and "series_uid" in message
    assert "1.2.3.4.100 (axial, 6 slices)" in message
    assert "1.2.3.4.200 (scout, 3 slices)" in message
    assert read_volume(tmp_path, series_uid="1.2.3.4.200").shape == (3, 5, 4)
    assert read_volume(tmp_path / "a0.dcm").shape == (6, 5, 4)  # a file picks its series
    series = {s.uid: s for s in list_dicom_series(tmp_path)}
    assert series["1.2.3.4.100"].n_slices == 6 and series["1.2.3.4.200"].description == "scout"
    with pytest.raises(MedsegInputError, match="is not in"):
        read_volume(tmp_path, series_uid="9.9.9")


def test_dicom_uneven_spacing_warns_and_uses_mean_spacing(tmp_path):
    image = axis_aligned_image()
    z = [0.0, 2.0, 4.0, 7.0, 9.0, 11.0]
    ox, oy, _ = image.GetOrigin()
    write_dicom_series(tmp_path, image, positions=[(ox, oy, zk) for zk in z])
    with pytest.warns(GeometryWarning, match="uneven slice spacing"):
        volume = read_volume(tmp_path)
    assert volume.spacing[0] == pytest.approx(11.0 / 5)


def test_dicom_gantry_tilt_warns(tmp_path):
    image = axis_aligned_image()
    ox, oy, oz = image.GetOrigin()
    positions = [(ox, oy + 0.5 * k, oz + 2.0 * k) for k in range(6)]
    write_dicom_series(tmp_path, image, positions=positions)
    with pytest.warns(GeometryWarning, match="gantry tilt"):
        volume = read_volume(tmp_path)
    assert volume.spacing[0] == pytest.approx(2.0)


def test_dicom_even_series_reads_without_warning(tmp_path):
    write_dicom_series(tmp_path, axis_aligned_image())
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeometryWarning)
        read_volume(tmp_path)


@pytest.mark.parametrize("storage", ["int16", "uint16"])
def test_dicom_ct_gives_hounsfield_units(tmp_path, storage):
    image = axis_aligned_image()
    hounsfield = sitk.GetArrayFromImage(image)
    files = write_dicom_series(tmp_path, image)
    for file in files:
        ds = pydicom.dcmread(file)
        stored = ds.pixel_array
        assert ds.RescaleIntercept == -1024
        if storage == "uint16":
            assert stored.min() >= 0
            ds.PixelRepresentation = 0
            ds.PixelData = stored.astype(np.uint16).tobytes()
            ds.save_as(file)
            assert pydicom.dcmread(file).pixel_array.dtype == np.uint16
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, hounsfield)
    assert volume.array.min() < 0


def test_dicom_rescale_slope_is_applied(tmp_path):
    image = axis_aligned_image()
    files = write_dicom_series(tmp_path, image)
    stored = []
    for file in files:
        ds = pydicom.dcmread(file)
        ds.RescaleSlope = 0.5
        ds.save_as(file)
        stored.append(ds.pixel_array.astype(float))
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.array, np.stack(stored) * 0.5 - 1024)


def test_folder_without_dicom_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedsegInputError, match="no DICOM series"):
        read_volume(tmp_path)
    assert list_dicom_series(tmp_path) == []


# ---- TIFF ----------------------------------------------------------------------------


def test_imagej_tiff_spacing_converted_to_mm(tmp_path):
    array = np.zeros((3, 4, 5), np.uint16)
    tifffile.imwrite(
        tmp_path / "stack.tif",
        array,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.25),
        metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"},
    )
    volume = read_volume(tmp_path / "stack.tif")
    assert volume.shape == (3, 4, 5)
    np.testing.assert_allclose(volume.spacing, (2e-3, 0.25e-3, 0.5e-3))


def test_plain_tiff_without_calibration_has_unit_spacing(tmp_path):
    tifffile.imwrite(
        tmp_path / "plain.tiff", np.ones((2, 3, 4), np.float32), photometric="minisblack"
    )
    volume = read_volume(tmp_path / "plain.tiff")
    assert volume.shape == (2, 3, 4) and volume.spacing == (1.0, 1.0, 1.0)


def test_single_slice_volume_keeps_three_axes_in_tiff(tmp_path):
    volume = Volume(np.ones((1, 3, 4), np.uint8), (3.0, 0.5, 0.5))
    back = read_volume(write_volume(tmp_path / "one.tif", volume))
    assert back.shape == (1, 3, 4) and back.spacing == pytest.approx((3.0, 0.5, 0.5))


# ---- writing -------------------------------------------------------------------------


def test_segmentation_written_with_reference_geometry(tmp_path):
    image = read_volume(SAMPLE_DATA / "brain1_image.nrrd")
    mask = (image.array > image.array.mean()).astype(np.int64)
    path = write_volume(tmp_path / "seg.nii.gz", mask, reference=image)
    seg = read_volume(path)
    assert seg.array.dtype == np.uint8
    np.testing.assert_array_equal(seg.array, mask)
    np.testing.assert_allclose(seg.spacing, image.spacing, rtol=1e-6)
    np.testing.assert_allclose(seg.origin, image.origin, atol=1e-4)
    np.testing.assert_allclose(seg.direction, image.direction, atol=1e-6)
    # the written file opens aligned in ITK-based tools (3D Slicer, ITK-SNAP)
    itk_seg = sitk.ReadImage(str(path))
    itk_image = sitk.ReadImage(str(SAMPLE_DATA / "brain1_image.nrrd"))
    np.testing.assert_allclose(itk_seg.GetOrigin(), itk_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(itk_seg.GetDirection(), itk_image.GetDirection(), atol=1e-6)


def test_label_maps_use_smallest_unsigned_type(tmp_path):
    few = np.zeros((2, 3, 4), np.int64)
    few[0, 0, 0] = 7
    many = np.arange(24, dtype=np.int32).reshape(2, 3, 4) * 100
    assert read_volume(write_volume(tmp_path / "a.nrrd", few, labels=True)).array.dtype == np.uint8
    back = read_volume(write_volume(tmp_path / "b.nrrd", many, labels=True))
    assert back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, many)
    flags = read_volume(write_volume(tmp_path / "c.mha", few.astype(bool)))
    assert flags.array.dtype == np.uint8


def test_write_refuses_dicom_unknown_types_and_wrong_shapes(tmp_path):
    array = np.zeros((2, 3, 4), np.uint8)
    with pytest.raises(MedsegInputError, match="writing DICOM is not supported"):
        write_volume(tmp_path / "x.dcm", array)
    with pytest.raises(MedsegInputError, match="unknown file type"):
        write_volume(tmp_path / "x.png", array)
    reference = Volume(np.zeros((2, 3, 5)))
    with pytest.raises(MedsegInputError, match="differs from the reference"):
        write_volume(tmp_path / "x.nrrd", array, reference=reference)
    with pytest.raises(MedsegInputError, match="geometry does not match"):
        write_volume(tmp_path / "x.nrrd", array, spacing=(1.0, 1.0))


def test_explicit_geometry_overrides_reference(tmp_path):
    reference = Volume(np.zeros((2, 3, 4)), (3.0, 2.0, 1.0), (1.0, 2.0, 3.0))
    path = write_volume(
        tmp_path / "x.mha",
        np.ones((2, 3, 4), np.float32),
        reference=reference,
        origin=(0.0, 0.0, -5.0),
    )
    back = read_volume(path)
    assert back.spacing == (3.0, 2.0, 1.0) and back.origin == (0.0, 0.0, -5.0)


def test_mhd_writes_header_and_data_file_next_to_each_other(tmp_path):
    path = write_volume(tmp_path / "vol.mhd", np.ones((2, 3, 4), np.int16))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.mhd", "vol.raw"]
    assert read_volume(path).array.sum() == 24


# ---- checks --------------------------------------------------------------------------


def test_looks_like_labels():
    rng = np.random.default_rng(0)
    image = Volume(rng.integers(-1000, 1000, (8, 16, 16)).astype(np.int16))
    labels = Volume(rng.integers(0, 4, (8, 16, 16)).astype(np.uint8))
    assert looks_like_labels(labels) and not looks_like_labels(image)
    assert looks_like_labels(np.zeros((4, 4), bool))
    float_mask = labels.array.astype(np.float32)
    assert not looks_like_labels(float_mask)
    assert looks_like_labels(float_mask, name="liver_mask.nii.gz")
    many = rng.integers(0, 500, (8, 16, 16)).astype(np.uint16)
    assert not looks_like_labels(many) and looks_like_labels(many, name="seg.nrrd")


def test_check_image_reports_problems():
    good = Volume(np.random.default_rng(0).normal(size=(4, 5, 6)))
    assert check_image(good) == []
    bad = good.array.copy()
    bad[0, 0, :2] = np.nan
    bad[1, 1, 1] = np.inf
    assert any("3 voxels are NaN or infinite" in p for p in check_image(good.with_array(bad)))
    assert any("same value" in p for p in check_image(Volume(np.zeros((3, 3, 3)))))
    assert any("4 dimensions" in p for p in check_image(Volume(np.ones((2, 3, 3, 3)))))
