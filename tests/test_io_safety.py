"""Untrusted files and crash-safe saving: refusals happen before allocation, writes are atomic."""

from __future__ import annotations

import errno
import gzip
import os
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

import napari_medseg.io as mio
from napari_medseg._atomic import STALE_TEMP_SECONDS, TEMP_PREFIX, atomic_write, atomic_write_via
from napari_medseg.errors import MedsegError, MedsegInputError, UnsafeFileError
from napari_medseg.io import _checks, _itk, _nifti, _npy, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def nifti_bytes(shape_xyz: tuple[int, int, int], data: bytes, datatype=16, bitpix=32) -> bytes:
    """A NIfTI-1 single file (.nii) declaring ``shape_xyz`` voxels, followed by ``data``."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, *shape_xyz, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    struct.pack_into("<8f", header, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    header[344:348] = b"n+1\x00"
    return bytes(header) + b"\x00" * 4 + data


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- huge or nonsensical headers -----------------------------------------------------

HUGE_HEADERS = {
    "huge.nrrd": "NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\n"
    "encoding: raw\nendian: little\n\n",
    "huge.mha": "ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\n"
    "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n",
}


@pytest.mark.parametrize("name", sorted(HUGE_HEADERS))
def test_huge_declared_size_refused_before_allocating(tmp_path, name):
    path = tmp_path / name
    path.write_text(HUGE_HEADERS[name])
    rss_before = peak_rss_mb()
    tracemalloc.start()
    try:
        with pytest.raises(UnsafeFileError, match="100000 x 100000 x 100000"):
            read_volume(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20
    assert peak_rss_mb() - rss_before < 100


def test_huge_nifti_header_refused(tmp_path):
    path = tmp_path / "huge.nii"
    path.write_bytes(nifti_bytes((30000, 30000, 30000), b""))
    with pytest.raises(UnsafeFileError, match="more than the limit"):
        read_volume(path)


def test_max_voxels_is_configurable(tmp_path):
    path = write_volume(tmp_path / "small.nrrd", np.zeros((4, 5, 6), np.uint8))
    assert read_volume(path).shape == (4, 5, 6)
    with pytest.raises(UnsafeFileError, match="more than the limit of 100"):
        read_volume(path, max_voxels=100)


def test_nonsensical_sizes_refused(tmp_path):
    path = tmp_path / "zero.nrrd"
    path.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 0 10 10\nencoding: raw\n\n")
    with pytest.raises(MedsegInputError):
        read_volume(path)


def test_huge_npy_header_refused_without_loading(tmp_path):
    path = tmp_path / "huge.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000, 100000)}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
    with pytest.raises(UnsafeFileError, match="more than the limit"):
        read_volume(path)


# ---- truncated and corrupt files -----------------------------------------------------


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".npy"])
def test_truncated_file_is_an_input_error(tmp_path, ext):
    rng = np.random.default_rng(0)
    path = write_volume(tmp_path / f"scan{ext}", rng.normal(size=(8, 16, 16)).astype(np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(MedsegInputError, match="truncated or corrupt"):
        read_volume(path)


def test_truncated_nii_gz_would_be_silently_zero_filled_by_simpleitk(tmp_path):
    """Why the streaming check exists: ITK's NIfTI reader does not notice truncation."""
    path = write_volume(tmp_path / "scan.nii.gz", np.ones((8, 16, 16), np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).shape == (8, 16, 16)
    with pytest.raises(MedsegInputError, match="truncated or corrupt"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd"])
def test_corrupt_compressed_data_is_an_input_error(tmp_path, ext):
    rng = np.random.default_rng(0)
    path = write_volume(tmp_path / f"scan{ext}", rng.normal(size=(8, 32, 32)).astype(np.float32))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(MedsegInputError, match="truncated or corrupt|not a valid"):
        read_volume(path)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".tif", ".npy"])
def test_garbage_and_empty_files_are_input_errors(tmp_path, ext):
    garbage = tmp_path / f"garbage{ext}"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    for path in (garbage, empty):
        with pytest.raises(MedsegInputError):
            read_volume(path)


