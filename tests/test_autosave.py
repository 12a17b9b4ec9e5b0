"""Crash recovery of the annotation being painted: napari_medseg.autosave (GUI-free)."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import napari_medseg.autosave as autosave_module
from napari_medseg._atomic import TEMP_PREFIX
from napari_medseg.autosave import (
    AutosaveStore,
    AutosaveWarning,
    default_autosave_dir,
    image_fingerprint,
)
from napari_medseg.errors import MedsegError, MedsegInputError

REPO = Path(__file__).resolve().parents[1]
SHAPE = (8, 16, 16)


def painted(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """A sparse annotation: one axial slice painted with background and a square."""
    annotation = np.zeros(shape, np.uint8)
    z = shape[0] // 2 + seed % 2
    annotation[z] = 1
    annotation[z, 4:10, 3 + seed % 5 : 11] = 2
    return annotation


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.fixture
def store(tmp_path) -> AutosaveStore:
    return AutosaveStore(tmp_path / "autosave")


# ---- keys ----------------------------------------------------------------------------


def test_key_is_stable_for_the_same_file_and_differs_otherwise(tmp_path, monkeypatch):
    image = tmp_path / "CT scan (1).nii.gz"
    image.write_bytes(b"x")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(image)
    key = AutosaveStore.key_for(image, (8, 16, 16))
    assert key == AutosaveStore.key_for(str(image), [8, 16, 16])
    assert key == AutosaveStore.key_for(link, (8, 16, 16))  # resolved
    monkeypatch.chdir(tmp_path)
    assert key == AutosaveStore.key_for("CT scan (1).nii.gz", (8, 16, 16))  # relative
    assert key.startswith("CT_scan_1-")
    assert key != AutosaveStore.key_for(image, (8, 16, 17))
    assert key != AutosaveStore.key_for(tmp_path / "other.nii.gz", (8, 16, 16))
    # a key is a safe file name
    assert AutosaveStore(tmp_path).path_for(key).parent == tmp_path


def test_key_from_image_content_when_there_is_no_file():
    image = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
    key = AutosaveStore.key_for(None, image.shape, image_fingerprint(image))
    assert key == AutosaveStore.key_for(None, image.shape, image_fingerprint(image.copy()))
    assert key.startswith("data-")
    other = image.copy()
    other[0, 0, 0] += 1.0  # voxel 0 is always sampled
    assert key != AutosaveStore.key_for(None, image.shape, image_fingerprint(other))
    assert len(image_fingerprint(np.zeros((512, 512, 300), np.int16))) < 10_000  # cheap
    with pytest.raises(ValueError, match="path or a fingerprint"):
        AutosaveStore.key_for(None, image.shape, None)


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".hidden", "x" * 200, "a\\b"])
def test_unsafe_keys_are_refused(store, key):
    with pytest.raises(MedsegInputError, match="invalid autosave key"):
        store.save(key, painted())
    with pytest.raises(MedsegInputError, match="invalid autosave key"):
        store.find(key)


def test_default_folder_follows_env_var_then_platform_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_AUTOSAVE_DIR", str(tmp_path / "here"))
    assert default_autosave_dir() == tmp_path / "here"
    assert AutosaveStore().root == tmp_path / "here"
    monkeypatch.delenv("MEDSEG_AUTOSAVE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if sys.platform.startswith("linux"):
        assert default_autosave_dir() == tmp_path / "cache" / "napari-medseg" / "autosave"
    assert default_autosave_dir().parts[-2:] == ("napari-medseg", "autosave")


# ---- round trip ----------------------------------------------------------------------


def test_save_find_load_round_trip(store, tmp_path):
    key = AutosaveStore.key_for(tmp_path / "ct.nii.gz", SHAPE)
    assert store.find(key) is None
    annotation = painted()
    before = datetime.now() - timedelta(seconds=5)
    path = store.save(
        key, annotation, spacing=(2.0, 0.5, 0.5), class_names=["liver"], image_name="ct"
    )
    assert path == store.path_for(key) and path.is_file()
    assert (store.root.stat().st_mode & 0o777) == 0o700  # patient data stays private
    assert (path.stat().st_mode & 0o777) == 0o600

    entry = AutosaveStore(store.root).find(key)  # another process would do the same
    assert entry is not None
    assert entry.key == key and entry.path == path
    assert entry.annotated_voxels == int(np.count_nonzero(annotation))
    assert entry.class_names == ("liver",)
    assert entry.image_name == "ct"
    assert entry.spacing == (2.0, 0.5, 0.5)
    assert entry.shape == SHAPE and entry.dtype == annotation.dtype.str
    assert before <= entry.saved_at <= datetime.now() + timedelta(seconds=5)
    assert "ct" in entry.describe() and f"{entry.annotated_voxels:,}" in entry.describe()

    restored = store.load(entry, expected_shape=SHAPE)
    assert restored.dtype == annotation.dtype
    np.testing.assert_array_equal(restored, annotation)
    restored[:] = 0  # the restored array is the caller's own
    np.testing.assert_array_equal(store.load(entry), annotation)

    assert store.entries() == [entry]
    store.discard(key)
    assert store.find(key) is None and not path.exists()
    store.discard(key)  # twice is fine


def test_uint16_and_bool_annotations_keep_their_type(store):
    for i, annotation in enumerate([painted().astype(np.uint16) * 300, painted() > 1]):
        key = f"k{i}"
        store.save(key, annotation)
        back = store.load(store.find(key))
        assert back.dtype == annotation.dtype
        np.testing.assert_array_equal(back, annotation)


def test_load_refuses_an_annotation_of_another_shape(store):
    store.save("k", painted())
    with pytest.raises(MedsegInputError, match=r"shape \(8, 16, 16\).*\(8, 16, 17\)"):
        store.load(store.find("k"), expected_shape=(8, 16, 17))


def test_float_annotation_is_refused(store):
    with pytest.raises(MedsegInputError, match="float"):
        store.save("k", painted().astype(np.float32))


def test_entries_newest_first(store):
    store.save("old", painted(seed=0))
    old = store.path_for("old")
    meta_time = time.time() - 3600
    _rewrite_meta(old, saved_at=meta_time)
    store.save("new", painted(seed=1))
    assert [e.key for e in store.entries()] == ["new", "old"]


# ---- unchanged annotations are not rewritten -----------------------------------------


def test_unchanged_annotation_is_not_rewritten(store, monkeypatch):
    writes = []
    real = autosave_module.atomic_write

    def counting(path, *args, **kwargs):
        writes.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(autosave_module, "atomic_write", counting)
    annotation = painted()
    path = store.save("k", annotation)
    stamp = path.stat().st_mtime_ns
    assert store.save("k", annotation.copy()) == path
    assert len(writes) == 1 and path.stat().st_mtime_ns == stamp

    # a restarted application (new store) compares with the file on disk
    assert AutosaveStore(store.root).save("k", annotation) == path
    assert len(writes) == 1

    annotation[0, 0, 0] = 2  # one painted voxel is a change
    store.save("k", annotation)
    assert len(writes) == 2
    assert store.find("k").annotated_voxels == int(np.count_nonzero(annotation))

    path.unlink()  # deleted behind our back: written again
    store.save("k", annotation)
    assert len(writes) == 3 and path.is_file()


# ---- damaged files -------------------------------------------------------------------


def _rewrite_meta(path: Path, **changes) -> None:
    with np.load(path, allow_pickle=False) as data:
        annotation = np.array(data["annotation"])
        meta = json.loads(np.asarray(data["meta"]).tobytes().decode())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            annotation=annotation,
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
        )


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("annotation.npy")
    middle = info.header_offset + 60 + info.compress_size // 2
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(1000)),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "bit flip in compressed data": _flip_middle_byte,
    "foreign npz": lambda p: (
        np.savez(p.with_suffix(".tmp.npz"), x=np.zeros(3)) or p.with_suffix(".tmp.npz").replace(p)
    ),
    "other version": lambda p: _rewrite_meta(p, format_version=99),
    "incomplete record": lambda p: _rewrite_meta(p, shape=None),
    "meta not json": lambda p: (
        np.savez(
            p.with_suffix(".tmp.npz"), annotation=painted(), meta=np.frombuffer(b"{oops", np.uint8)
        )
        or p.with_suffix(".tmp.npz").replace(p)
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_autosave_is_ignored_with_a_warning(store, damage):
    path = store.save("k", painted())
    DAMAGE[damage](path)
    with pytest.warns(AutosaveWarning, match="ignoring damaged autosave"):
        assert store.find("k") is None
    with pytest.warns(AutosaveWarning):
        assert store.entries() == []
    # the next autosave replaces the damaged file
    fresh = AutosaveStore(store.root)
    fresh.save("k", painted(seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fresh.load(fresh.find("k")), painted(seed=1))


class _Exploit:
    """Unpickling this creates a marker file: proves whether pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_autosave_is_never_unpickled(store, tmp_path):
    marker = tmp_path / "pwned"
    path = store.save("k", painted())
    evil = np.empty(SHAPE, dtype=object)
    evil[...] = _Exploit(marker)
    with np.load(path, allow_pickle=False) as data:
        meta = np.array(data["meta"])
    with open(path, "wb") as handle:
        np.savez(handle, annotation=evil, meta=meta)
    entry = store.find("k")  # the record itself is plain JSON
    with pytest.raises(MedsegInputError, match="cannot restore autosave"):
        store.load(entry)
    assert not marker.exists()


