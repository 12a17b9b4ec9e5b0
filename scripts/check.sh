#!/usr/bin/env bash
# The project's checks, as CI runs them: lint, types, house rules, the sdist and wheel build
# (and twine's check of their metadata), then the test suite
# (under Xvfb: the GUI tests drive a real napari viewer). Run after scripts/install.sh --test.
#   scripts/check.sh              everything
#   scripts/check.sh tests/...    the same checks, pytest limited to the given paths
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check napari_medseg tests benchmarks scripts docs sample_data
.venv/bin/mypy
.venv/bin/python scripts/house_rules.py
dist_dir="$(mktemp -d)"
trap 'rm -rf "$dist_dir"' EXIT
if ! build_log="$(.venv/bin/python -m build --outdir "$dist_dir" . 2>&1)"; then
  echo "$build_log" >&2
  echo "check.sh: building the sdist and wheel failed" >&2
  exit 1
fi
if ! twine_log="$(.venv/bin/twine check --strict "$dist_dir"/* 2>&1)"; then
  echo "$twine_log" >&2
  exit 1
fi
xvfb-run -a .venv/bin/pytest -q "$@"
