#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, types, house rules, then the test suite
# (under Xvfb: the GUI tests drive a real napari viewer). Run after scripts/install.sh --test.
#   scripts/check.sh              everything
#   scripts/check.sh tests/...    the same checks, pytest limited to the given paths
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check napari_medseg tests benchmarks scripts docs sample_data
.venv/bin/mypy
.venv/bin/python scripts/house_rules.py
xvfb-run -a .venv/bin/pytest -q "$@"