def test_missing_detached_data_file(tmp_path):
    path = write_volume(tmp_path / "scan.nhdr", np.ones((4, 4, 4), np.float32))
    for companion in tmp_path.iterdir():
        if companion != path:
            companion.unlink()
    with pytest.raises(MedsegInputError):
        read_volume(path)


# ---- decompression bombs -------------------------------------------------------------


def test_gzip_bomb_claiming_gigabytes_from_kilobytes_is_refused(tmp_path):
    # 700^3 float32 = 1.4 GB declared (under the voxel limit); the file is a few KB.
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((700, 700, 700), bytes(1 << 20)), 9))
    assert path.stat().st_size < 10_000
    rss_before = peak_rss_mb()
    with pytest.raises(UnsafeFileError, match="decompression bomb"):
        read_volume(path)
    assert peak_rss_mb() - rss_before < 100


def test_real_run_of_zeros_bomb_refused_with_lowered_thresholds(tmp_path, monkeypatch):
    """A genuine bomb (the zeros are really there), scaled down: 16 MiB from ~16 KB."""
    path = tmp_path / "zeros.nii.gz"
    path.write_bytes(gzip.compress(nifti_bytes((256, 256, 64), bytes(256 * 256 * 64 * 4)), 9))
    ratio = (256 * 256 * 64 * 4) / path.stat().st_size
    assert ratio > 900
    with pytest.raises(UnsafeFileError, match="more than the limit"):
        read_volume(path, max_voxels=1_000_000)
    monkeypatch.setattr(_checks, "GZIP_BOMB_MIN_BYTES", 8 << 20)
    monkeypatch.setattr(_checks, "GZIP_BOMB_RATIO", 500.0)
    with pytest.raises(UnsafeFileError, match="decompression bomb"):
        read_volume(path)


def test_header_lying_about_size_is_caught_before_itk_allocates(tmp_path):
    # ratio under the bomb threshold, but the stream holds far less than declared
    path = tmp_path / "liar.nii.gz"
    noise = np.random.default_rng(0).bytes(2 << 20)
    path.write_bytes(gzip.compress(nifti_bytes((256, 256, 256), noise), 1))
    with pytest.raises(MedsegInputError, match="truncated or corrupt"):
        read_volume(path)


def test_highly_compressible_label_map_is_still_read(tmp_path):
    labels = np.zeros((64, 128, 128), np.uint8)
    labels[30:34, 60:70, 60:70] = 1
    path = write_volume(tmp_path / "mask.nii.gz", labels)
    assert path.stat().st_size * 100 < labels.nbytes  # ratio > 100: streaming check runs
    np.testing.assert_array_equal(read_volume(path).array, labels)


def test_large_payload_checked_by_gzip_trailer_without_full_decompression(tmp_path, monkeypatch):
    array = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    path = write_volume(tmp_path / "scan.nii.gz", array)
    monkeypatch.setattr(_checks, "VERIFY_MAX_BYTES", 0)  # behave as for a file of several GB
    calls = []
    original = _checks._decompressed_size
    monkeypatch.setattr(_checks, "_decompressed_size", lambda *a: calls.append(a) or original(*a))
    np.testing.assert_array_equal(read_volume(path).array, array)
    assert calls == []  # the trailer (ISIZE) matched: no second decompression
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(MedsegInputError, match="truncated or corrupt"):
        read_volume(path)
    assert len(calls) == 1


def test_multi_member_gzip_is_read(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    content = nifti_bytes((6, 5, 4), array.tobytes())
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(content[:500]) + gzip.compress(content[500:]))
    np.testing.assert_array_equal(read_volume(path).array, array)


# ---- npy, channels, 4D ---------------------------------------------------------------


