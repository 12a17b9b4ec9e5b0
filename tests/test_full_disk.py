"""Saving on a real full disk: a small tmpfs, filled up, loses nothing.

The ``full_disk`` fixture mounts a real tmpfs (root only; skipped otherwise) and fills it
with a filler file until ``ENOSPC``, leaving a chosen number of bytes free. Nothing is
faked: every library writes to a file system that really runs out of space. SimpleITK's
NIfTI writer (and its NRRD writer for some sizes) reported such a short write only on
stderr, and the broken file replaced the previous one; these tests hold the fix to it.

The last section fakes one fault that a tmpfs cannot produce on demand (a failed rename of
a header after its data file was moved) and says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from napari_medseg import _atomic
from napari_medseg._atomic import TEMP_PREFIX
from napari_medseg.checkpoint import load_model
from napari_medseg.errors import MedsegError
from napari_medseg.io import SUPPORTED_EXTENSIONS, _itk, read_volume, write_volume
from napari_medseg.io._formats import FORMATS
from napari_medseg.synthetic import make_synthetic_case

REPO = Path(__file__).resolve().parents[1]
#: Every extension write_volume writes (all but DICOM), from the io format table.
WRITABLE = [ext for ext in SUPPORTED_EXTENSIONS if FORMATS[ext] != "dicom"]
TMPFS_BYTES = 4 << 20  # room for a previous model (1.4 MB) and the filler
PAGE = 4096


class FullDisk:
    """A mounted tmpfs of :data:`TMPFS_BYTES` that :meth:`fill` fills up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def fill(self, free: int) -> None:
        """Write the filler until the disk is full, then give back ``free`` bytes."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for block in (1 << 16, PAGE, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\xa5" * block)
            size = os.fstat(fd).st_size
            os.ftruncate(fd, max(0, size - free))
        finally:
            os.close(fd)
        stats = os.statvfs(self.path)
        assert stats.f_bavail * stats.f_frsize <= free + PAGE

    def read_only(self) -> None:
        """Remount the tmpfs read-only."""
        remount = ["mount", "-o", "remount,ro", str(self.path)]
        subprocess.run(remount, check=True, capture_output=True)

    def empty(self) -> None:
        """Remove the filler: the disk has room again."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def snapshot(self) -> dict[str, bytes]:
        """Name and content of every entry but the filler (temporaries included)."""
        return {
            p.name: p.read_bytes() if p.is_file() else b"<folder>"
            for p in sorted(self.path.iterdir())
            if p != self.filler
        }


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[FullDisk]:
    """A real tmpfs (4 MiB) mounted on a temporary folder, unmounted at teardown."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a real tmpfs needs root (os.geteuid() == 0)")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mounting a real tmpfs needs the mount and umount commands")
    point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0755", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield FullDisk(point)
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def noise(shape: tuple[int, ...] = (16, 64, 64)) -> np.ndarray:
    """256 KB of float32 that hardly compresses: more than the space left."""
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


# ---- write_volume, every format --------------------------------------------------------


@pytest.mark.parametrize("free", [0, 2 * PAGE], ids=["0B-free", "8KB-free"])
@pytest.mark.parametrize("ext", WRITABLE)
def test_save_on_a_full_disk_raises_and_keeps_the_previous_file(full_disk, ext, free):
    target = full_disk.path / f"seg{ext}"
    write_volume(target, np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8))
    before = full_disk.snapshot()  # the file, and its data file for .nhdr / .mhd
    full_disk.fill(free)
    with pytest.raises(MedsegError, match=rf"could not save .*seg{ext}: disk full$"):
        write_volume(target, noise())
    assert full_disk.snapshot() == before  # byte-identical, no temporary file left
    full_disk.empty()
    np.testing.assert_array_equal(read_volume(target).array.ravel(), np.arange(256))


@pytest.mark.parametrize("ext", WRITABLE)
def test_every_save_while_the_disk_fills_is_complete_or_refused(full_disk, ext):
    """From 0 to 48 KB free, in 2 KB steps, labels and noise: never a broken file.

    Before the fix, ``.nii``/``.nii.gz`` broke at every size and ``.nrrd`` with about
    16-20 KB free (its gzip stream cut short, reported only on stderr).
    """
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(16, 64, 64)).astype(np.uint8)
    target = full_disk.path / f"seg{ext}"
    outcomes = set()
    for data in (labels, noise()):
        for free in range(0, 48 * 1024 + 1, 2048):
            full_disk.empty()
            write_volume(target, np.ones((4, 8, 8), np.uint8), labels=True)
            before = full_disk.snapshot()
            full_disk.fill(free)
            try:
                write_volume(target, data, labels=data.dtype == np.uint8)
            except MedsegError as exc:
                assert str(exc).endswith("disk full"), (free, str(exc))
                assert full_disk.snapshot() == before, free
                outcomes.add("refused")
            else:
                assert temporaries(full_disk.path) == [], free
                np.testing.assert_array_equal(read_volume(target).array, data)
                outcomes.add("saved")
    assert "refused" in outcomes


@pytest.mark.parametrize("ext", WRITABLE)
def test_save_on_a_read_only_mount_gives_the_real_cause(full_disk, ext):
    target = full_disk.path / f"seg{ext}"
    write_volume(target, np.ones((4, 8, 8), np.uint8), labels=True)
    before = full_disk.snapshot()
    full_disk.read_only()
    with pytest.raises(MedsegError, match=rf"could not save .*seg{ext}: Read-only file system$"):
        write_volume(target, noise())
    assert full_disk.snapshot() == before


# ---- the napari writer hook, the CLI ---------------------------------------------------


def test_napari_writer_on_a_full_disk_keeps_the_previous_annotation(full_disk):
    from napari_medseg._napari.writer import write_labels

    meta = {"metadata": {"spacing": (2.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0)}}
    previous = np.zeros((4, 8, 8), np.uint8)
    previous[1:3, 2:6, 2:6] = 1
    target = full_disk.path / "annotation.nii.gz"
    assert write_labels(str(target), previous, meta) == [str(target)]
    before = full_disk.snapshot()
    full_disk.fill(2 * PAGE)
    painted = np.random.default_rng(2).integers(0, 250, size=(16, 64, 64)).astype(np.uint8)
    with pytest.raises(MedsegError, match="annotation.nii.gz: disk full"):
        write_labels(str(target), painted, meta)
    assert full_disk.snapshot() == before
    full_disk.empty()
    np.testing.assert_array_equal(read_volume(target).array, previous)


def medseg(*args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "napari_medseg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """Non-zero exit, no traceback, and one ``medseg <command>: error: ...`` line last.

    Lines before it may only be the progress bar of ``train``.
    """
    err = result.stderr
    assert result.returncode != 0, (result.stdout, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"medseg {command}: error: "), err
    others = [line for line in lines[:-1] if not line.startswith(f"{command} [")]
    assert others == [], err
    assert "saved" not in result.stdout
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A tiny model trained by the CLI (2 iterations) on a small synthetic case."""
    folder = tmp_path_factory.mktemp("full-disk-cli")
    case = make_synthetic_case(shape=(16, 24, 24))
    image = write_volume(folder / "image.nii.gz", case.image)
    annotation = write_volume(folder / "annotation.nii.gz", case.annotation, labels=True)
    model = folder / "model.safetensors"
    result = medseg(
        "train", str(image), str(annotation), "--out", str(model),
        "--iterations", "2", "--time-budget", "30", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"image": image, "annotation": annotation, "model": model}