# ---- faults while saving -------------------------------------------------------------


class _DiskFullAfter:
    """File wrapper whose writes fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, handle: io.IOBase, budget: int) -> None:
        self._handle = handle
        self._budget = budget

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self._budget:
            self._handle.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget -= size
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _raise_disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_keeps_the_previous_autosave(store, monkeypatch, where):
    path = store.save("k", painted(seed=0))
    previous = path.read_bytes()
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(
            os, "fdopen", lambda fd, *a, **k: _DiskFullAfter(real_fdopen(fd, *a, **k), 64)
        )
    else:
        monkeypatch.setattr(os, where, _raise_disk_full)
    with pytest.raises(MedsegError, match="could not save .*k.npz: disk full"):
        store.save("k", painted(seed=1))
    monkeypatch.undo()
    assert path.read_bytes() == previous and leftovers(store.root) == []
    np.testing.assert_array_equal(store.load(store.find("k")), painted(seed=0))
    store.save("k", painted(seed=1))  # the failed save is retried, not skipped as unchanged
    np.testing.assert_array_equal(store.load(store.find("k")), painted(seed=1))


def test_stale_temporary_files_are_swept_fresh_ones_kept(store):
    store.root.mkdir(parents=True)
    stale = store.root / f"{TEMP_PREFIX}dead.part"
    fresh = store.root / f"{TEMP_PREFIX}alive.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * autosave_module.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    store.save("k", painted())
    assert not stale.exists() and fresh.exists()
    assert store.find("k") is not None


_PAINTER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_medseg.autosave import AutosaveStore

    store = AutosaveStore(sys.argv[1])
    shape = (24, 96, 96)
    version = int(sys.argv[2])
    while True:
        version += 1
        rng = np.random.default_rng(version)
        annotation = rng.integers(0, 3, shape, dtype=np.uint8)  # slow to compress
        annotation.flat[0] = version % 256
        store.save("painting", annotation, class_names=["v%d" % version], image_name="ct")
        print(version, flush=True)
    """
)


