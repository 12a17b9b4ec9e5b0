"""The wheel as shipped: plugin manifest, sample data with their notices, licence, metadata."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path
from unittest import mock

import pytest

import napari_medseg
from napari_medseg import device

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("build")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    outdir = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(outdir), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [path] = outdir.glob("napari_medseg-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower()


def _metadata(wheel: zipfile.ZipFile):
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode("utf-8"))


def test_wheel_ships_manifest_sample_data_and_notices(wheel):
    names = set(wheel.namelist())
    assert "napari_medseg/napari.yaml" in names
    shipped = {Path(n).name for n in names if n.startswith("napari_medseg/sample_data/")}
    on_disk = {p.name for p in (ROOT / "sample_data").iterdir() if p.suffix == ".nrrd"}
    assert on_disk and on_disk <= shipped
    assert "napari_medseg/sample_data/ATTRIBUTION.md" in names
    licences = {n.split(".dist-info/licenses/", 1)[1] for n in names if ".dist-info/licenses/" in n}
    assert {"LICENSE", "sample_data/ATTRIBUTION.md"} <= licences
    attribution = wheel.read("napari_medseg/sample_data/ATTRIBUTION.md").decode("utf-8")
    assert "BSD-3-Clause" in attribution and "CC BY" in attribution


def test_wheel_metadata(wheel):
    meta = _metadata(wheel)
    assert meta["Version"] == napari_medseg.__version__
    assert meta["License-Expression"] == "BSD-3-Clause"
    requires = meta.get_all("Requires-Dist") or []
    core = {_name(r) for r in requires if "extra ==" not in r}
    everything = {_name(r) for r in requires}
    assert not {n for n in everything if n.startswith(("pyqt", "pyside"))}, requires
    assert "psygnal" in everything
    assert "scikit-image" not in core


def test_auto_device_skips_mps_on_torch_without_conv_transpose_3d():
    with (
        mock.patch.object(device.torch.cuda, "is_available", return_value=False),
        mock.patch.object(device, "_mps_available", return_value=True),
    ):
        assert device.resolve_device("auto").type == (
            "mps" if device._mps_runs_3d_networks() else "cpu"
        )
        with (
            mock.patch.object(device.torch, "__version__", "2.7.1"),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            assert device.resolve_device("auto").type == "cpu"
        assert any("ConvTranspose3d" in str(w.message) for w in caught)
        with mock.patch.object(device.torch, "__version__", "2.8.0"):
            assert device.resolve_device("auto").type == "mps"