def test_predict_onto_a_full_disk_fails_and_keeps_the_previous_segmentation(full_disk, trained):
    target = full_disk.path / "seg.nii.gz"
    write_volume(target, np.ones((16, 24, 24), np.uint8), labels=True)
    before = full_disk.snapshot()
    full_disk.fill(0)  # the segmentation, 9 KB, compresses to fewer than 8 KB
    result = medseg("predict", str(trained["model"]), str(trained["image"]), "--out", str(target))
    line = assert_one_error_line(result, "predict")
    assert line.endswith("seg.nii.gz: disk full"), line
    assert full_disk.snapshot() == before


def test_train_onto_a_full_disk_fails_and_keeps_the_previous_model(
    full_disk, trained, tmp_path
):
    target = full_disk.path / "model.safetensors"
    shutil.copyfile(trained["model"], target)
    before = full_disk.snapshot()
    full_disk.fill(2 * PAGE)  # the model holds more than 8 KB
    rescue = tmp_path / "rescued"
    result = medseg(
        "train", str(trained["image"]), str(trained["annotation"]), "--out", str(target),
        "--iterations", "2", "--time-budget", "30", "--device", "cpu",
        MEDSEG_RESCUE_DIR=str(rescue),
    )  # fmt: skip
    line = assert_one_error_line(result, "train")
    assert line.endswith("model.safetensors: disk full"), line
    assert full_disk.snapshot() == before
    kept = list(rescue.glob("*.safetensors"))  # the trained model is not lost
    assert len(kept) == 1 and str(kept[0]) in line
    load_model(kept[0])