def _painter_version(annotation: np.ndarray) -> int:
    """Which version of the painter's loop wrote this annotation (checks it is whole)."""
    for version in range(1, 100_000):
        if version % 256 != annotation.flat[0]:
            continue
        expected = np.random.default_rng(version).integers(0, 3, annotation.shape, dtype=np.uint8)
        expected.flat[0] = version % 256
        if np.array_equal(expected, annotation):
            return version
    raise AssertionError("the autosave is not any complete version")


def test_sigkill_while_painting_leaves_the_last_complete_autosave(tmp_path):
    root = tmp_path / "autosave"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rng = random.Random(1234)
    last = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _PAINTER, str(root), str(last)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first = proc.stdout.readline()
            assert first, proc.stderr.read()
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        printed = [int(v) for v in (first + rest).split()]
        # a new process (this one) finds the last complete autosave
        entry = AutosaveStore(root).find("painting")
        assert entry is not None
        annotation = AutosaveStore(root).load(entry, expected_shape=(24, 96, 96))
        version = _painter_version(annotation)
        assert version in (printed[-1], printed[-1] + 1)  # saved, or renamed just before kill
        assert entry.class_names == (f"v{version}",)
        assert entry.annotated_voxels == int(np.count_nonzero(annotation))
        assert all(
            name.startswith(TEMP_PREFIX) for name in os.listdir(root) if name != "painting.npz"
        )
        last = version
    # left-over temporary files do not break the next save
    store = AutosaveStore(root)
    store.save("painting", painted(shape=(24, 96, 96)))
    np.testing.assert_array_equal(store.load(store.find("painting")), painted(shape=(24, 96, 96)))
