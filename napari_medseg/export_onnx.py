"""A trained model as a portable ONNX file, checked with ONNX Runtime against torch.

The ONNX graph (:class:`ProbabilityGraph`) maps normalised intensities ``image``
``(N, C, D, H, W)`` float32 to class ``probabilities`` ``(N, K, D, H, W)`` float32: the
softmax of the network's logits, averaged over the networks of an ensemble inside the graph.
The batch and the three spatial sizes are dynamic: the graph pads its input (edge values,
centred) up to the multiple of the network's divisor that it needs and crops back, so any
size from 1 works. 2D networks read each ``D`` slice on its own.

What the graph leaves to its user (normalising intensities, tiling a volume, averaging the
planes a 2D network reads) is written into the file's ``metadata_props``:
``medseg_config`` (the model's JSON config, as in its ``.safetensors`` file) and
``medseg_onnx`` (the contract above as JSON: names, layout, normalisation, divisor, tiling).

Before the file is saved, :func:`~napari_medseg.onnx_check.compare_with_torch` predicts a
volume with ONNX Runtime and with torch through the project's tiling and compares them.
``onnx``, ``onnxruntime`` and ``onnxscript`` (the exporter's) are imported only when needed:
``pip install "napari-medseg[onnx]"``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._atomic import WriteCheckError, atomic_write
from .checkpoint import METADATA_KEY, load_model
from .errors import MedsegError, MedsegInputError
from .inference import PredictConfig, tile_shape_for
from .model import TrainedModel
from .models import Ensemble, is_int
from .models.blocks import PaddedNetwork, SliceWise2D
from .onnx_check import (
    INPUT_NAME,
    OUTPUT_NAME,
    UNBOUNDED,
    ExportCheck,
    check_volume,
    compare_with_torch,
    require,
)
from .options import option
from .outputs import check_inputs, check_outputs

__all__ = [
    "CONFIG_KEY",
    "CONTRACT_KEY",
    "ExportConfig",
    "ExportResult",
    "ProbabilityGraph",
    "export_onnx",
    "onnx_contract",
    "read_onnx_metadata",
]

PathLike = str | os.PathLike[str]
#: ``metadata_props`` keys: the model's JSON config, and the graph's contract (JSON).
CONFIG_KEY = METADATA_KEY
CONTRACT_KEY = "medseg_onnx"
#: Version of the contract written under :data:`CONTRACT_KEY`.
CONTRACT_VERSION = 1
#: Oldest opset the exporter writes (it cannot convert the padding to an older one).
MIN_OPSET = 18
#: A protobuf message (an ONNX file with its weights inside) is at most 2 GiB.
MAX_ONNX_BYTES = 2**31 - 2**26


@dataclass
class ExportConfig:
    """Settings of an ONNX export; ``medseg export-model``'s options are built from them."""

    opset: int | None = option(
        None, help=f"ONNX opset of the file ({MIN_OPSET} or newer)",
        none_text="the exporter's default", suggest=20, min=MIN_OPSET, metavar="N",
    )  # fmt: skip
    check: bool = option(
        True, help="predict a volume with ONNX Runtime and with torch and save the file only "
        "when their labels agree", negate=True, flag="no_check",
        flag_help="save the file without comparing ONNX Runtime with torch",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.opset is not None and (not is_int(self.opset) or self.opset < MIN_OPSET):
            raise MedsegInputError(
                f"opset must be {MIN_OPSET} or newer (the exporter's oldest), not {self.opset}"
            )


# ---- the graph ------------------------------------------------------------------------


class ProbabilityGraph(nn.Module):
    """What the ONNX file computes: class probabilities of a model's network(s).

    ``forward`` takes normalised intensities ``(N, C, D, H, W)`` of any sizes and returns
    ``(N, K, D, H, W)`` probabilities: each network's softmax, averaged over an ensemble's
    networks. Its padding (centred, to multiples of :attr:`divisor`, in the networks' pad
    mode) is written with sizes the exporter keeps symbolic.

    Parameters
    ----------
    network : nn.Module
        A network of :mod:`napari_medseg.models`, or an :class:`Ensemble` of them.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        members = list(network.members) if isinstance(network, Ensemble) else [network]
        if not all(isinstance(m, PaddedNetwork) for m in members):
            raise TypeError("ProbabilityGraph needs the networks of napari_medseg.models")
        first = cast(PaddedNetwork, members[0])
        self.members = nn.ModuleList(members)
        self.slicewise = isinstance(first, SliceWise2D)
        self.divisor = tuple(int(d) for d in first.divisor)
        self.pad_mode = str(first.pad_mode)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, K, D, H, W)`` of ``image`` ``(N, C, D, H, W)``."""
        n, c, d, h, w = image.shape
        x = image.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w) if self.slicewise else image
        padded, crop = self._padded(x)
        total: torch.Tensor | None = None
        for member in self.members:
            logits = cast(PaddedNetwork, member).forward_padded(padded)
            probabilities = torch.softmax(logits.float(), dim=1)
            total = probabilities if total is None else total + probabilities
        assert total is not None  # an ensemble has members
        mean = (total / len(self.members))[crop]
        if self.slicewise:
            mean = mean.reshape(n, d, mean.shape[1], h, w).permute(0, 2, 1, 3, 4)
        return mean

    def _padded(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """``x`` padded as :func:`~napari_medseg.models.blocks.pad_to_divisor` pads it (in
        prediction), and the index that crops the output back."""
        pads: list[int] = []
        crop = [slice(None), slice(None)]
        for size, divisor in zip(x.shape[2:], self.divisor):
            total = (size + divisor - 1) // divisor * divisor
            before = (total - size) // 2
            pads = [before, total - size - before, *pads]  # F.pad lists the last axis first
            crop.append(slice(before, before + size))
        return F.pad(x, pads, mode=self.pad_mode), tuple(crop)

    def volume_divisor(self) -> tuple[int, int, int]:
        """The divisor per ``(D, H, W)`` axis of the input (1 along ``D`` for 2D networks)."""
        d, h, w = (1, *self.divisor) if self.slicewise else self.divisor
        return (d, h, w)


def _onnx_proto(model: TrainedModel, opset: int | None) -> Any:
    """The ``onnx.ModelProto`` of ``model``'s :class:`ProbabilityGraph` (weights inside),
    with dynamic batch and spatial sizes and named output axes."""
    graph = ProbabilityGraph(model.network.to("cpu")).eval()
    divisor = graph.volume_divisor()
    # sizes that need padding, so that the padding is traced; never 1 (which torch.export
    # would fix as a constant)
    example = torch.zeros((2, model.config.network.in_channels, *(k + 3 for k in divisor)))
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    dims = {axis: torch.export.Dim(name, min=1) for axis, name in axes.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph, (example,), dynamo=True, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes={"image": dims},
                opset_version=opset, verbose=False,
            )  # fmt: skip
    except Exception as exc:  # the exporter raises many kinds; say it in one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise MedsegError(f"torch could not export the network to ONNX: {first}") from exc
    if program is None:  # pragma: no cover - only the TorchScript exporter returns None
        raise MedsegError("torch's ONNX exporter returned no program")
    proto = program.model_proto
    given = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [name for axis, name in axes.items() if not given[axis].dim_param]
    if fixed:  # the exporter may narrow dynamic sizes it cannot trace symbolically
        raise MedsegError(f"torch's ONNX exporter fixed the input's {', '.join(fixed)}")
    shape = proto.graph.output[0].type.tensor_type.shape
    for axis, name in axes.items():
        shape.dim[axis].dim_param = name
    return proto


def _opset_of(proto: Any) -> int:
    return int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


# ---- metadata ---------------------------------------------------------------------------


def onnx_contract(model: TrainedModel, divisor: Sequence[int]) -> dict[str, Any]:
    """What a user of the ONNX file needs besides the graph, as JSON-safe data."""
    config = model.config
    members = config.network.members
    norm = config.normalization
    tile = tile_shape_for(config.arch, config.patch_shape, (UNBOUNDED,) * 3)
    return {
        "version": CONTRACT_VERSION,
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "layout": "NCDHW",
            "channels": config.network.in_channels,
            "meaning": "intensities normalised as 'normalization' says",
        },
        "output": {
            "name": OUTPUT_NAME, "dtype": "float32", "layout": "NCDHW",
            "classes": config.n_classes, "class_names": list(config.class_names),
            "meaning": "class probabilities: the softmax of the logits"
            + (f", averaged over the ensemble's {members} networks" if members > 1 else "")
            + "; label = argmax over C (0 background, k structure k)",
        },
        "normalization": {
            **norm.to_dict(),
            "formula": "x = nan_to_num(x, nan=mean, posinf=upper, neginf=lower); "
            "x = (clip(x, lower, upper) - mean) / std",
        },
        "spacing_mm": list(config.spacing),
        "divisor": list(divisor),
        "padding": "the graph pads D, H, W (2D networks: H, W of each slice) with edge "
        "values, centred, to multiples of 'divisor' and crops back: any size from 1 works; "
        "multiples of 'divisor' skip the padding",
        "slicewise": config.arch != "unet3d",
        "tiling": {
            "tile_shape": list(tile), "overlap": PredictConfig().overlap,
            "tile_shape_meaning": "the default tile, each axis capped by the volume's size",
            "blending": "probabilities of overlapping tiles averaged with Gaussian weights "
            "centred on each tile (sigma = tile size / 8 per axis, at least 1e-3 of the peak)",
            "planes": list(config.planes) if config.arch != "unet3d" else [0],
            "planes_meaning": "one tiled pass per listed axis, that axis moved to D; the "
            "passes' probabilities averaged",
        },
    }  # fmt: skip


