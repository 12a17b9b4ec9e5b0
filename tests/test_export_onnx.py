"""ONNX export (``medseg export-model``): ONNX Runtime's labels equal torch's, the file's
metadata explains it, and bad input is refused in one line before any work."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medseg import api, cli, onnx_check
from napari_medseg import export_onnx as export_module
from napari_medseg.checkpoint import load_model, save_model
from napari_medseg.errors import MedsegInputError
from napari_medseg.export_onnx import (
    CONFIG_KEY,
    CONTRACT_KEY,
    ExportConfig,
    read_onnx_metadata,
)
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.onnx_check import check_volume, runtime_probabilities
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def _trained(folder, **settings):
    """A small model trained for a few steps on a synthetic case with two structures, its
    file and the file of its image."""
    case = make_synthetic_case(shape=(16, 32, 32), n_structures=2, seed=0)
    config = TrainConfig(
        iterations=25, time_budget=None, base_channels=4, seed=0, validation=False, **settings
    )
    model = run_to_completion(train(case.image, case.annotation, config))
    path = save_model(folder / "model.safetensors", model)
    image_path = folder / "image.npy"
    np.save(image_path, case.image)
    return path, image_path, case.image


@pytest.fixture(scope="module")
def unet3d(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("unet3d"), arch="unet3d")


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(unet3d, tmp_path_factory):
    """``medseg export-model`` run on the 3D U-Net, checked on its training image: the exit
    code, what it printed, and the file."""
    model_path, image_path, _ = unet3d
    out = tmp_path_factory.mktemp("exported") / "model.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["export-model", str(model_path), "--onnx", str(out),
                         "--check-image", str(image_path)])  # fmt: skip
    printed = stdout.getvalue().splitlines()
    return code, printed, out


def test_cli_export_of_a_3d_unet_gives_onnx_runtime_labels_equal_to_torchs(unet3d, exported):
    model_path, _, image = unet3d
    code, printed, out = exported
    assert code == 0
    assert len(printed) == 1 and printed[0].startswith(f"saved {out}: unet3d, 3 classes")
    assert f"ONNX Runtime labels equal torch's on {image.size:,} voxels, max |dp| = " in printed[0]
    # the same claim, recomputed here over the whole volume through the project's tiling
    model = load_model(model_path)
    settings = PredictConfig(device="cpu", mixed_precision=False, probabilities=True)
    torch_prediction = predict_volume(model, image, settings)
    runtime = runtime_probabilities(_session(out), model, image)
    assert np.array_equal(np.argmax(runtime, axis=0), torch_prediction.labels)
    assert np.abs(runtime - torch_prediction.probabilities).max() < 1e-4
    assert len(np.unique(torch_prediction.labels)) == 3  # every class is predicted somewhere


def test_onnx_metadata_round_trips_the_model_config_and_contract(unet3d, exported):
    model = load_model(unet3d[0])
    metadata = read_onnx_metadata(exported[2])
    assert metadata[CONFIG_KEY] == json.loads(json.dumps(model.config.to_dict()))
    contract = metadata[CONTRACT_KEY]
    assert contract["output"]["class_names"] == model.config.class_names
    assert contract["normalization"]["mean"] == model.config.normalization.mean
    assert contract["spacing_mm"] == list(model.config.spacing)
    assert contract["divisor"] == list(model.network.divisor)
    assert contract["tiling"]["tile_shape"] == [2 * p for p in model.config.patch_shape]
    assert contract["input"]["layout"] == contract["output"]["layout"] == "NCDHW"


def test_onnx_graph_takes_any_batch_and_size(unet3d, exported):
    model = load_model(unet3d[0])
    session = _session(exported[2])
    for value in (session.get_inputs()[0], session.get_outputs()[0]):
        assert value.shape[0] == "batch" and value.shape[2:] == ["depth", "height", "width"]
    # divisible by the network's divisor, not divisible, a single voxel
    for shape in ((1, 1, 16, 32, 32), (3, 1, 5, 13, 19), (2, 1, 1, 1, 1)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = torch.softmax(model.network(x), dim=1).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


def test_a_2d_ensemble_read_in_three_planes_exports_with_equal_labels(tmp_path):
    model_path, image_path, image = _trained(tmp_path, arch="unet2d", ensemble=2, planes="three")
    out = tmp_path / "ensemble.onnx"
    stages = []
    result = api.export_onnx(
        model_path, out, ExportConfig(opset=18), check_image=image_path, on_progress=stages.append
    )
    assert result.opset == 18 and result.members == 2 and out.is_file()
    assert len(stages) == 2  # exporting, then checking
    check = result.check
    assert check is not None and check.passed and check.voxels == image.size
    assert check.differing == 0 and check.ties == 0
    assert "2 x unet2d" in result.describe()
    contract = read_onnx_metadata(out)[CONTRACT_KEY]
    assert contract["tiling"]["planes"] == [0, 1, 2] and contract["slicewise"]
    assert "averaged over the ensemble's 2 networks" in contract["output"]["meaning"]


def test_labels_that_differ_fail_the_check_and_save_nothing(unet3d, tmp_path, capsys, monkeypatch):
    model_path, _, _ = unet3d

    def swapped(session, model, image):  # the background and the first structure swapped
        probabilities = runtime_probabilities(session, model, image)
        return probabilities[[1, 0, 2]]

    monkeypatch.setattr(onnx_check, "runtime_probabilities", swapped)
    out = tmp_path / "model.onnx"
    code = cli.main(["export-model", str(model_path), "--onnx", str(out)])  # default volume
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    voxels = check_volume(load_model(model_path)).size
    assert "ONNX Runtime labels differ from torch's on " in error[-1]
    assert f" of {voxels:,} voxels" in error[-1]
    assert "not saved" in error[-1]
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left


def test_ties_are_counted_apart_from_real_differences():
    expected = np.array([[0.500004, 0.9, 0.2], [0.499996, 0.1, 0.8]], np.float32)
    labels = np.argmax(expected, axis=0)
    tie_only = expected[::-1].copy()
    tie_only[:, 1:] = expected[:, 1:]  # only the tied voxel differs
    check = onnx_check._compared(expected, labels, tie_only)
    assert (check.differing, check.ties, check.passed) == (1, 1, True)
    assert "1 where two classes tie" in check.describe()
    check = onnx_check._compared(expected, labels, expected[::-1].copy())
    assert (check.differing, check.ties, check.passed) == (3, 1, False)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing/model.onnx", "folder"),
        (".", "it is a folder"),
        ("model.safetensors.out", "ONNX files end in .onnx"),
    ],
)
def test_outputs_that_cannot_be_written_are_refused_in_one_line(
    unet3d, tmp_path, capsys, monkeypatch, target, message
):
    model_path, _, _ = unet3d
    monkeypatch.chdir(tmp_path)
    code = cli.main(["export-model", str(model_path), "--onnx", target])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.splitlines() == [error] and message in error
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_model_is_refused_in_one_line(unet3d, tmp_path, capsys):
    _, image_path, _ = unet3d
    for source in (image_path, tmp_path / "absent.safetensors"):
        code = cli.main(["export-model", str(source), "--onnx", str(tmp_path / "m.onnx")])
        error = capsys.readouterr().err.strip()
        assert code == 2 and error.splitlines() == [error]
        assert not (tmp_path / "m.onnx").exists()


def test_an_unchecked_export_says_so():
    result = export_module.ExportResult(
        path=Path("m.onnx"),
        arch="fcn",
        members=1,
        n_classes=2,
        opset=20,
        size_bytes=10**6,
        check=None,
    )
    assert result.describe() == (
        "saved m.onnx: fcn, 2 classes, opset 20, 1.0 MB; not checked with ONNX Runtime"
    )


def test_impossible_settings_are_refused():
    with pytest.raises(MedsegInputError, match="opset must be 18 or newer"):
        ExportConfig(opset=12)


def test_a_missing_extra_names_the_install_command(unet3d, tmp_path, capsys, monkeypatch):
    model_path, _, _ = unet3d
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    code = cli.main(["export-model", str(model_path), "--onnx", str(tmp_path / "m.onnx")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.splitlines() == [error] and 'pip install "napari-medseg[onnx]"' in error