class _Exploit:
    """Unpickling this creates a marker file: proves whether pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_npy_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    array = np.empty((2, 2, 2), dtype=object)
    array[...] = _Exploit(marker)
    np.save(path, array, allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_volume(path)
    assert not marker.exists()


def test_rgb_image_refused_unless_channels_allowed(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 6, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(MedsegInputError, match="4 dimensions .*napari-medseg segments 3D"):
        read_volume(tmp_path / "rgb.mha")
    volume = read_volume(tmp_path / "rgb.mha", allow_channels=True)
    assert volume.shape == (3, 4, 5, 6) and volume.metadata["channel_axis"] == 0
    np.testing.assert_array_equal(volume.array, np.moveaxis(rgb, -1, 0))


def test_rgb_tiff_refused(tmp_path):
    tifffile.imwrite(tmp_path / "photo.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(MedsegInputError, match="RGB"):
        read_volume(tmp_path / "photo.tif")


def test_4d_image_refused_unless_channels_allowed(tmp_path):
    series = np.arange(2 * 3 * 4 * 5, dtype=np.int16).reshape(2, 3, 4, 5)
    write_volume(tmp_path / "t.nii.gz", series, spacing=(3.0, 2.0, 1.0, 0.5))
    with pytest.raises(MedsegInputError, match="has 4 dimensions \\(time or channels\\)"):
        read_volume(tmp_path / "t.nii.gz")
    volume = read_volume(tmp_path / "t.nii.gz", allow_channels=True)
    assert volume.shape == (2, 3, 4, 5) and volume.spacing == (3.0, 2.0, 1.0, 0.5)
    np.testing.assert_array_equal(volume.array, series)
    np.save(tmp_path / "t.npy", series)
    with pytest.raises(MedsegInputError, match="4 dimensions"):
        read_volume(tmp_path / "t.npy")


def test_non_finite_voxels_are_kept(tmp_path):
    array = np.ones((2, 3, 4), np.float32)
    array[0, 0, 0] = np.nan
    back = read_volume(write_volume(tmp_path / "nan.nrrd", array))
    assert np.isnan(back.array[0, 0, 0]) and mio.check_image(back)


def nifti_file(array: np.ndarray, endian: str = "<", slope: float = 0.0, inter: float = 0.0):
    """A NIfTI-1 single file holding ``array`` (float32/float64, array order z, y, x)."""
    datatype = {4: 16, 8: 64}[array.dtype.itemsize]
    header = bytearray(348)
    struct.pack_into(endian + "i", header, 0, 348)
    struct.pack_into(endian + "8h", header, 40, array.ndim, *array.shape[::-1],
                     *(1,) * (7 - array.ndim))  # fmt: skip
    struct.pack_into(endian + "hh", header, 70, datatype, 8 * array.dtype.itemsize)
    struct.pack_into(endian + "8f", header, 76, *(1.0,) * 8)
    struct.pack_into(endian + "3f", header, 108, 352.0, slope, inter)
    header[344:348] = b"n+1\x00"
    data = array.astype(array.dtype.newbyteorder(endian)).tobytes()
    return bytes(header) + b"\x00" * 4 + data


def non_finite_image(dtype=np.float32, shape=(3, 4, 5)) -> np.ndarray:
    image = np.random.default_rng(0).normal(size=shape).astype(dtype)
    image[0, 0, :3] = (np.nan, np.inf, -np.inf)
    image[-1, -1, -1] = np.nan  # the very last value of the payload
    image[1] = 0.0  # real zeros stay zeros
    return image


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nifti_non_finite_voxels_are_restored(tmp_path, ext, dtype):
    """SimpleITK 2.5 reads NIfTI NaN/inf as 0; read_volume puts them back."""
    image = non_finite_image(dtype)
    back = read_volume(write_volume(tmp_path / f"nan{ext}", image))
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, image)
    series = np.stack([image, 2 * image])  # 4D: the payload order is still the array order
    back = read_volume(write_volume(tmp_path / f"t{ext}", series), allow_channels=True)
    np.testing.assert_array_equal(back.array, series)


def test_nifti_non_finite_voxels_restored_in_vector_images(tmp_path):
    vectors = np.moveaxis(np.stack([non_finite_image(), np.ones((3, 4, 5), np.float32)]), 0, -1)
    vectors[2, 1, 0, 1] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(vectors, isVector=True), str(tmp_path / "v.nii.gz"))
    back = read_volume(tmp_path / "v.nii.gz", allow_channels=True)
    np.testing.assert_array_equal(back.array, np.moveaxis(vectors, -1, 0))


@pytest.mark.parametrize("endian", ["<", ">"])
def test_nifti_non_finite_voxels_restored_with_rescaling_and_either_byte_order(tmp_path, endian):
    image = non_finite_image()
    (tmp_path / "s.nii").write_bytes(nifti_file(image, endian, slope=-2.0, inter=5.0))
    back = read_volume(tmp_path / "s.nii").array
    np.testing.assert_allclose(back, -2.0 * image.astype(np.float64) + 5.0, rtol=1e-6)
    assert np.isnan(back[0, 0, 0]) and back[0, 0, 1] == -np.inf and back[0, 0, 2] == np.inf


def test_nifti_non_finite_voxels_that_cannot_be_placed_are_reported(tmp_path):
    path = write_volume(tmp_path / "nan.nii.gz", non_finite_image())
    with pytest.warns(UserWarning, match="4 non-finite voxels .* were read as 0"):
        _nifti.restore_non_finite(path, np.zeros(7, np.float32))  # not the file's layout


def test_nifti_scan_for_non_finite_voxels_is_skipped_without_zeros(tmp_path, monkeypatch):
    path = write_volume(tmp_path / "pos.nii.gz", np.full((3, 4, 5), 2.5, np.float32))
    monkeypatch.setattr(_nifti, "_payload_bytes", lambda *a: pytest.fail("payload re-read"))
    assert read_volume(path).array.min() == 2.5


def test_nii_gz_is_read_from_itself_when_a_nii_of_the_same_name_lies_next_to_it(tmp_path):
    """ITK's NIfTI library takes the voxels of x.nii.gz from x.nii when both exist."""
    write_volume(tmp_path / "scan.nii", np.full((2, 3, 4), 7, np.int16))
    wanted = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_volume(tmp_path / "scan.nii.gz", wanted)
    np.testing.assert_array_equal(read_volume(tmp_path / "scan.nii.gz").array, wanted)
    assert read_volume(tmp_path / "scan.nii").array.max() == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii", "scan.nii.gz"]


