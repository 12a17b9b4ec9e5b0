#!/usr/bin/env bash
# Set up napari-medseg on a fresh Debian/Ubuntu machine, in ./.venv (MEDSEG_VENV names another).
#   scripts/install.sh          the tool (CLI + napari GUI)
#   scripts/install.sh --test   the same plus what the checks need (pytest, pytest-qt, ruff, build)
# Installs the system libraries napari/Qt need and Xvfb, a CPU build of torch pinned first
# (an unpinned torch would pull a multi-GB CUDA build), a Qt binding, then the project in
# editable mode. The package itself pins no Qt binding (napari's plugin rule): this script
# installs PyQt5, the tested default; MEDSEG_QT picks another one:
#   MEDSEG_QT=PyQt6 scripts/install.sh      (or PySide6; MEDSEG_QT=none installs none)
set -euo pipefail
cd "$(dirname "$0")/.."

extras="gui"
[ "${1:-}" = "--test" ] && extras="test"
qt_binding="${MEDSEG_QT:-PyQt5}"
case "$qt_binding" in
  PyQt5 | PyQt6 | PySide6 | none) ;;
  *) echo "MEDSEG_QT=$qt_binding: use PyQt5, PyQt6, PySide6 or none" >&2; exit 2 ;;
esac

apt_packages=(libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 xvfb xauth)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
venv="${MEDSEG_VENV:-.venv}"
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: the CPU build (or whatever build of 2.13.0 the index offers).
torch_pin="torch==${MEDSEG_TORCH_VERSION:-2.13.0}"
"$venv/bin/python" -m pip install -q "$torch_pin"
if [ "$qt_binding" != none ]; then
  qt_spec="$qt_binding"
  [ "$qt_binding" = PyQt5 ] && qt_spec="PyQt5>=5.15"
  "$venv/bin/python" -m pip install -q "$qt_spec"
fi
# The pin goes in again so that no extra (torchvision via nnunetv2, say) can upgrade torch to a
# newer CUDA build.
"$venv/bin/python" -m pip install -q -e ".[${extras}]" "$torch_pin"
echo "napari-medseg installed in $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'), Qt: $qt_binding)"
