"""Hostile model files, crafted by hand: each is refused with one line, before any network
is built or memory allocated for it, by ``load_model`` and by ``medseg predict`` (exit 2)."""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from napari_medseg.checkpoint import (
    METADATA_KEY,
    ModelConfig,
    TrainedModel,
    load_model,
    read_model_config,
    save_model,
)
from napari_medseg.cli import main
from napari_medseg.errors import MedsegInputError
from napari_medseg.models import NetworkConfig, build_network
from napari_medseg.normalization import IntensityNormalization

DEEP = 100_000
Header = dict[str, Any]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A small, valid model file (2 classes, base 2, two pooling steps)."""
    torch.manual_seed(0)
    net_config = NetworkConfig(arch="unet3d", base_channels=2, n_classes=2,
                               pool_sizes=[(2, 2, 2)] * 2)
    config = ModelConfig(
        network=net_config,
        class_names=["background", "organ"],
        normalization=IntensityNormalization(0.0, 1.0, 0.5, 0.2),
        spacing=(1.0, 1.0, 1.0),
        patch_shape=(8, 8, 8),
    )
    model = TrainedModel(build_network(net_config), config)
    return save_model(tmp_path_factory.mktemp("good") / "good.safetensors", model)


def split(path: Path) -> tuple[Header, bytes]:
    """The header (as JSON) and the data bytes of a safetensors file."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def pack(header: Header | bytes, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file: 8-byte little-endian header length, JSON header, data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def config_of(header: Header) -> dict[str, Any]:
    return json.loads(header["__metadata__"][METADATA_KEY])


def with_config(header: Header, config: dict[str, Any] | str) -> Header:
    text = config if isinstance(config, str) else json.dumps(config)
    header["__metadata__"][METADATA_KEY] = text
    return header


def tensors(header: Header) -> list[str]:
    """Tensor names in file order."""
    names = [k for k in header if k != "__metadata__"]
    return sorted(names, key=lambda k: header[k]["data_offsets"][0])


def edit_config(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Header, bytes], bytes]:
    def make(header: Header, data: bytes) -> bytes:
        config = config_of(header)
        edit(config)
        return pack(with_config(header, config), data)

    return make


def edit_header(edit: Callable[[Header], Any]) -> Callable[[Header, bytes], bytes]:
    def make(header: Header, data: bytes) -> bytes:
        edit(header)
        return pack(header, data)

    return make


def edit_network(**values: Any) -> Callable[[Header, bytes], bytes]:
    return edit_config(lambda c: c["network"].update(values))


