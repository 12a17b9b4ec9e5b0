"""The GUI-free core never imports Qt, napari or magicgui.

Everything in ``napari_medseg`` except the Qt widgets (``napari_medseg._qt`` and below) is
the core: the command line, the Python API and the napari reader/writer/sample hooks run
without a GUI toolkit, and must not pull one in when imported. The modules are discovered
with :func:`pkgutil.walk_packages`, so a new module is covered without editing this file.
Each is imported in a fresh interpreter (this test process may already hold napari and Qt
from other tests).

``napari_medseg._napari`` is included: its hooks are called by napari but need nothing from
it at import time (the writer imports ``napari.utils.transforms`` inside the one function
that needs it, which only runs within napari).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import napari_medseg

#: Top-level modules of the GUI stack; none may appear in ``sys.modules`` after a core import.
GUI_MODULES = (
    "qtpy",
    "napari",
    "magicgui",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "superqt",
)
#: The Qt layer of this package: the core must not depend on it either.
QT_LAYER = "napari_medseg._qt"

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: imports the modules named in argv[1] (a JSON list) in turn and
# prints, per module, the GUI modules and the napari_medseg modules that its import added to
# sys.modules (or the import error). A GUI module loaded by one import masks the next ones,
# so the test re-checks every module after a first offender in an interpreter of its own.
PROBE = r"""
import importlib, json, sys, traceback

gui, qt_layer = json.loads(sys.argv[2]), sys.argv[3]

def forbidden():
    return sorted(
        name for name in sys.modules
        if name.split(".")[0] in gui or name == qt_layer or name.startswith(qt_layer + ".")
    )

report = {}
for module in json.loads(sys.argv[1]):
    before_forbidden = set(forbidden())
    before_ours = {name for name in sys.modules if name.startswith("napari_medseg")}
    try:
        importlib.import_module(module)
        error = None
    except BaseException:
        error = traceback.format_exc(limit=3)
    report[module] = {
        "error": error,
        "forbidden": sorted(set(forbidden()) - before_forbidden),
        "ours": sorted(
            name for name in sys.modules
            if name.startswith("napari_medseg") and name not in before_ours
        ),
    }
print(json.dumps(report))
"""


def core_modules() -> list[str]:
    """Every module of the package except the Qt layer, the package itself first."""
    names = [napari_medseg.__name__]
    for info in pkgutil.walk_packages(napari_medseg.__path__, prefix="napari_medseg."):
        if info.name == QT_LAYER or info.name.startswith(QT_LAYER + "."):
            continue
        names.append(info.name)
    return names


def probe(modules: list[str]) -> dict[str, dict]:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(GUI_MODULES), QT_LAYER],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_discovery_covers_the_core_and_skips_the_qt_layer():
    modules = core_modules()
    for expected in (
        "napari_medseg",
        "napari_medseg.training",
        "napari_medseg.inference",
        "napari_medseg.cli",
        "napari_medseg.models.unet3d",
        "napari_medseg._napari.reader",
        "napari_medseg._napari.writer",
        "napari_medseg._napari.sample",
    ):
        assert expected in modules
    assert not [name for name in modules if name.startswith(QT_LAYER)]


def test_no_core_module_imports_qt_napari_or_magicgui():
    modules = core_modules()
    report = probe(modules)
    dirty = [name for name in modules if report[name]["forbidden"] or report[name]["error"]]
    if dirty:
        # Everything imported after the first offender ran with GUI modules already loaded:
        # check each of those again on its own, so the message names every real offender.
        for name in modules[modules.index(dirty[0]) :]:
            report[name] = probe([name])[name]
    problems = []
    for name in modules:
        entry = report[name]
        if entry["error"]:
            problems.append(f"{name}: import failed:\n{entry['error']}")
        elif entry["forbidden"]:
            gui = sorted(
                {m.split(".")[0] for m in entry["forbidden"] if m.split(".")[0] in GUI_MODULES}
            )
            qt_layer = [m for m in entry["forbidden"] if m.startswith(QT_LAYER)]
            ours = [
                m for m in entry["ours"] if m not in (name, "napari_medseg") and m not in qt_layer
            ]
            via = f" (its import also loaded {', '.join(ours)})" if ours else ""
            problems.append(f"{name} imports {', '.join(gui + qt_layer)}{via}")
    assert not problems, "GUI-free core modules pull in the GUI:\n" + "\n".join(problems)
