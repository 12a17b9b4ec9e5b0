"""Model files: safe loading (no pickle, ever), clear errors for damaged or foreign files."""

from __future__ import annotations

import _pickle
import errno
import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from napari_medseg._atomic import TEMP_PREFIX
from napari_medseg.checkpoint import (
    METADATA_KEY,
    TrainedModel,
    load_model,
    read_model_config,
    save_model,
)
from napari_medseg.errors import MedsegError, MedsegInputError, UnsafeFileError
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.training import TrainConfig, train

SHAPE = (8, 16, 16)


def tiny_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE, np.uint8)
    truth[2:6, 4:12, 4:12] = 1
    image = (truth * 2.0 + rng.normal(0, 0.3, SHAPE)).astype(np.float32)
    annotation = np.zeros(SHAPE, np.uint8)
    annotation[4] = truth[4] + 1
    return image, annotation


@pytest.fixture(scope="module")
def model() -> TrainedModel:
    torch.set_num_threads(1)
    image, annotation = tiny_case()
    config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu", seed=0)
    return run_to_completion(train(image, annotation, config, class_names=["cube"]))


@pytest.fixture
def saved(model, tmp_path) -> Path:
    return save_model(tmp_path / "model.safetensors", model)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


def rewrite_config(path: Path, edit) -> None:
    """Rewrite a saved model with ``edit(config_dict)`` applied to its JSON config."""
    with safe_open(str(path), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = dict(handle.metadata())
    config = json.loads(metadata[METADATA_KEY])
    edit(config)
    metadata[METADATA_KEY] = json.dumps(config)
    save_file(tensors, str(path), metadata=metadata)


# ---- a good model --------------------------------------------------------------------


def test_save_and_load_round_trip(model, saved, tmp_path):
    loaded = load_model(saved)
    assert loaded.config.to_dict() == model.config.to_dict()
    assert loaded.config.class_names == ["background", "cube"]
    for (name, a), b in zip(
        model.network.state_dict().items(), loaded.network.state_dict().values()
    ):
        assert torch.equal(a, b), name
    assert not loaded.network.training
    assert read_model_config(saved).to_dict() == model.config.to_dict()
    assert leftovers(tmp_path) == []
    image, _ = tiny_case()
    labels = predict_volume(loaded, image, PredictConfig(device="cpu")).labels
    assert labels.shape == SHAPE


# ---- pickle payloads -----------------------------------------------------------------


class Exploit:
    """Unpickling this creates a marker file: proves whether pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_files(folder: Path, marker: Path) -> dict[str, Path]:
    payload = {"weight": torch.zeros(2), "payload": Exploit(marker)}
    files = {}
    for name in ("model.safetensors", "model.pt"):
        files[f"torch.save zip {name}"] = folder / f"zip-{name}"
        torch.save(payload, files[f"torch.save zip {name}"])
        files[f"torch.save legacy {name}"] = folder / f"legacy-{name}"
        torch.save(
            payload, files[f"torch.save legacy {name}"], _use_new_zipfile_serialization=False
        )
    for protocol in (0, 2, 5):
        files[f"raw pickle protocol {protocol}"] = folder / f"p{protocol}.safetensors"
        files[f"raw pickle protocol {protocol}"].write_bytes(
            pickle.dumps(payload, protocol=protocol)
        )
    return files


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail loudly if anything tries to unpickle (e.g. a fallback to torch.load)."""
    calls = []

    def spy(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called on an untrusted model file")

        return refuse

    monkeypatch.setattr(torch, "load", spy("torch.load"))
    for name in ("load", "_load", "_legacy_load"):
        if hasattr(torch.serialization, name):
            monkeypatch.setattr(torch.serialization, name, spy(f"torch.serialization.{name}"))
    for name in ("load", "loads", "Unpickler", "_load", "_loads", "_Unpickler"):
        if hasattr(pickle, name):
            monkeypatch.setattr(pickle, name, spy(f"pickle.{name}"))
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(_pickle, name, spy(f"_pickle.{name}"))
    monkeypatch.setattr(np, "load", spy("np.load"))
    return calls


def test_pickle_payload_model_is_refused_and_never_runs(tmp_path, no_unpickling):
    marker = tmp_path / "pwned"
    files = _pickle_files(tmp_path, marker)
    for what, path in files.items():
        with pytest.raises(MedsegInputError) as refused:
            load_model(path)
        message = str(refused.value)
        assert "\n" not in message, what
        if what.startswith("torch.save") or what.endswith(("2", "5")):
            assert isinstance(refused.value, UnsafeFileError), what
            assert "pickle" in message and "safetensors" in message, what
        else:  # protocol 0 has no magic number: it is simply not a model file
            assert "not a napari-medseg model" in message, what
        with pytest.raises(MedsegInputError):
            read_model_config(path)
    assert not marker.exists()
    assert no_unpickling == []  # nothing retried an unsafe load


def test_the_pickle_payload_is_real(tmp_path):
    """Guard against a vacuous test: unpickling the same file does run the payload."""
    marker = tmp_path / "pwned"
    path = _pickle_files(tmp_path, marker)["torch.save zip model.pt"]
    torch.load(path, weights_only=False)
    assert marker.exists()


# ---- wrong or foreign configs --------------------------------------------------------


def test_config_with_other_base_channels_is_a_clear_error(saved):
    def wider(config):
        config["network"]["base_channels"] = 8

    rewrite_config(saved, wider)
    with pytest.raises(MedsegInputError, match="weights do not match the network in its config"):
        load_model(saved)


def test_config_with_other_class_count_is_a_clear_error(saved):
    def more_outputs(config):
        config["network"]["n_classes"] = 3

    def more_classes(config):
        more_outputs(config)
        config["class_names"] = ["background", "a", "b"]

    rewrite_config(saved, more_outputs)
    with pytest.raises(MedsegInputError, match="names 2 classes but its network has 3 outputs"):
        load_model(saved)
    rewrite_config(saved, more_classes)  # consistent config, but not these weights
    with pytest.raises(MedsegInputError, match="weights do not match"):
        load_model(saved)


def test_config_from_another_format_version_is_refused(saved):
    rewrite_config(saved, lambda c: c.update(format_version=99))
    with pytest.raises(MedsegInputError, match="format version 99 is not supported"):
        load_model(saved)
    with pytest.raises(MedsegInputError, match="format version 99"):
        read_model_config(saved)


def test_config_with_unknown_network_key_is_refused(saved):
    rewrite_config(saved, lambda c: c["network"].update(attention_heads=8))
    with pytest.raises(MedsegInputError, match="unknown key.*attention_heads.*another version"):
        load_model(saved)


def test_config_with_unknown_architecture_is_refused(saved):
    rewrite_config(saved, lambda c: c["network"].update(arch="transformer"))
    with pytest.raises(MedsegInputError, match="unknown network arch 'transformer'"):
        load_model(saved)


@pytest.mark.parametrize("field", ["network", "class_names", "normalization", "patch_shape"])
def test_config_missing_a_field_is_refused(saved, field):
    rewrite_config(saved, lambda c: c.pop(field))
    with pytest.raises(MedsegInputError, match="model config is incomplete or invalid"):
        load_model(saved)


def test_config_that_is_not_json_is_refused(saved):
    with safe_open(str(saved), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(saved), metadata={METADATA_KEY: "{not json"})
    with pytest.raises(MedsegInputError, match="not valid JSON"):
        load_model(saved)


def test_config_whose_classes_disagree_with_the_network_is_refused(saved):
    """Three class names but a two-class network would fail later, inside prediction."""
    rewrite_config(saved, lambda c: c.update(class_names=["background", "a", "b"]))
    with pytest.raises(MedsegInputError, match="class"):
        load_model(saved)


@pytest.mark.parametrize("std", [0.0, -1.0, float("nan")])
def test_config_with_impossible_normalization_is_refused(saved, std):
    rewrite_config(saved, lambda c: c["normalization"].update(std=std))
    with pytest.raises(MedsegInputError, match="normali"):
        load_model(saved)


def test_weights_missing_or_extra_are_a_clear_error(saved, tmp_path):
    with safe_open(str(saved), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = dict(handle.metadata())
    fewer = dict(tensors)
    fewer.pop(sorted(fewer)[0])
    save_file(fewer, str(tmp_path / "fewer.safetensors"), metadata=metadata)
    with pytest.raises(MedsegInputError, match="weights do not match"):
        load_model(tmp_path / "fewer.safetensors")
    save_file(
        {**tensors, "extra.weight": torch.zeros(3)},
        str(tmp_path / "more.safetensors"),
        metadata=metadata,
    )
    with pytest.raises(MedsegInputError, match="weights do not match"):
        load_model(tmp_path / "more.safetensors")


# ---- damaged and foreign files -------------------------------------------------------


@pytest.mark.parametrize("keep", ["0", "4", "8", "header/2", "data/2", "all-1"])
def test_truncated_model_file_is_a_clear_error(saved, keep):
    data = saved.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    size = {
        "0": 0,
        "4": 4,
        "8": 8,
        "header/2": 8 + header_len // 2,
        "data/2": 8 + header_len + (len(data) - 8 - header_len) // 2,
        "all-1": len(data) - 1,
    }[keep]
    saved.write_bytes(data[:size])
    with pytest.raises(MedsegInputError) as refused:
        load_model(saved)
    assert "\n" not in str(refused.value) and saved.name in str(refused.value)


def test_safetensors_file_without_our_metadata_is_refused(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(MedsegInputError, match="without a napari-medseg config"):
        load_model(plain)
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(MedsegInputError, match="without a napari-medseg config"):
        load_model(other)


def test_header_pointing_outside_the_file_is_refused(saved):
    data = bytearray(saved.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(bytes(data[8 : 8 + header_len]))
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"] = [0, 10**12]
    raw = json.dumps(header).encode()
    saved.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data[8 + header_len :]))
    with pytest.raises(UnsafeFileError, match="points outside the file"):
        load_model(saved)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"\xff" * 64, b"not a model at all, just text\n" * 10, b"{}" + b"\x00" * 20],
)
def test_garbage_model_files_are_refused(tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    with pytest.raises(MedsegInputError, match="garbage.safetensors"):
        load_model(path)


def test_missing_model_file_or_folder(tmp_path):
    with pytest.raises(MedsegInputError, match="model file not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(MedsegInputError, match="model file not found"):
        load_model(tmp_path)


# ---- faults while saving -------------------------------------------------------------


class _DiskFullAfter:
    """File wrapper whose writes fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, handle: io.IOBase, budget: int) -> None:
        self._handle = handle
        self._budget = budget

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self._budget:
            self._handle.write(bytes(memoryview(data).cast("B")[: self._budget]))
            self._budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._budget -= size
        return self._handle.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


def _raise_disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
def test_disk_full_while_saving_a_model_keeps_the_previous_one(model, saved, monkeypatch, where):
    previous = saved.read_bytes()
    other = TrainedModel(model.network, model.config)
    other_config = other.config.to_dict()
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(
            os, "fdopen", lambda fd, *a, **k: _DiskFullAfter(real_fdopen(fd, *a, **k), 4096)
        )
    else:
        monkeypatch.setattr(os, where, _raise_disk_full)
    with pytest.raises(MedsegError, match="could not save .*model.safetensors: disk full"):
        save_model(saved, other)
    monkeypatch.undo()
    assert saved.read_bytes() == previous
    assert leftovers(saved.parent) == []
    assert load_model(saved).config.to_dict() == other_config
    save_model(saved, other)  # and saving works again


def test_save_into_a_missing_folder_is_a_clear_error(model, tmp_path):
    with pytest.raises(MedsegError, match="does not exist"):
        save_model(tmp_path / "no" / "such" / "model.safetensors", model)


def test_a_model_saves_loads_and_predicts_identically_with_unpickling_forbidden(
    model, tmp_path, no_unpickling
):
    """Every pickle loader raises: saving and loading still work, so neither needs one."""
    path = save_model(tmp_path / "model.safetensors", model)
    loaded = load_model(path)
    for (name, a), b in zip(
        model.network.state_dict().items(), loaded.network.state_dict().values()
    ):
        assert torch.equal(a, b), name
    image, _ = tiny_case()
    config = PredictConfig(device="cpu", probabilities=True, mixed_precision=False)
    expected = predict_volume(model, image, config)
    got = predict_volume(loaded, image, config)
    assert np.array_equal(got.labels, expected.labels)
    assert np.array_equal(got.probabilities, expected.probabilities)
    assert no_unpickling == []


def test_a_torch_saved_state_dict_named_safetensors_is_refused_unopened(
    model, tmp_path, monkeypatch, no_unpickling
):
    """``torch.save`` bytes behind a ``.safetensors`` name: refused, and nothing unpickled."""
    marker = tmp_path / "unpickled"
    state = dict(model.network.state_dict())
    state["payload"] = Exploit(marker)
    path = tmp_path / "model.safetensors"
    torch.save(state, path)
    with pytest.raises(UnsafeFileError, match="pickle"):
        load_model(path)
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_model_config(path)
    assert not marker.exists()
    assert no_unpickling == []
    # The same bytes, unpickled on purpose, do run the payload (torch.load dispatches on the
    # name, so under a .pt name).
    monkeypatch.undo()
    torch.load(path.rename(path.with_suffix(".pt")), weights_only=False)
    assert marker.exists()


def test_model_trained_without_class_names_calls_class_0_background(tmp_path):
    image, annotation = tiny_case()
    config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu")
    unnamed = run_to_completion(train(image, annotation, config))
    saved = load_model(save_model(tmp_path / "unnamed.safetensors", unnamed))
    assert saved.config.class_names[0] == "background"
    assert len(saved.config.class_names) == 2


def test_header_length_starting_with_the_pickle_byte_still_loads(saved):
    """A header length whose first byte is 0x80 (pickle's magic byte) is a valid model."""
    with safe_open(str(saved), "pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        metadata = dict(handle.metadata())
    for pad in range(0, 512, 4):
        save_file(tensors, str(saved), metadata={**metadata, "padding": "x" * pad})
        if saved.read_bytes()[0] == 0x80:
            break
    assert saved.read_bytes()[0] == 0x80
    loaded = load_model(saved)
    assert loaded.config.class_names == ["background", "cube"]
