"""Segmentation networks (torch.nn only, GUI-free) and their JSON-safe configuration.

All networks take ``(N, C, D, H, W)`` float input and return logits
``(N, n_classes, D, H, W)`` of exactly the input's spatial size, for any input size.

>>> cfg = NetworkConfig(arch="unet3d", n_classes=3)
>>> net = build_network(cfg)
>>> NetworkConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, TypedDict, get_args

from torch import nn

from ..annotation import MAX_CLASSES
from ..errors import MedsegInputError
from .blocks import Triple
from .ensemble import Ensemble
from .fcn import FCN2D
from .unet2d import UNet2D
from .unet3d import UNet3D, resolve_pools_kernels

#: The networks: the 3D U-Net, a 2D U-Net and a 2D FCN-8s (both applied slice by slice).
Arch = Literal["unet3d", "unet2d", "fcn"]
ARCHS: tuple[str, ...] = get_args(Arch)
#: Most networks one ensemble may hold.
MAX_MEMBERS = 10
#: Bounds of a network's sizes: a model file's config must not make us build a huge one.
MAX_IN_CHANNELS = 16
MAX_BASE_CHANNELS = 256
MAX_POOL_STEPS = 6
MAX_POOL = 8
MAX_KERNEL = 7
#: Most channels of the 3D U-Net's coarsest level (``base_channels * 2**steps``).
MAX_WIDTH = 4096
#: Largest training patch along one axis (voxels), in a config and in a model file.
MAX_PATCH_SIZE = 4096

#: Integer fields: (lowest, highest).
_INT_BOUNDS = {
    "in_channels": (1, MAX_IN_CHANNELS),
    "n_classes": (2, MAX_CLASSES),
    "base_channels": (1, MAX_BASE_CHANNELS),
    "members": (1, MAX_MEMBERS),
    "norm_groups": (0, 64),
}


def brief_repr(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages about foreign input."""
    if isinstance(value, (list, tuple, dict)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)}>"  # no repr of a huge container
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_int(value: object) -> bool:
    """A JSON integer: an ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _triples(value: Any, name: str, odd: bool) -> list[Triple] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of 3-tuples, got {brief_repr(value)}")
    if len(value) > MAX_POOL_STEPS + 1:
        raise ValueError(f"{name} has {len(value)} entries; at most {MAX_POOL_STEPS + 1}")
    top = MAX_KERNEL if odd else MAX_POOL
    out: list[Triple] = []
    for item in value:
        if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != 3:
            raise ValueError(f"{name} entries must be 3 ints, got {brief_repr(item)}")
        if not all(is_int(v) and 1 <= v <= top for v in item):
            raise ValueError(f"{name} entries must be ints from 1 to {top}, got {brief_repr(item)}")
        if odd and any(v % 2 == 0 for v in item):
            raise ValueError(f"{name} entries must be odd ('same' padding), got {item!r}")
        out.append((int(item[0]), int(item[1]), int(item[2])))
    if not out:
        raise ValueError(f"{name} must not be empty (use None for the default)")
    return out


@dataclass
class NetworkConfig:
    """Everything needed to rebuild a network; stored as JSON next to the weights.

    Parameters
    ----------
    arch : str
        ``"unet3d"`` (Çiçek et al. 2016), ``"unet2d"`` (Ronneberger et al. 2015, slice-wise)
        or ``"fcn"`` (Long et al. 2015 FCN-8s, slice-wise).
    in_channels : int
        Image channels.
    n_classes : int
        Output classes, background included.
    base_channels : int
        Width of the first level (doubling per level).
    batch_norm : bool
        Batch norm after every convolution.
    norm_groups : int
        With ``batch_norm``: group norm with this many groups (per patch) instead of batch
        norm; 0 (the default, and in files written before it existed) keeps batch norm.
    pool_sizes : list of 3-tuples, optional
        ``unet3d`` only: max-pool size per down-sampling step (default ``(2, 2, 2)`` x 3).
    kernel_sizes : list of 3-tuples, optional
        ``unet3d`` only: odd conv kernel per level, ``len(pool_sizes) + 1`` entries
        (default ``(3, 3, 3)``).
    dropout : float
        Channel-dropout probability at the coarsest level, in ``[0, 1)``.
    members : int
        Networks of this configuration trained independently and applied as one
        (:class:`~napari_medseg.models.ensemble.Ensemble`); 1 is a single network.

    Raises
    ------
    ValueError
        On construction, for an unknown arch or malformed values (including
        ``pool_sizes`` / ``kernel_sizes`` given for a 2D arch).
    """

    arch: str = "unet3d"
    in_channels: int = 1
    n_classes: int = 2
    base_channels: int = 16
    batch_norm: bool = True
    norm_groups: int = 0
    pool_sizes: list[Triple] | None = None
    kernel_sizes: list[Triple] | None = None
    dropout: float = 0.0
    members: int = 1

    def __post_init__(self) -> None:
        """Check every field's type and bounds (before anything is built from them)."""
        if not isinstance(self.arch, str) or self.arch not in ARCHS:
            raise MedsegInputError(
                f"unknown network arch {brief_repr(self.arch)}; expected one of {', '.join(ARCHS)}"
            )
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if not is_int(value) or not low <= value <= high:
                raise ValueError(
                    f"{name} must be an int from {low} to {high}, got {brief_repr(value)}"
                )
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"batch_norm must be a bool, got {brief_repr(self.batch_norm)}")
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= float(self.dropout) < 1.0
        ):
            raise ValueError(f"dropout must be a number in [0, 1), got {brief_repr(self.dropout)}")
        self.dropout = float(self.dropout)
        self.pool_sizes = _triples(self.pool_sizes, "pool_sizes", odd=False)
        self.kernel_sizes = _triples(self.kernel_sizes, "kernel_sizes", odd=True)
        if self.arch != "unet3d" and (self.pool_sizes is not None or self.kernel_sizes is not None):
            raise ValueError(
                f"pool_sizes / kernel_sizes apply to unet3d only; leave them None for {self.arch}"
            )
        if self.arch == "unet3d":
            pools, _ = resolve_pools_kernels(self.pool_sizes, self.kernel_sizes)  # the lengths
            if len(pools) > MAX_POOL_STEPS or self.base_channels << len(pools) > MAX_WIDTH:
                raise ValueError(
                    f"{len(pools)} pooling steps from {self.base_channels} channels: at most "
                    f"{MAX_POOL_STEPS} steps and {MAX_WIDTH} channels at the coarsest level"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        data = asdict(self)
        for key in ("pool_sizes", "kernel_sizes"):
            if data[key] is not None:
                data[key] = [list(t) for t in data[key]]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        """Rebuild from :meth:`to_dict` output; missing keys take their defaults.

        Raises
        ------
        MedsegInputError
            (a ``ValueError``) for keys this version does not know, an unknown arch, or
            malformed values: a configuration written by another version.
        """
        if not isinstance(data, Mapping):
            raise MedsegInputError(f"network config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            shown = ", ".join(brief_repr(k)[1:-1] for k in unknown[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            raise MedsegInputError(
                f"network config has unknown key(s) {shown}{more}: "
                "written by another version of napari-medseg?"
            )
        try:
            return cls(**dict(data))
        except MedsegInputError:
            raise
        except (TypeError, ValueError) as exc:
            raise MedsegInputError(f"invalid network config: {exc}") from exc


class _NetworkArgs(TypedDict):
    """Constructor arguments shared by every architecture."""

    in_channels: int
    n_classes: int
    base_channels: int
    batch_norm: bool
    norm_groups: int
    dropout: float


def build_network(cfg: NetworkConfig) -> nn.Module:
    """Build the (Kaiming-initialised) network that ``cfg`` describes.

    Parameters
    ----------
    cfg : NetworkConfig
        Architecture and hyper-parameters.

    Returns
    -------
    torch.nn.Module
        Maps ``(N, in_channels, D, H, W)`` to logits ``(N, n_classes, D, H, W)`` (an
        :class:`Ensemble` when ``cfg.members > 1``: log mean probabilities). It has a
        ``divisor`` attribute: the multiple its padded input needs per axis
        (2D networks: ``(H, W)`` only; see :func:`planning.required_divisor`).
    """
    if cfg.members > 1:
        single = replace(cfg, members=1)
        return Ensemble([build_network(single) for _ in range(cfg.members)])
    common = _NetworkArgs(
        in_channels=cfg.in_channels,
        n_classes=cfg.n_classes,
        base_channels=cfg.base_channels,
        batch_norm=cfg.batch_norm,
        norm_groups=cfg.norm_groups,
        dropout=cfg.dropout,
    )
    if cfg.arch == "unet3d":
        return UNet3D(pool_sizes=cfg.pool_sizes, kernel_sizes=cfg.kernel_sizes, **common)
    if cfg.arch == "unet2d":
        return UNet2D(**common)
    if cfg.arch == "fcn":
        return FCN2D(**common)
    raise MedsegInputError(f"unknown network arch {cfg.arch!r}")  # pragma: no cover


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(math.prod(p.shape) for p in module.parameters() if p.requires_grad))


__all__ = [
    "ARCHS",
    "Arch",
    "FCN2D",
    "Ensemble",
    "MAX_BASE_CHANNELS",
    "MAX_IN_CHANNELS",
    "MAX_KERNEL",
    "MAX_MEMBERS",
    "MAX_POOL",
    "MAX_POOL_STEPS",
    "MAX_WIDTH",
    "NetworkConfig",
    "UNet2D",
    "UNet3D",
    "brief_repr",
    "build_network",
    "count_parameters",
    "is_int",
]
