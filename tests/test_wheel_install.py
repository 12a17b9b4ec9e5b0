"""The wheel as a user installs it: a fresh venv, torch, the wheel, ``medseg demo``.

Builds the wheel, creates a venv with ``python -m venv``, installs ``torch==2.13.0`` (the
version scripts/install.sh pins; ``MEDSEG_TORCH_VERSION`` overrides it) and then the wheel
without extras, and checks that

* no Qt binding got installed, and ``pip install "napari-medseg[gui]"`` would install none
  either (``pip install --dry-run --report``: napari's plugin rule, the user picks one);
* ``medseg demo --time-budget 3`` runs from that venv in a folder outside the checkout.

Slow (minutes) and needs the package index pip is configured with: torch's CPU build must be
reachable the way scripts/install.sh reaches it (PIP_FIND_LINKS, PIP_INDEX_URL or
``--extra-index-url https://download.pytorch.org/whl/cpu`` in pip's configuration), else pip
would fetch the multi-GB CUDA build. Run it alone with
``pytest -m slow tests/test_wheel_install.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QT_BINDINGS = {"pyqt5", "pyqt6", "pyside2", "pyside6"}
TORCH = f"torch=={os.environ.get('MEDSEG_TORCH_VERSION', '2.13.0')}"
#: Generous: installing torch unpacks several hundred MB.
INSTALL_TIMEOUT_S = 1800

pytest.importorskip("build")


def _run(args: list[str], cwd: Path, timeout: float = INSTALL_TIMEOUT_S) -> str:
    """Run a command outside the checkout's environment; returns stdout, fails on error."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8",
        errors="replace", timeout=timeout, check=False,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


class FreshVenv:
    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        self.wheel = wheel
        self.bin = root / ("Scripts" if os.name == "nt" else "bin")
        self.python = str(self.bin / "python")

    def pip(self, *args: str) -> str:
        return _run([self.python, "-m", "pip", *args], cwd=self.root.parent)

    def installed(self) -> set[str]:
        listing = json.loads(self.pip("list", "--format", "json"))
        return {_normalized(item["name"]) for item in listing}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    work = tmp_path_factory.mktemp("wheel-install")
    _run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(work / "dist"), str(ROOT)], work
    )
    [wheel] = (work / "dist").glob("napari_medseg-*.whl")
    _run([sys.executable, "-m", "venv", str(work / "venv")], work)
    fresh = FreshVenv(work / "venv", wheel)
    fresh.pip("install", "--quiet", "--upgrade", "pip")
    fresh.pip("install", "--quiet", TORCH)
    fresh.pip("install", "--quiet", str(wheel))
    return fresh


def test_the_wheel_installs_no_qt_binding(venv):
    installed = venv.installed()
    assert "napari-medseg" in installed and "torch" in installed
    assert not installed & QT_BINDINGS, sorted(installed & QT_BINDINGS)
    assert "napari" not in installed  # the core needs no GUI stack


def test_the_gui_extra_would_install_napari_but_no_qt_binding(venv):
    report = json.loads(
        venv.pip("install", "--dry-run", "--quiet", "--report", "-", f"{venv.wheel}[gui]")
    )
    to_install = {_normalized(item["metadata"]["name"]) for item in report["install"]}
    assert "napari" in to_install  # the extra really was resolved
    assert not to_install & QT_BINDINGS, sorted(to_install & QT_BINDINGS)


def test_medseg_demo_runs_from_the_fresh_venv(venv, tmp_path):
    where = _run(
        [venv.python, "-c", "import napari_medseg; print(napari_medseg.__file__)"], tmp_path
    )
    assert Path(where.strip()).resolve().is_relative_to(venv.root.resolve())  # not the checkout

    output = _run([str(venv.bin / "medseg"), "demo", "--time-budget", "3"], tmp_path, timeout=600)

    assert "Dice" in output and "mean Dice" in output