def test_2d_rgb_image_refused_unless_channels_allowed(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (5, 6, 3)).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png.mha"))
    with pytest.raises(MedsegInputError, match="RGB or vector components"):
        read_volume(tmp_path / "rgb.png.mha")
    volume = read_volume(tmp_path / "rgb.png.mha", allow_channels=True)
    np.testing.assert_array_equal(volume.array, np.moveaxis(rgb, -1, 0))


# ---- atomic writes -------------------------------------------------------------------


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as handle:
            handle.write(b"new but partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    with atomic_write(target, "w") as handle:
        handle.write("new")
    assert target.read_text() == "new" and leftovers(tmp_path) == []


def test_missing_output_folder_is_an_input_error(tmp_path):
    with pytest.raises(MedsegInputError, match="folder .* does not exist"):
        with atomic_write(tmp_path / "no" / "data.bin") as handle:
            handle.write(b"x")
    with pytest.raises(MedsegInputError, match="does not exist"):
        write_volume(tmp_path / "no" / "seg.nii.gz", np.ones((2, 3, 4), np.uint8))


@pytest.mark.parametrize("via", [False, True])
def test_stale_temporaries_of_killed_writers_are_swept(tmp_path, via):
    old = time.time() - 2 * STALE_TEMP_SECONDS
    stale_file = tmp_path / f"{TEMP_PREFIX}dead.part"
    stale_file.write_bytes(b"half")
    stale_folder = tmp_path / f"{TEMP_PREFIX}deadfolder"
    stale_folder.mkdir()
    (stale_folder / "scan.nii.gz").write_bytes(b"half")
    busy_folder = tmp_path / f"{TEMP_PREFIX}busy"  # old folder, but a file in it is fresh
    busy_folder.mkdir()
    (busy_folder / "big.nii.gz").write_bytes(b"growing")
    fresh = tmp_path / f"{TEMP_PREFIX}alive.part"
    fresh.write_bytes(b"half")
    user = tmp_path / "old_user_file.nii.gz"
    user.write_bytes(b"mine")
    link = tmp_path / f"{TEMP_PREFIX}link"
    link.symlink_to(user)
    for item in (stale_file, stale_folder / "scan.nii.gz", stale_folder, busy_folder, user):
        os.utime(item, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    if via:
        atomic_write_via(tmp_path / "out.bin", lambda tmp: tmp.write_bytes(b"new"))
    else:
        with atomic_write(tmp_path / "out.bin") as handle:
            handle.write(b"new")
    assert leftovers(tmp_path) == sorted([busy_folder.name, fresh.name, link.name])
    assert user.read_bytes() == b"mine" and (tmp_path / "out.bin").read_bytes() == b"new"


def test_atomic_write_keeps_file_permissions(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with atomic_write(target) as handle:
        handle.write(b"new")
    assert (target.stat().st_mode & 0o777) == 0o640


def test_atomic_write_via_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "scan.nii.gz"
    target.write_bytes(b"old")
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write_via(target, writer)
    assert seen[0].name == "scan.nii.gz" and seen[0].parent.parent == tmp_path
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_simpleitk_failure_mid_write_keeps_previous_volume(tmp_path, monkeypatch):
    target = write_volume(tmp_path / "seg.nrrd", np.ones((2, 3, 4), np.uint8))

    def failing_write(image, name, *args, **kwargs):
        Path(name).write_bytes(b"NRRD0004\npartial")
        raise RuntimeError("ITK ERROR: NrrdImageIO(0x1): could not write")

    monkeypatch.setattr(_itk.sitk, "WriteImage", failing_write)
    with pytest.raises(MedsegError, match="could not save .*seg.nrrd: could not write"):
        write_volume(target, np.zeros((2, 3, 4), np.uint8))
    monkeypatch.undo()
    assert read_volume(target).array.sum() == 24 and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("ITK ERROR: Could not write file: No space left on device"),
    ],
)
def test_disk_full_gives_clear_error_and_keeps_previous(tmp_path, monkeypatch, failure):
    target = write_volume(tmp_path / "seg.nii.gz", np.ones((2, 3, 4), np.uint8))

    def full_disk(image, name, *args, **kwargs):
        Path(name).write_bytes(b"\x1f\x8b partial")
        raise failure

    monkeypatch.setattr(_itk.sitk, "WriteImage", full_disk)
    with pytest.raises(MedsegError, match="could not save .*seg.nii.gz: disk full"):
        write_volume(target, np.zeros((2, 3, 4), np.uint8))
    monkeypatch.undo()
    assert read_volume(target).array.sum() == 24 and leftovers(tmp_path) == []


def test_disk_full_in_atomic_write(tmp_path, monkeypatch):
    target = write_volume(tmp_path / "a.npy", np.ones((2, 3, 4), np.uint8))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_npy.np, "save", full_disk)
    with pytest.raises(MedsegError, match="disk full"):
        write_volume(target, np.zeros((2, 3, 4), np.uint8))
    monkeypatch.undo()
    assert read_volume(target).array.sum() == 24 and leftovers(tmp_path) == []


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_medseg.io import write_volume
    target = sys.argv[1]
    i = 0
    while True:
        i += 1
        write_volume(target, np.full((64, 256, 256), i % 250, np.uint8), labels=True)
        print(i, flush=True)
    """
)


@pytest.mark.parametrize("ext", [".npy", ".nrrd"])
def test_sigkill_mid_write_leaves_old_or_new_complete_file(tmp_path, ext):
    target = tmp_path / f"big{ext}"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for delay in (0.7, 1.1):
        proc = subprocess.Popen(
            [sys.executable, "-c", _KILL_SCRIPT, str(target)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout.readline(), proc.stderr.read().decode()  # one write completed
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        volume = read_volume(target)
        assert volume.shape == (64, 256, 256)
        values = np.unique(volume.array)
        assert len(values) == 1  # one complete write, never a mix of two
