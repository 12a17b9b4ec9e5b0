"""Choosing the torch device and the precision to compute in."""

from __future__ import annotations

import functools
import re
import warnings
from typing import Literal

import torch

from .errors import MedsegInputError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


#: The first torch whose MPS backend runs ``ConvTranspose3d`` (float32; pytorch PR #154696),
#: which the 3D U-Net's decoder needs. ``"auto"`` skips MPS on older torch.
MPS_CONV_TRANSPOSE_3D_TORCH = (2, 8)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _torch_version(version: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of ``version`` (default: the installed torch's)."""
    match = re.match(r"(\d+)\.(\d+)", str(torch.__version__ if version is None else version))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _mps_runs_3d_networks() -> bool:
    return _torch_version() >= MPS_CONV_TRANSPOSE_3D_TORCH


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a device name into a usable :class:`torch.device`.

    Parameters
    ----------
    name : {"auto", "cpu", "cuda", "mps"} or a torch device string such as ``"cuda:1"``
        ``"auto"`` picks CUDA, then Apple MPS, then the CPU. MPS is skipped (with a
        warning) on torch older than 2.8, whose MPS backend lacks ``ConvTranspose3d``.

    Raises
    ------
    MedsegInputError
        When the named device is not available on this machine.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            if _mps_runs_3d_networks():
                return torch.device("mps")
            warnings.warn(
                f"torch {torch.__version__} on Apple MPS lacks ConvTranspose3d (torch>=2.8 has "
                "it): using the CPU",
                RuntimeWarning,
                stacklevel=2,
            )
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MedsegInputError("device 'cuda' requested but no CUDA GPU is available")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise MedsegInputError("device 'mps' requested but Apple MPS is not available")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MedsegInputError(f"unknown device {name!r}: use auto, cpu, cuda or mps")


#: CPU flags of native bf16 arithmetic: AMX tiles (Intel Sapphire Rapids and later) and
#: AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake). Without either, torch emulates bf16
#: and it is slower than float32.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[-1].split())
    except OSError:
        return set()
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (:data:`NATIVE_BF16_FLAGS`).

    Elsewhere (most laptops' Intel parts, older AMD) bf16 is emulated and slower than
    float32, so it is never used there; ``/proc/cpuinfo`` is read, so other systems compute
    in float32.
    """
    return bool(NATIVE_BF16_FLAGS & _cpu_flags())


def autocast_dtype(
    device: torch.device, mixed_precision: bool = True, *, training: bool = False
) -> torch.dtype | None:
    """The autocast dtype to use on ``device`` (``None`` means plain float32).

    CUDA: bf16 (fp16 where bf16 is not supported), for training and prediction. A CPU with
    native bf16 (:func:`cpu_has_fast_bf16`): bf16 for prediction only; CPU training stays in
    float32 (why: docs/DEFAULTS.md).

    Parameters
    ----------
    device : torch.device
        Where the network runs.
    mixed_precision : bool
        ``False``: float32 everywhere.
    training : bool
        For a training step (or anything that updates batch-norm statistics).
    """
    if not mixed_precision:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and not training and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def memory_format_for(network: torch.nn.Module) -> torch.memory_format:
    """The memory layout to run ``network`` in: channels-last for 3D convolutions.

    oneDNN (CPU) and cuDNN run 3D convolutions faster with channels last: about 35 % less
    time per 3D U-Net training step on a CPU with ``(3, 3, 3)`` kernels, and no change with
    ``(1, 3, 3)`` kernels. 2D networks here fold slices into the batch, which would undo a
    channels-last layout, so they keep the default one.
    """
    if any(isinstance(m, torch.nn.Conv3d) for m in network.modules()):
        return torch.channels_last_3d
    return torch.contiguous_format


def place(
    network: torch.nn.Module,
    device: torch.device | str | None,
    memory_format: torch.memory_format,
) -> torch.nn.Module:
    """Move ``network`` to ``device`` (``None``: where it is) in ``memory_format``.

    torch's type stubs leave out ``Module.to``'s documented ``memory_format``; this is the one
    place that says so.
    """
    if device is None:
        return network.to(memory_format=memory_format)  # type: ignore[call-overload,no-any-return]
    return network.to(device, memory_format=memory_format)  # type: ignore[call-overload,no-any-return]


def release_device(device: torch.device) -> None:
    """Give the memory cached on ``device`` back once work there has ended (CUDA only: the
    other devices keep no cache to return)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
