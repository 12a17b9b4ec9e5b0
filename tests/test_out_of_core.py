"""Predicting into a zarr store: labels equal to an in-memory run, geometry and names
kept, options that need the whole volume refused before work, and, for real, a zarr
volume larger than the address space left to the process predicted without holding it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_user_error
from test_prediction_memory import _peak, _run_limited  # tests/ is on the path

import napari_medseg.lazy_training as lazy_training
from napari_medseg.api import predict_file, train_files
from napari_medseg.checkpoint import save_model
from napari_medseg.cli import main
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.io import ZarrLabelWriter, open_zarr, read_volume, write_volume, write_zarr
from napari_medseg.lazy_training import fit_on_slices, painted_box, train_from_store
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train

pytest.importorskip("zarr")
SPACING, ORIGIN = (2.5, 0.8, 0.7), (10.0, -20.0, 5.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    case = make_synthetic_case(shape=(40, 32, 36), seed=5)
    config = TrainConfig(
        iterations=2, time_budget=None, base_channels=4, device="cpu", patch_shape=(16, 16, 16)
    )
    model = run_to_completion(train(case.image, case.annotation, config))
    save_model(folder / "m.safetensors", model)
    return model, folder / "m.safetensors", case.image


def test_zarr_in_zarr_out_equals_the_in_memory_prediction(tiny, tmp_path):
    model, path, image = tiny
    source = write_zarr(tmp_path / "scan.zarr", image, spacing=SPACING, origin=ORIGIN)
    config = PredictConfig(device="cpu", mixed_precision=False)
    prediction = predict_file(path, source, tmp_path / "seg.zarr", config)
    expected = predict_volume(model, image, config).labels
    written = open_zarr(tmp_path / "seg.zarr")
    assert np.array_equal(np.asarray(written.array), expected)
    assert np.array_equal(np.asarray(prediction.labels), expected)
    assert written.spacing == SPACING and written.origin == ORIGIN
    names = [s.name for s in written.segments.items] if written.segments else []
    assert names == list(model.config.class_names[1:])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial store


def test_a_file_image_into_a_zarr_store(tiny, tmp_path):
    model, path, image = tiny
    write_volume(tmp_path / "scan.nii.gz", image)
    code = main(["predict", str(path), str(tmp_path / "scan.nii.gz"), "--out",
                 str(tmp_path / "seg.zarr"), "--device", "cpu", "--full-precision"])  # fmt: skip
    assert code == 0
    image = read_volume(tmp_path / "scan.nii.gz").array
    expected = predict_volume(model, image, PredictConfig(device="cpu", mixed_precision=False))
    expected = expected.labels
    assert np.array_equal(np.asarray(open_zarr(tmp_path / "seg.zarr").array), expected)


def test_cli_from_a_store_into_a_store_again(tiny, tmp_path, capsys):
    _, path, image = tiny
    write_zarr(tmp_path / "scan.zarr", image, spacing=SPACING)
    args = ["predict", str(path), str(tmp_path / "scan.zarr"), "--out", str(tmp_path / "s.zarr"),
            "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    first = np.asarray(open_zarr(tmp_path / "s.zarr").array)
    assert main(args) == 0  # an existing store is replaced
    assert np.array_equal(np.asarray(open_zarr(tmp_path / "s.zarr").array), first)
    assert "saved" in capsys.readouterr().out
    (tmp_path / "folder.zarr").mkdir()  # a folder that is not a store is not replaced
    (tmp_path / "folder.zarr" / "notes.txt").write_text("mine", encoding="utf-8")
    code = main([*args[:4], str(tmp_path / "folder.zarr"), *args[5:]])
    assert code == 2 and (tmp_path / "folder.zarr" / "notes.txt").exists()


@pytest.mark.parametrize("extra", [["--probabilities", "p.npy"], ["--uncertainty", "u.nii.gz"]])
def test_what_a_store_cannot_hold_is_refused_before_work(tiny, tmp_path, capsys, extra):
    _, path, image = tiny
    write_zarr(tmp_path / "scan.zarr", image)
    extra = [extra[0], str(tmp_path / extra[1])]
    args = ["predict", str(path), str(tmp_path / "scan.zarr"), "--out", str(tmp_path / "s.zarr")]
    code = main([*args, *extra])
    assert_user_error(code, capsys.readouterr().err, "predict", "cannot go with a .zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.zarr"]


# ---- for real: more voxels than the address space left -------------------------------

PLANE = (512, 512)


def _sparse_stack(path: Path, slices: int) -> None:
    """A uint16 stack of zeros with a few bright blobs (microscopy-like), written slab by
    slab (never whole in memory)."""
    rng = np.random.default_rng(1)
    with ZarrLabelWriter(path, (slices, *PLANE), dtype=np.uint16, labels=False) as writer:
        for start in range(0, slices, 32):
            slab = np.zeros((min(32, slices - start), *PLANE), dtype=np.uint16)
            if start % 128 == 0:
                z, y, x = (rng.integers(0, n - 12) for n in slab.shape)
                slab[z : z + 12, y : y + 12, x : x + 12] = rng.integers(800, 1200, (12, 12, 12))
            writer.write(start, slab)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_a_store_larger_than_the_memory_left_is_predicted(tiny, tmp_path):
    _, path, _ = tiny
    small, big = tmp_path / "small.zarr", tmp_path / "big.zarr"
    _sparse_stack(small, 64)
    _sparse_stack(big, 1280)  # 671 MB of voxels
    args = ["predict", str(path), "--device", "cpu", "--tile-shape", "32", "256", "256"]
    baseline = _peak(_run_limited([*args[:2], str(small), "--out", str(tmp_path / "s.zarr"),
                                   *args[2:]], None))  # fmt: skip
    limit = baseline + (256 << 20)  # far less than the volume (671 MB) or its labels (336 MB)
    done = _run_limited([*args[:2], str(big), "--out", str(tmp_path / "b.zarr"), *args[2:]],
                        limit)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    labels = open_zarr(tmp_path / "b.zarr").array
    assert labels.shape == (1280, *PLANE)
    # the slices whose tiles are the same in both stacks get the same labels
    same = np.asarray(open_zarr(tmp_path / "s.zarr").array)[:32]
    assert np.array_equal(np.asarray(labels[:32]), same)


# ---- training from a store: only the region around the painting is read --------------


def test_painted_box_is_found_slab_by_slab():
    annotation = np.zeros((70, 20, 30), dtype=np.uint8)
    annotation[5, 3:9, 4] = 2
    annotation[66, 12, 25:28] = 1
    assert painted_box(annotation, slab=16) == (slice(5, 67), slice(3, 13), slice(4, 28))
    assert painted_box(np.zeros((4, 4, 4), np.uint8)) is None


def test_training_from_a_store_reads_the_painted_region_only(tmp_path, monkeypatch):
    case = make_synthetic_case(shape=(60, 40, 40), seed=2)
    annotation = np.zeros_like(case.annotation)
    annotation[20:22] = case.annotation[20:22]  # two painted slices
    write_zarr(tmp_path / "scan.zarr", case.image, spacing=(1.0, 1.0, 1.0))
    write_zarr(tmp_path / "ann.zarr", annotation)
    seen = {}
    real = lazy_training.train

    def recorded(image, annotation, config, **kwargs):
        seen["shape"], seen["normalization"] = image.shape, kwargs["normalization"]
        return real(image, annotation, config, **kwargs)

    monkeypatch.setattr(lazy_training, "train", recorded)
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu",
                         patch_shape=(8, 16, 16))  # fmt: skip
    model = train_files(tmp_path / "scan.zarr", tmp_path / "ann.zarr", tmp_path / "m.safetensors",
                        config)  # fmt: skip
    assert seen["shape"] == (2 + 2 * 8, 40, 40)  # the painted slices and a patch either side
    assert model.config.normalization == fit_on_slices(case.image)  # the whole volume's
    assert (tmp_path / "m.safetensors").exists()


def test_training_from_a_store_refuses_an_empty_or_too_large_painting(tmp_path):
    image = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    write_zarr(tmp_path / "scan.zarr", image)
    write_zarr(tmp_path / "empty.zarr", np.zeros(image.shape, np.uint8))
    with pytest.raises(MedsegInputError, match="no painted voxel"):
        train_from_store(tmp_path / "scan.zarr", tmp_path / "empty.zarr")
    painted = np.zeros(image.shape, np.uint8)
    painted[0, 0, 0], painted[19, 15, 15] = 1, 2
    write_zarr(tmp_path / "wide.zarr", painted)
    with pytest.raises(MedsegInputError, match="paint within a smaller region"):
        train_from_store(tmp_path / "scan.zarr", tmp_path / "wide.zarr", max_voxels=1000)
