"""Inputs that are not regular files, and headers that the bytes present contradict.

Every special file here is real (``os.mkfifo``, a bound UNIX socket, ``/dev/zero``). Opening
a FIFO for reading blocks until someone writes to it, so each read runs in a thread with a
time limit: a regression fails the test (and the FIFO is then opened for writing to set
the thread free) instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_io import make_scan, write_dicom_series

from napari_medseg.errors import MedsegInputError
from napari_medseg.io import SUPPORTED_EXTENSIONS, list_dicom_series, read_volume, write_volume

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")

TIME_LIMIT = 10.0


def _set_free(fifos: list[Path]) -> None:
    """Open each FIFO for writing and close it: a reader blocked on it gets end-of-file."""
    for fifo in fifos:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def outcome(call: Callable[[], Any], fifos: list[Path]) -> BaseException | None:
    """Run ``call`` in a thread; its exception (None if it returned), failing if it blocks."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIME_LIMIT)
    if thread.is_alive():
        while thread.is_alive():
            _set_free(fifos)
            thread.join(0.1)
        pytest.fail(f"blocked for more than {TIME_LIMIT:.0f} s on a FIFO")
    return result[0]


def refused(call: Callable[[], Any], fifos: list[Path], *patterns: str) -> str:
    """``call`` raises a one-line MedsegInputError holding every pattern, promptly."""
    error = outcome(call, fifos)
    assert isinstance(error, MedsegInputError), repr(error)
    message = str(error)
    assert "\n" not in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    sockets: list[socket.socket] = []

    def make(name: str) -> Path:
        path = tmp_path / name
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        sockets.append(server)
        return path

    yield make
    for server in sockets:
        server.close()


# ---- the file itself ------------------------------------------------------------------


@pytest.mark.parametrize("ext", SUPPORTED_EXTENSIONS)
def test_fifo_of_every_extension_is_refused_promptly(tmp_path, ext):
    fifo = tmp_path / f"scan{ext}"
    os.mkfifo(fifo)
    refused(lambda: read_volume(fifo), [fifo], f"cannot read scan{ext}", "FIFO (named pipe)")


def test_socket_is_refused(unix_socket):
    path = unix_socket("scan.nii.gz")
    refused(lambda: read_volume(path), [], "scan.nii.gz", "a socket, not a regular file")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
@pytest.mark.parametrize("ext", [".nii", ".npy", ".tif"])
def test_link_to_a_device_is_refused(tmp_path, ext):
    link = tmp_path / f"scan{ext}"
    link.symlink_to("/dev/zero")
    refused(lambda: read_volume(link), [], f"scan{ext}", "a character device")


# ---- a header whose data file is special -------------------------------------------------


@pytest.mark.parametrize("ext, data", [(".nhdr", "scan.raw.gz"), (".mhd", "scan.raw")])
def test_header_whose_data_file_is_a_fifo_is_refused_promptly(tmp_path, ext, data):
    header = write_volume(tmp_path / f"scan{ext}", np.ones((4, 5, 6), np.uint8))
    (tmp_path / data).unlink()
    os.mkfifo(tmp_path / data)
    refused(lambda: read_volume(header), [tmp_path / data], f"its data file {data} is a FIFO")


def test_header_listing_a_fifo_among_its_data_files_is_refused(tmp_path):
    for k in range(3):
        (tmp_path / f"slice{k}.raw").write_bytes(bytes(30))
    os.mkfifo(tmp_path / "slice3.raw")
    names = "\n".join(f"slice{k}.raw" for k in range(4))
    header = tmp_path / "listed.nhdr"
    header.write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 6 5 4\nencoding: raw\n"
        f"data file: LIST\n{names}\n"
    )
    fifos = [tmp_path / "slice3.raw"]
    refused(lambda: read_volume(header), fifos, "its data file slice3.raw is a FIFO")


def test_header_numbering_a_socket_among_its_data_files_is_refused(tmp_path, unix_socket):
    for k in (1, 2):
        (tmp_path / f"slice{k:02d}.raw").write_bytes(bytes(30))
    unix_socket("slice03.raw")
    header = tmp_path / "numbered.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 6 5 3\nElementType = MET_UCHAR\n"
        "ElementDataFile = slice%02d.raw 1 3 1\n"
    )
    refused(lambda: read_volume(header), [], "its data file slice03.raw is a socket")


# ---- a DICOM folder holding a special entry -----------------------------------------------


def test_dicom_folder_holding_a_fifo_is_refused_not_read_short(tmp_path):
    """GDCM's scan silently dropped a real slice (4 of 5) when a FIFO lay in the folder."""
    folder = tmp_path / "series"
    files = write_dicom_series(folder, make_scan())
    assert read_volume(folder).shape[0] == len(files) == 5
    os.mkfifo(folder / "zz.dcm")
    fifos = [folder / "zz.dcm"]
    refused(lambda: read_volume(folder), fifos, "zz.dcm in it is a FIFO")
    refused(lambda: read_volume(files[0]), fifos, "zz.dcm in it is a FIFO")
    refused(lambda: list_dicom_series(folder), fifos, "zz.dcm in it is a FIFO")


def test_dicom_folder_holding_a_broken_link_is_refused(tmp_path):
    """GDCM found no series at all when a broken link lay in the folder."""
    folder = tmp_path / "series"
    write_dicom_series(folder, make_scan())
    (folder / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    refused(lambda: read_volume(folder), [], "gone.dcm in it is a broken link")


def test_dicom_folder_with_a_subfolder_and_other_files_is_still_read(tmp_path):
    folder = tmp_path / "series"
    write_dicom_series(folder, make_scan())
    (folder / "notes").mkdir()
    (folder / "README.txt").write_text("scanned on Monday")
    assert read_volume(folder).shape == (5, 6, 7)


# ---- header claims against the bytes present ----------------------------------------------


def _raw_nhdr(folder: Path, data_bytes: int) -> Path:
    (folder / "short.raw").write_bytes(bytes(range(data_bytes)))
    header = folder / "short.nhdr"
    header.write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 6 5 4\nencoding: raw\n"
        "data file: short.raw\n"
    )
    return header


def test_raw_data_file_shorter_than_declared_is_refused_with_the_reason(tmp_path):
    header = _raw_nhdr(tmp_path, 50)
    refused(
        lambda: read_volume(header), [], "data file short.raw is truncated", "50 bytes", "120"
    )
    header = _raw_nhdr(tmp_path, 120)
    assert read_volume(header).shape == (4, 5, 6)


@pytest.mark.parametrize("ext", [".mha", ".mhd", ".nii"])
def test_raw_payload_shorter_than_declared_is_refused_with_the_sizes(tmp_path, ext):
    target = write_volume(tmp_path / f"scan{ext}", np.ones((4, 5, 6), np.float32))
    data = tmp_path / ("scan.raw" if ext == ".mhd" else f"scan{ext}")
    os.truncate(data, data.stat().st_size - 8)
    refused(lambda: read_volume(target), [], "truncated or corrupt", "are declared")


def test_metaimage_header_size_is_taken_into_account(tmp_path):
    (tmp_path / "skip.raw").write_bytes(b"H" * 16 + bytes(120))
    header = tmp_path / "skip.mhd"
    header.write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 6 5 4\nElementType = MET_UCHAR\n"
        "HeaderSize = 16\nElementDataFile = skip.raw\n"
    )
    assert read_volume(header).array.sum() == 0
    os.truncate(tmp_path / "skip.raw", 16 + 100)
    refused(lambda: read_volume(header), [], "data file skip.raw is truncated")