# ---- simulated faults ----------------------------------------------------------------------


def test_short_write_reported_only_on_stderr_is_caught_with_its_real_cause(
    tmp_path, monkeypatch, capfd
):
    """Simulated (the writer cuts its file and complains on descriptor 2, disk not full):
    the save fails with the real cause and the complaint, nothing reaches the terminal."""
    target = write_volume(tmp_path / "seg.nii.gz", np.ones((4, 8, 8), np.uint8), labels=True)
    before = target.read_bytes()
    real_write = _itk.sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real_write(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 2])
        os.write(2, b"** ERROR: NWAD: wrote only 100 of 2048 bytes to file\n")

    monkeypatch.setattr(_itk.sitk, "WriteImage", short_write)
    monkeypatch.setattr(_atomic, "is_nearly_full", lambda folder: False, raising=False)
    capfd.readouterr()
    with pytest.raises(MedsegError) as raised:
        write_volume(target, noise(), labels=False)
    message = str(raised.value)
    assert message.startswith(f"could not save {target}: the file written is truncated"), message
    said = "** ERROR: NWAD: wrote only 100 of 2048 bytes to file"
    assert message.endswith(f"(the writer said: {said})"), message
    assert "disk full" not in message and "\n" not in message
    assert capfd.readouterr().err == ""
    assert target.read_bytes() == before and temporaries(tmp_path) == []



@pytest.mark.parametrize("ext", [e for e in WRITABLE if e != ".npy"])
def test_every_format_check_catches_a_file_cut_after_the_library_returned(
    tmp_path, monkeypatch, ext
):
    """Simulated (each written file over 1 KB is cut to half before the check, the disk
    not full): the format's read-back check refuses it with its real cause."""
    target = write_volume(tmp_path / f"seg{ext}", np.ones((4, 8, 8), np.uint8), labels=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_fsync = _atomic._fsync_file

    def cut_then_fsync(path: Path) -> None:
        size = path.stat().st_size
        if size > 1024:
            os.truncate(path, size // 2)
        real_fsync(path)

    monkeypatch.setattr(_atomic, "_fsync_file", cut_then_fsync)
    monkeypatch.setattr(_atomic, "is_nearly_full", lambda folder: False, raising=False)
    with pytest.raises(MedsegError, match=rf"seg{ext}: (the file written|its data file seg\.raw)"):
        write_volume(target, noise())
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_bytes_lost_between_write_and_disk_are_caught(tmp_path, monkeypatch):
    """Simulated (the temporary file is cut while open): a model-style save through a file
    object is refused, the previous file kept."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous model")
    monkeypatch.setattr(_atomic, "is_nearly_full", lambda folder: False, raising=False)
    with pytest.raises(MedsegError, match=r"model.safetensors: only 0 of 4,096 bytes reached"):
        with _atomic.atomic_write(target) as handle:
            handle.write(bytes(4096))
            handle.flush()
            os.ftruncate(handle.fileno(), 0)
    assert target.read_bytes() == b"previous model" and temporaries(tmp_path) == []


@pytest.mark.parametrize("ext", [".nhdr", ".mhd"])
def test_failed_rename_of_the_header_puts_the_previous_data_file_back(tmp_path, monkeypatch, ext):
    """Simulated (``os.replace`` fails for the header only): the pair stays consistent."""
    target = write_volume(tmp_path / f"seg{ext}", np.ones((4, 8, 8), np.uint8), labels=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == target.name:
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(_atomic.os, "replace", replace)
    with pytest.raises(MedsegError, match="Input/output error"):
        write_volume(target, np.full((4, 8, 8), 2, np.uint8), labels=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_volume(target).array.sum() == 4 * 8 * 8