def _set_metadata(proto: Any, model: TrainedModel, divisor: Sequence[int]) -> None:
    """Write the model's config and the contract into ``proto.metadata_props``."""
    props = {
        CONFIG_KEY: json.dumps(model.config.to_dict(), sort_keys=True),
        CONTRACT_KEY: json.dumps(onnx_contract(model, divisor), sort_keys=True),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    names = ", ".join(model.config.class_names)
    proto.doc_string = (
        f"napari-medseg {model.config.arch} model: {INPUT_NAME} (N, C, D, H, W) normalised -> "
        f"{OUTPUT_NAME} (N, K, D, H, W) of classes {names}; see metadata {CONTRACT_KEY}"
    )


def read_onnx_metadata(path: PathLike) -> dict[str, Any]:
    """The JSON ``metadata_props`` of an ONNX file written by :func:`export_onnx`:
    ``{CONFIG_KEY: config dict, CONTRACT_KEY: contract dict}`` (weights are not read)."""
    onnx = require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        return {key: json.loads(props[key]) for key in (CONFIG_KEY, CONTRACT_KEY)}
    except Exception as exc:  # OSError, protobuf's DecodeError, KeyError, JSON's ValueError
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise MedsegInputError(
            f"{Path(path).name} is not an ONNX file of napari-medseg ({reason})"
        ) from None


# ---- export ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_onnx` wrote, and its check (``None`` when not asked for)."""

    path: Path
    arch: str
    members: int
    n_classes: int
    opset: int
    size_bytes: int
    check: ExportCheck | None

    def describe(self) -> str:
        """One line: the file, what it holds and what the check found."""
        arch = self.arch if self.members == 1 else f"{self.members} x {self.arch}"
        head = (
            f"saved {self.path}: {arch}, {self.n_classes} classes, opset {self.opset}, "
            f"{self.size_bytes / 1e6:.1f} MB"
        )
        tail = "not checked with ONNX Runtime" if self.check is None else self.check.describe()
        return f"{head}; {tail}"


def export_onnx(
    model_path: PathLike,
    out_path: PathLike,
    config: ExportConfig | None = None,
    *,
    check_image: PathLike | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a model file to ONNX, checked with ONNX Runtime before it is saved.

    Parameters
    ----------
    model_path : path-like
        A ``.safetensors`` model of napari-medseg.
    out_path : path-like
        The ``.onnx`` file to write (atomically: it appears only once checked).
    config : ExportConfig, optional
        Opset, and whether to check.
    check_image : path-like, optional
        A volume for the check; default
        :func:`~napari_medseg.onnx_check.check_volume`.
    on_progress : callable, optional
        Called with a few words as each stage starts.

    Returns
    -------
    ExportResult

    Raises
    ------
    MedsegInputError
        Missing extra, missing or invalid model, output that cannot be written, bad opset.
    MedsegError
        The export failed, or ONNX Runtime's labels differ from torch's (nothing is saved).
    """
    settings = config or ExportConfig()
    say = on_progress or (lambda _: None)
    onnx = require("onnx")
    require("onnxruntime")
    require("onnxscript")  # torch's exporter needs it; say so before the work
    if check_image is not None and not settings.check:
        raise MedsegInputError("a check image needs the check (it is turned off)")
    target = _checked_output(out_path, model_path, check_image)
    _check_opset(settings.opset, onnx)
    model = load_model(model_path)
    image = None if check_image is None else _read_check_image(check_image)
    say("exporting the network to ONNX")
    proto = _onnx_proto(model, settings.opset)
    _set_metadata(proto, model, ProbabilityGraph(model.network).volume_divisor())
    payload = _serialized(proto)
    checks: list[ExportCheck] = []

    def verify(tmp: Path) -> None:
        _check_file(onnx, tmp)
        if settings.check:
            say("predicting a volume with ONNX Runtime and with torch")
            volume = check_volume(model) if image is None else image
            checks.append(compare_with_torch(tmp, model, volume))
            if not checks[-1].passed:
                raise MedsegError(f"{checks[-1].describe()}; {target} not saved")

    with atomic_write(target, "wb", check=verify) as handle:
        handle.write(payload)
    return ExportResult(
        path=target, arch=model.config.arch, members=model.config.network.members,
        n_classes=model.config.n_classes, opset=_opset_of(proto), size_bytes=len(payload),
        check=checks[0] if checks else None,
    )  # fmt: skip


def _serialized(proto: Any) -> bytes:
    if proto.ByteSize() > MAX_ONNX_BYTES:
        raise MedsegError("the model is too large for one ONNX file (2 GiB at most)")
    return cast(bytes, proto.SerializeToString())


def _check_file(onnx: Any, tmp: Path) -> None:
    """The written file must load and pass ONNX's checker (shapes included)."""
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, DecodeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WriteCheckError(f"the file written fails ONNX's checker ({first})") from exc


def _check_opset(opset: int | None, onnx: Any) -> None:
    newest = int(onnx.defs.onnx_opset_version())
    if opset is not None and opset > newest:
        raise MedsegInputError(
            f"opset {opset} is newer than the installed onnx knows ({newest} at most)"
        )


def _checked_output(out_path: PathLike, model_path: PathLike, check_image: PathLike | None) -> Path:
    """Refuse, before any work, a missing input or an output that could not be written."""
    check_inputs([(model_path, "model file"), (check_image, "check image")])
    check_outputs([(out_path, "ONNX model", "onnx")], inputs=[(model_path, "model file")])
    return Path(out_path).expanduser()


def _read_check_image(path: PathLike) -> np.ndarray:
    from .io import read_volume

    array = np.asarray(read_volume(path).array)
    if array.ndim not in (2, 3):
        raise MedsegInputError(f"check image has {array.ndim} dimensions; 2D or 3D needed")
    return array
