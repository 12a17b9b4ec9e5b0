"""zarr / OME-Zarr stores: lazy reading, slab-by-slab atomic writing, untrusted stores.

napari_medseg.io.zarr_io (with _zarr_meta and _zarr_write); needs the zarr extra.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

from napari_medseg import _atomic  # noqa: E402
from napari_medseg.errors import MedsegError, MedsegInputError, UnsafeFileError  # noqa: E402
from napari_medseg.io import (  # noqa: E402
    GeometryWarning,
    ZarrLabelWriter,
    is_supported,
    is_zarr,
    open_zarr,
    read_volume,
    write_volume,
    write_zarr,
)
from napari_medseg.io.segments import Segments, segments_from_metadata  # noqa: E402
from napari_medseg.io.zarr_io import LAZY_MAX_VOXELS  # noqa: E402
from napari_medseg.volume import Volume  # noqa: E402

SPACING = (2.5, 0.7, 0.8125)
ORIGIN = (-10.125, 3.25, 7.0)
COLOR_STEP = 1 / 255  # image-label colours are stored as 0-255 integers


def image(shape=(20, 30, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def label_map(shape=(20, 30, 40), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(np.uint8)


def siblings(folder: Path) -> list[str]:
    """Everything in ``folder`` (hidden partial stores included)."""
    return sorted(p.name for p in folder.iterdir())


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def ome_group(path: Path, levels, axes, transforms, version="0.4", extra=None):
    """A hand-made OME-Zarr image: ``levels`` arrays, per-level ``transforms``."""
    fmt = 3 if version == "0.5" else 2
    root = zarr.open_group(store=str(path), mode="w", zarr_format=fmt)
    datasets = []
    for k, (data, transform) in enumerate(zip(levels, transforms)):
        array = root.create_array(str(k), shape=data.shape, dtype=data.dtype, chunks=data.shape)
        array[...] = data
        datasets.append({"path": str(k), "coordinateTransformations": transform})
    multiscale = {"version": version, "axes": axes, "datasets": datasets, **(extra or {})}
    attrs = {"multiscales": [multiscale]}
    if version == "0.5":
        root.attrs["ome"] = {"version": "0.5", **attrs}
    else:
        root.attrs.update(attrs)
    return path


def space(*names, unit="millimeter"):
    return [{"name": n, "type": "space", "unit": unit} for n in names]


def st(scale, translation):
    return [
        {"type": "scale", "scale": list(scale)},
        {"type": "translation", "translation": list(translation)},
    ]


# ---- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [2, 3])
def test_plain_zarr_array_reads_with_unit_spacing(tmp_path, fmt):
    data = label_map()
    path = tmp_path / "plain.zarr"
    zarr.create_array(
        str(path), shape=data.shape, chunks=(7, 16, 16), dtype=data.dtype, zarr_format=fmt
    )[...] = data
    assert is_zarr(path) and is_supported(path)
    lazy = open_zarr(path)
    assert isinstance(lazy.array, da.Array) and lazy.shape == data.shape
    assert lazy.spacing == (1.0, 1.0, 1.0) and lazy.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(np.asarray(lazy.array[3:9]), data[3:9])
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, data)
    assert volume.metadata["format"] == "zarr"


def test_sharded_zarr_3_array_reads_what_is_sliced(tmp_path):
    data = image((10, 20, 30))
    path = tmp_path / "sharded.zarr"
    zarr.create_array(
        str(path), shape=data.shape, chunks=(2, 4, 30), shards=(4, 8, 30), dtype="float32"
    )[...] = data
    lazy = open_zarr(path)
    np.testing.assert_array_equal(np.asarray(lazy.array[3:7, 5:9]), data[3:7, 5:9])


def test_group_holding_one_array_reads(tmp_path):
    data = image()
    root = zarr.open_group(store=str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    root.create_array("volume", shape=data.shape, dtype=data.dtype)[...] = data
    np.testing.assert_array_equal(read_volume(tmp_path / "g.zarr").array, data)


def test_write_zarr_keeps_spacing_and_origin_exactly(tmp_path):
    data = image()
    path = write_volume(tmp_path / "scan.zarr", Volume(data, SPACING, ORIGIN))
    attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert (
        json.loads((path / "0" / ".zarray").read_text(encoding="utf-8"))["dimension_separator"]
        == "/"
    )
    lazy = open_zarr(path)
    assert lazy.spacing == SPACING and lazy.origin == ORIGIN
    back = read_volume(path)
    assert back.spacing == SPACING and back.origin == ORIGIN
    np.testing.assert_array_equal(back.array, data)
    assert siblings(tmp_path) == ["scan.zarr"]


def test_ome_zarr_v05_with_channel_and_micrometres(tmp_path):
    data = image((1, 6, 8, 10))
    axes = [{"name": "c", "type": "channel"}, *space("z", "y", "x", unit="micrometer")]
    path = ome_group(
        tmp_path / "v05.zarr",
        [data],
        axes,
        [st((1, 4.0, 500.0, 250.0), (0, 1000.0, -2000.0, 0.0))],
        version="0.5",
    )
    lazy = open_zarr(path)
    assert lazy.shape == (6, 8, 10)
    np.testing.assert_allclose(lazy.spacing, (0.004, 0.5, 0.25), rtol=1e-12)
    np.testing.assert_allclose(lazy.origin, (1.0, -2.0, 0.0), rtol=1e-12)
    assert lazy.metadata["axes"] == ["z", "y", "x"] and lazy.metadata["ome_version"] == "0.5"
    np.testing.assert_array_equal(np.asarray(lazy.array), data[0])


def test_multiscale_levels_and_top_level_transform(tmp_path):
    data = image((4, 16, 16))
    levels = [data, data[:, ::2, ::2]]
    transforms = [st((1, 1, 1), (0, 0, 0)), st((1, 2, 2), (0, 0.5, 0.5))]
    extra = {
        "coordinateTransformations": [
            {"type": "scale", "scale": [3.0, 0.5, 0.5]},
            {"type": "translation", "translation": [1, 2, 3]},
        ]
    }
    path = ome_group(tmp_path / "pyr.zarr", levels, space("z", "y", "x"), transforms, extra=extra)
    lazy = open_zarr(path)
    assert [level.shape for level in lazy.levels] == [(4, 16, 16), (4, 8, 8)]
    assert lazy.spacing == (3.0, 0.5, 0.5) and lazy.origin == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(np.asarray(lazy.levels[1]), levels[1])


def test_written_levels_keep_every_other_voxel_in_y_and_x(tmp_path):
    data = label_map((6, 33, 20))
    path = write_zarr(tmp_path / "seg.zarr", data, spacing=SPACING, origin=ORIGIN, levels=3)
    lazy = open_zarr(path)
    assert [level.shape for level in lazy.levels] == [(6, 33, 20), (6, 17, 10), (6, 9, 5)]
    for k, level in enumerate(lazy.levels):
        np.testing.assert_array_equal(np.asarray(level), data[:, :: 2**k, :: 2**k])
    attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))["multiscales"][0]
    assert attrs["datasets"][2]["coordinateTransformations"][0]["scale"] == [2.5, 2.8, 3.25]


@pytest.mark.parametrize("kind", ["segmentation", "annotation"])
def test_structure_names_and_colours_round_trip(tmp_path, kind):
    segments = Segments.of_structures(["liver", 'tumour "A"'], kind)
    data = label_map() + (1 if kind == "annotation" else 0)
    path = write_volume(tmp_path / "seg.zarr", data, spacing=SPACING, segments=segments)
    attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    assert {"label-value": 1, "name": segments.items[0].name} in attrs["image-label"]["properties"]
    volume = read_volume(path)
    read = segments_from_metadata(volume.metadata)
    assert read is not None and read.matches(segments, tolerance=COLOR_STEP)
    lazy = open_zarr(path)
    assert lazy.is_label_map and lazy.segments is not None
    assert lazy.segments.matches(segments, tolerance=COLOR_STEP)


def test_foreign_image_label_without_our_kind(tmp_path):
    data = label_map()
    path = ome_group(
        tmp_path / "lab.zarr", [data], space("z", "y", "x"), [st((1, 1, 1), (0, 0, 0))]
    )
    root = zarr.open_group(store=str(path), mode="r+")
    root.attrs["image-label"] = {
        "version": "0.4",
        "colors": [{"label-value": 2, "rgba": [255, 0, 0, 255]}, {"label-value": "x"}],
        "properties": [{"label-value": 1, "name": "kidney"}],
    }
    segments = open_zarr(path).segments
    assert segments is not None and segments.kind == "segmentation"
    assert segments.names_by_value()[1] == "kidney"
    assert segments.items[1].color == (1.0, 0.0, 0.0)


# ---- writing slab by slab, atomically ------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 5, 8, 64])
def test_unaligned_slabs_equal_the_array_written_at_once(tmp_path, depth):
    data = label_map((37, 20, 24), seed=depth)
    whole = write_zarr(tmp_path / "whole.zarr", data, chunks=(depth, 16, 16), levels=2)
    rng = np.random.default_rng(depth)
    cuts = np.unique(np.concatenate(([0, 37], rng.integers(1, 37, size=9))))
    with ZarrLabelWriter(
        tmp_path / "slabs.zarr", data.shape, chunks=(depth, 16, 16), levels=2
    ) as w:
        for start, stop in zip(cuts[:-1], cuts[1:]):
            w.write(int(start), data[start:stop])
    np.testing.assert_array_equal(np.asarray(w.array), data)
    a, b = open_zarr(whole), open_zarr(tmp_path / "slabs.zarr")
    for x, y in zip(a.levels, b.levels):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_slabs_out_of_order_and_overlapping_are_written_correctly(tmp_path):
    data = label_map((30, 8, 8))
    expected = data.copy()
    with ZarrLabelWriter(tmp_path / "s.zarr", data.shape, chunks=(7, 8, 8)) as w:
        w.write(20, data[20:30])
        w.write(3, data[3:12])
        w.write(0, data[0:5])
        w.write(10, np.full((12, 8, 8), 9, np.uint8))
        expected[10:22] = 9
        w.write(12, data[12:20])
        expected[12:20] = data[12:20]
    np.testing.assert_array_equal(np.asarray(w.array), expected)


def test_abort_leaves_nothing_and_a_previous_store_intact_until_commit(tmp_path):
    target = write_zarr(tmp_path / "seg.zarr", np.ones((4, 8, 8), np.uint8), labels=True)
    before = tree(target)
    writer = ZarrLabelWriter(target, (4, 8, 8))
    writer.write(0, np.full((4, 8, 8), 2, np.uint8))
    assert writer.partial.parent == tmp_path and writer.partial.name.startswith(
        ".seg.zarr.partial-"
    )
    assert tree(target) == before
    writer.abort()
    writer.abort()
    assert siblings(tmp_path) == ["seg.zarr"] and tree(target) == before
    with pytest.raises(MedsegError, match="already aborted"):
        writer.write(0, np.zeros((1, 8, 8), np.uint8))

    with pytest.raises(RuntimeError), ZarrLabelWriter(target, (4, 8, 8)) as failing:
        failing.write(0, np.full((2, 8, 8), 3, np.uint8))
        raise RuntimeError("the prediction failed")
    assert siblings(tmp_path) == ["seg.zarr"] and tree(target) == before

    with ZarrLabelWriter(target, (4, 8, 8)) as writer:
        writer.write(0, np.full((4, 8, 8), 2, np.uint8))
        assert read_volume(target).array.max() == 1  # still the previous store
    assert siblings(tmp_path) == ["seg.zarr"]
    np.testing.assert_array_equal(read_volume(target).array, np.full((4, 8, 8), 2))


def test_something_else_than_a_store_is_never_replaced(tmp_path):
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(MedsegInputError, match="in the way"):
        write_zarr(folder, np.ones((2, 4, 4), np.uint8))
    assert (folder / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_slab_that_does_not_fit_is_refused(tmp_path):
    with ZarrLabelWriter(tmp_path / "s.zarr", (4, 8, 8)) as writer:
        for start, slab in [
            (3, np.zeros((2, 8, 8))),
            (0, np.zeros((1, 8, 9))),
            (0, np.zeros((8, 8))),
        ]:
            with pytest.raises(MedsegInputError, match="does not fit"):
                writer.write(start, slab)
        with pytest.raises(MedsegInputError, match="do not fit"):
            writer.write(0, np.full((1, 8, 8), 300))
        writer.write(0, np.full((4, 8, 8), 3.0))  # integral floats fit
    assert read_volume(tmp_path / "s.zarr").array.dtype == np.uint8


def test_a_chunk_cut_before_the_commit_check_is_caught(tmp_path, monkeypatch):
    target = write_zarr(tmp_path / "seg.zarr", np.ones((4, 8, 8), np.uint8), labels=True)
    before = tree(target)
    real_fsync = _atomic._fsync_file

    def cut_then_fsync(path: Path) -> None:
        if path.name == "0" and path.stat().st_size > 64:
            os.truncate(path, path.stat().st_size // 2)
        real_fsync(path)

    monkeypatch.setattr(_atomic, "_fsync_file", cut_then_fsync)
    monkeypatch.setattr(_atomic, "is_nearly_full", lambda folder: False)
    with pytest.raises(MedsegError, match=r"seg.zarr: the store written does not read back"):
        write_zarr(target, image((4, 8, 8)))
    monkeypatch.undo()
    assert siblings(tmp_path) == ["seg.zarr"] and tree(target) == before


def test_a_killed_writers_partial_store_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    left = tmp_path / ".seg.zarr.partial-abcd"
    left.mkdir()
    (left / ".medseg-writer").write_text(f"{os.uname().nodename} {dead.stdout.strip()}")
    alive = tmp_path / ".seg.zarr.partial-efgh"
    alive.mkdir()
    (alive / ".medseg-writer").write_text(f"{os.uname().nodename} {os.getpid()}")
    write_zarr(tmp_path / "seg.zarr", np.ones((2, 4, 4), np.uint8))
    assert siblings(tmp_path) == [".seg.zarr.partial-efgh", "seg.zarr"]


def test_an_oblique_reference_warns_that_the_direction_is_not_kept(tmp_path):
    flipped = Volume(image((3, 4, 5)), SPACING, ORIGIN, np.diag([1.0, -1.0, -1.0]))
    with pytest.warns(GeometryWarning, match="not the orientation"):
        write_volume(tmp_path / "x.zarr", flipped)


# ---- lazy and untrusted --------------------------------------------------------------------


def test_a_100_gb_store_opens_without_reading_or_allocating(tmp_path):
    path = tmp_path / "huge.zarr"
    array = zarr.create_array(
        str(path),
        shape=(2000, 4000, 4000),
        chunks=(64, 256, 256),
        dtype="uint16",
        zarr_format=2,
        fill_value=0,
    )
    array[64:128, 256:512, 512:768] = 7
    tracemalloc.start()
    try:
        lazy = open_zarr(path)
        plane = np.asarray(lazy.array[100, 250:260, 510:520])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lazy.shape == (2000, 4000, 4000) and lazy.dtype == np.uint16
    assert peak < 64 << 20
    assert plane[6:, 2:].min() == 7 and plane[:6].max() == 0
    with pytest.raises(UnsafeFileError, match=r"medseg predict") as refused:
        read_volume(path)
    assert "\n" not in str(refused.value)


def test_the_napari_reader_opens_a_huge_store_lazily(tmp_path):
    from napari_medseg._napari.reader import get_reader

    path = tmp_path / "huge.zarr"
    array = zarr.create_array(str(path), shape=(2000, 4000, 4000), chunks=(64, 256, 256),
                              dtype="uint16", zarr_format=2, fill_value=0)  # fmt: skip
    noise = np.random.default_rng(0).integers(0, 3000, size=(32, 256, 256)).astype(np.uint16)
    array[1000:1032, 1872:2128, 1872:2128] = noise  # where the reader samples: an image
    reader = get_reader(str(path))
    assert reader is not None
    tracemalloc.start()
    try:
        [(data, kwargs, layer_type)] = reader(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(data, da.Array) and data.shape == (2000, 4000, 4000)
    assert layer_type == "image" and kwargs["name"] == "huge" and not kwargs["multiscale"]
    assert kwargs["scale"] == (1.0, 1.0, 1.0) and peak < 256 << 20
    assert kwargs["contrast_limits"][1] > 2000


def one_line_error(path: Path, error=MedsegInputError, match: str = "") -> str:
    with pytest.raises(error, match=match) as raised:
        open_zarr(path)
    message = str(raised.value)
    assert "\n" not in message and path.name in message
    return message


def test_several_channels_are_refused_naming_the_axis(tmp_path):
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, *space("z", "y", "x")]
    path = ome_group(
        tmp_path / "c3.zarr",
        [np.zeros((1, 3, 2, 4, 4), np.uint8)],
        axes,
        [st((1, 1, 1, 1, 1), (0, 0, 0, 0, 0))],
    )
    assert "channel axis 'c' holds 3 values" in one_line_error(path)


def test_four_spatial_axes_and_plain_4d_arrays_are_refused(tmp_path):
    axes = space("w", "z", "y", "x")
    path = ome_group(
        tmp_path / "4d.zarr",
        [np.zeros((2, 2, 4, 4), np.uint8)],
        axes,
        [st((1, 1, 1, 1), (0, 0, 0, 0))],
    )
    assert "4 spatial axes" in one_line_error(path)
    plain = tmp_path / "plain4d.zarr"
    zarr.create_array(str(plain), shape=(3, 2, 4, 4), dtype="uint8", zarr_format=2)
    assert "4 dimensions" in one_line_error(plain)


def test_absurd_shapes_and_chunks_are_refused_from_the_metadata(tmp_path):
    path = tmp_path / "absurd.zarr"
    zarr.create_array(
        str(path), shape=(10**7, 10**7, 10**7), chunks=(64, 64, 64), dtype="uint8", zarr_format=2
    )
    assert "more than the limit" in one_line_error(path, UnsafeFileError)
    chunky = tmp_path / "chunky.zarr"
    zarr.create_array(
        str(chunky),
        shape=(4096, 4096, 4096),
        chunks=(2048, 2048, 2048),
        dtype="uint16",
        zarr_format=2,
    )
    assert "chunks of" in one_line_error(chunky, UnsafeFileError)
    assert LAZY_MAX_VOXELS >= 2000 * 4000 * 4000


def test_string_voxels_are_refused(tmp_path):
    path = tmp_path / "text.zarr"
    zarr.create_array(str(path), shape=(2, 3, 4), dtype="<U4", zarr_format=2)
    assert "is not a number" in one_line_error(path)


def test_dataset_paths_outside_the_store_are_refused(tmp_path):
    path = ome_group(
        tmp_path / "out.zarr",
        [np.zeros((2, 4, 4), np.uint8)],
        space("z", "y", "x"),
        [st((1, 1, 1), (0, 0, 0))],
    )
    attrs = json.loads((path / ".zattrs").read_text(encoding="utf-8"))
    attrs["multiscales"][0]["datasets"][0]["path"] = "../elsewhere"
    (path / ".zattrs").write_text(json.dumps(attrs), encoding="utf-8")
    assert "outside the store" in one_line_error(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifos_and_oversized_chunk_files_are_refused_before_reading(tmp_path):
    path = tmp_path / "trap.zarr"
    zarr.create_array(
        str(path), shape=(4, 8, 8), chunks=(2, 8, 8), dtype="uint8", zarr_format=2, compressors=None
    )[...] = 1
    os.unlink(path / "1.0.0")
    os.mkfifo(path / "1.0.0")
    lazy = open_zarr(path)  # only the metadata: fine
    np.testing.assert_array_equal(np.asarray(lazy.array[:2]), 1)
    with pytest.raises(UnsafeFileError, match="FIFO"):
        np.asarray(lazy.array[2:])
    os.unlink(path / "1.0.0")
    with open(path / "1.0.0", "wb") as handle:
        handle.truncate(1 << 30)  # sparse: a gigabyte claiming to be a 128-byte chunk
    with pytest.raises(UnsafeFileError, match="more than its chunk"):
        np.asarray(open_zarr(path).array)
    os.unlink(path / ".zarray")
    os.mkfifo(path / ".zarray")
    one_line_error(path, UnsafeFileError, "FIFO")


def test_not_a_store_and_missing_extra_give_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty.zarr").mkdir()
    assert "not a zarr store" in one_line_error(tmp_path / "empty.zarr")
    (tmp_path / "file.zarr").write_bytes(b"PK")
    assert "is a folder" in one_line_error(tmp_path / "file.zarr")
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(MedsegInputError, match=r"pip install 'napari-medseg\[zarr\]'"):
        open_zarr(tmp_path / "empty.zarr")


# ---- a real full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only), unmounted at teardown."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount")
    point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield point
    finally:
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_fails_in_one_line_and_keeps_the_previous_store(small_disk):
    target = write_zarr(small_disk / "seg.zarr", np.ones((4, 8, 8), np.uint8), labels=True)
    before = tree(target)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\xa5" * block)
        os.ftruncate(fd, max(0, os.fstat(fd).st_size - 16384))
    finally:
        os.close(fd)
    noise = image((16, 128, 128))  # 1 MB that hardly compresses
    with pytest.raises(MedsegError, match=r"could not save .*seg\.zarr: disk full$"):
        write_zarr(target, noise)
    assert siblings(small_disk) == ["filler", "seg.zarr"] and tree(target) == before
    filler.unlink()
    np.testing.assert_array_equal(read_volume(target).array, 1)
