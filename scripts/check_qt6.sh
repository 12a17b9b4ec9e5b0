#!/usr/bin/env bash
# The GUI tests again under PyQt6 (napari is dropping PyQt5), in their own venv (.venv-qt6),
# so that the day PyQt5 goes costs nothing (tests/test_gui_qt_binding.py also checks that napari
# shows no PyQt5 deprecation notice there). Run after scripts/check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDSEG_QT=PyQt6 MEDSEG_VENV=.venv-qt6 scripts/install.sh --test
.venv-qt6/bin/python -c 'import qtpy, sys; sys.exit(qtpy.API_NAME != "PyQt6")'
xvfb-run -a .venv-qt6/bin/pytest -q -p no:cacheprovider tests/test_gui_*.py "$@"