def setter(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.update({key: value})


def nested_header(header: Header, data: bytes) -> bytes:
    deep = b"[" * DEEP + b"]" * DEEP
    return pack(b'{"__metadata__": {"medseg_config": "{}"}, "x": ' + deep + b"}", data)


def nested_config(header: Header, data: bytes) -> bytes:
    text = json.dumps(config_of(header))[:-1] + ', "history": ' + "[" * DEEP + "]" * DEEP + "}"
    return pack(with_config(header, text), data)


def huge_number(header: Header, data: bytes) -> bytes:
    text = json.dumps(config_of(header)).replace('"spacing": [1.0', '"spacing": [' + "9" * 5000)
    return pack(with_config(header, text), data)


def million_names(header: Header, data: bytes) -> bytes:
    config = config_of(header)
    config["network"]["n_classes"] = 10**6
    config["class_names"] = [f"c{i}" for i in range(10**6)]
    return pack(with_config(header, config), data)


def offsets(which: int, value: Any) -> Callable[[Header, bytes], bytes]:
    return edit_header(lambda h: h[tensors(h)[which]].update(data_offsets=value))


def overlapping(header: Header) -> None:
    first, second = tensors(header)[:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]


def swap_shape(header: Header) -> None:
    name = next(k for k in tensors(header) if len(header[k]["shape"]) == 5)
    shape = header[name]["shape"]
    header[name]["shape"] = [shape[1], shape[0], *shape[2:]]  # same bytes, other shape


def first_tensor(**values: Any) -> Callable[[Header, bytes], bytes]:
    return edit_header(lambda h: h[tensors(h)[0]].update(values))


def first_weight(**values: Any) -> Callable[[Header, bytes], bytes]:
    """Edit the first convolution weight (float32, 5 dimensions)."""
    return edit_header(
        lambda h: h[next(k for k in tensors(h) if len(h[k]["shape"]) == 5)].update(values)
    )


def rename_tensor(header: Header) -> None:
    name = tensors(header)[0]
    header["renamed." + name] = header.pop(name)


def header_length(length: int) -> Callable[[Header, bytes], bytes]:
    return lambda header, data: pack(header, data, length)


HOSTILE: dict[str, Callable[[Header, bytes], bytes]] = {
    # the header itself
    "header nested 100000 deep": nested_header,
    "config nested 100000 deep": nested_config,
    "5000-digit number": huge_number,
    "header length larger than the file": lambda h, d: pack(h, d, len(pack(h, d))),
    "header length 2**63": header_length(2**63),
    "header length 0": header_length(0),
    "header not utf-8": lambda h, d: pack(b'{"\xff\xfe": 1}', d),
    "metadata a list": edit_header(lambda h: h.update(__metadata__=[METADATA_KEY])),
    "metadata a string": edit_header(lambda h: h.update(__metadata__=METADATA_KEY + "!")),
    "metadata value a number": edit_header(lambda h: h["__metadata__"].update(padding=5)),
    "medseg_config an object": edit_header(lambda h: h["__metadata__"].update({METADATA_KEY: {}})),
    "medseg_config a list": edit_header(lambda h: h["__metadata__"].update({METADATA_KEY: "[]"})),
    "medseg_config a number": edit_header(lambda h: h["__metadata__"].update({METADATA_KEY: "7"})),
    # the config's top-level fields, of the wrong JSON type
    "network a string": edit_config(setter("network", "unet3d")),
    "network a list": edit_config(setter("network", [])),
    "class_names a dict": edit_config(setter("class_names", {"background": 0, "organ": 1})),
    "class_names a string": edit_config(setter("class_names", "ab")),
    "class_names of numbers": edit_config(setter("class_names", ["background", 1])),
    "class name 10**6 long": edit_config(setter("class_names", ["background", "x" * 10**6])),
    "class name with a newline": edit_config(setter("class_names", ["background", "a\nb"])),
    "normalization a list": edit_config(setter("normalization", [0, 1, 0.5, 0.2])),
    "normalization as strings": edit_config(setter(
        "normalization", {"lower": "0", "upper": "1", "mean": "0.5", "std": "0.2"})),
    "normalization a boolean": edit_config(setter(
        "normalization", {"lower": 0, "upper": True, "mean": 0.5, "std": 0.2})),
    "spacing a string": edit_config(setter("spacing", "1,1,1")),
    "spacing as strings": edit_config(setter("spacing", ["1", "1", "1"])),
    "spacing of booleans": edit_config(setter("spacing", [True, True, True])),
    "spacing negative": edit_config(setter("spacing", [1.0, -1.0, 1.0])),
    "spacing of 2": edit_config(setter("spacing", [1.0, 1.0])),
    "patch_shape of booleans": edit_config(setter("patch_shape", [True, 8, 8])),
    "patch_shape fractional": edit_config(setter("patch_shape", [8.5, 8, 8])),
    "patch_shape as strings": edit_config(setter("patch_shape", ["8", "8", "8"])),
    "patch_shape 10**9": edit_config(setter("patch_shape", [10**9, 10**9, 10**9])),
    "planes a string": edit_config(setter("planes", "0")),
    "training a list": edit_config(setter("training", [1, 2])),
    "history a string": edit_config(setter("history", "x")),
    "format_version a string": edit_config(setter("format_version", "1")),
    "format_version a boolean": edit_config(setter("format_version", True)),
    "medseg_version a number": edit_config(setter("medseg_version", 5)),
    # the network's fields
    "in_channels a string": edit_network(in_channels="1"),
    "n_classes a float": edit_network(n_classes=2.0),
    "batch_norm a number": edit_network(batch_norm=1),
    "members a boolean": edit_network(members=True),
    "dropout a string": edit_network(dropout="0.1"),
    "pool_sizes a string": edit_network(pool_sizes="222"),
    "10**6 classes": edit_network(n_classes=10**6),
    "10**6 classes, all named": million_names,
    "10**6 base channels": edit_network(base_channels=10**6),
    "10**6 in_channels": edit_network(in_channels=10**6),
    "10**6 members": edit_network(members=10**6),
    "10**5 pooling steps": edit_network(pool_sizes=[[1, 1, 1]] * 10**5, kernel_sizes=None),
    "kernel 10**6": edit_network(pool_sizes=[[2, 2, 2]], kernel_sizes=[[10**6 + 1] * 3] * 2),
    "pool 10**6": edit_network(pool_sizes=[[10**6, 2, 2]] * 2),
    "base 256, 6 pooling steps": edit_network(base_channels=256, pool_sizes=[[1, 1, 1]] * 6),
    # the data offsets
    "offsets past the end": offsets(0, [0, 10**12]),
    "offsets negative": offsets(0, [-4, 0]),
    "offsets reversed": offsets(1, [64, 0]),
    "offsets overlapping": edit_header(overlapping),
    "offsets a string": offsets(0, "0,4"),
    "offsets of one": offsets(0, [0]),
    "offsets as floats": offsets(0, [0.0, 4.0]),
    "shape negative": first_tensor(shape=[-1]),
    "shape 2**40 x 2**40": first_tensor(shape=[2**40, 2**40]),
    "shape a string": first_tensor(shape="2"),
    "dtype unknown": first_tensor(dtype="X99"),
    "tensor entry a list": edit_header(lambda h: h.update({tensors(h)[0]: [0, 4]})),
    # tensors that are not the network's
    "tensor shape mismatch": edit_header(swap_shape),
    "tensor dtype mismatch": first_weight(dtype="I32"),  # same bytes, other dtype
    "tensor renamed": edit_header(rename_tensor),
}


def hostile_file(good: Path, folder: Path, case: str) -> Path:
    header, data = split(good)
    path = folder / "hostile.safetensors"
    path.write_bytes(HOSTILE[case](copy.deepcopy(header), data))
    return path


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message


def test_the_good_model_loads_and_so_does_its_repacked_copy(good, tmp_path):
    """Guard against vacuous refusals: the file every hostile one is made from loads, and
    so does it after ``split`` and ``pack`` with nothing edited."""
    assert load_model(good).config.class_names == ["background", "organ"]
    header, data = split(good)
    again = tmp_path / "again.safetensors"
    again.write_bytes(pack(header, data))
    assert load_model(again).config.to_dict() == read_model_config(good).to_dict()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_load_model_refuses_in_one_line(good, tmp_path, case):
    path = hostile_file(good, tmp_path, case)
    with pytest.raises(MedsegInputError) as refused:
        load_model(path)
    assert_one_line(str(refused.value))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_medseg_predict_exits_2_with_one_line(good, tmp_path, capsys, case):
    path = hostile_file(good, tmp_path, case)
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((8, 8, 8), np.float32))
    out = tmp_path / "seg.nii.gz"
    assert main(["predict", str(path), str(image), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert_one_line(err)
    assert err.startswith("medseg predict: error: ")
    assert not out.exists()


_PEAK = textwrap.dedent(
    """
    import resource, sys
    import torch
    from napari_medseg.checkpoint import load_model
    from napari_medseg.errors import MedsegInputError

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_model(sys.argv[1])
    except MedsegInputError as exc:
        print("refused:", exc)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("grew_kib", after - before)
    """
)


@pytest.mark.parametrize(
    "case", ["10**6 base channels", "10**6 classes, all named", "base 256, 6 pooling steps"]
)
def test_huge_configs_allocate_nothing(good, tmp_path, case):
    """Refused before a network is built: the process's peak memory barely moves."""
    path = hostile_file(good, tmp_path, case)
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:"), done.stdout
    grew_mib = int(lines[-1].split()[-1]) / 1024
    assert grew_mib < 200, f"{case}: peak memory grew by {grew_mib:.0f} MiB"


def test_legal_but_foreign_config_is_refused_before_building(good, tmp_path):
    """A valid 358M-parameter config over the small file's weights: refused by comparing the
    file's tensors with the network's, before the 1.4 GB network exists."""
    header, data = split(good)
    config = config_of(header)
    config["network"].update(base_channels=256, pool_sizes=None, kernel_sizes=None)
    path = tmp_path / "wide.safetensors"
    path.write_bytes(pack(with_config(header, config), data))
    assert read_model_config(path).network.base_channels == 256  # the config alone is fine
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused:") and "weights do not match" in lines[0]
    assert int(lines[-1].split()[-1]) / 1024 < 200, done.stdout
