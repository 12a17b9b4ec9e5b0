"""The ``medseg`` command end to end, and its answers to user mistakes.

``medseg train`` -> ``medseg predict`` -> ``medseg evaluate --json`` on a small synthetic
case written to NIfTI, in-process through :func:`napari_medseg.cli.main`, plus runs of the
installed ``medseg`` console script to check the entry point and its exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medseg.checkpoint import load_model
from napari_medseg.cli import main
from napari_medseg.io import read_volume, write_volume
from napari_medseg.synthetic import make_synthetic_case

REPO = Path(__file__).resolve().parents[1]
SHAPE = (16, 32, 32)
SPACING = (2.0, 0.8, 0.8)
ORIGIN = (-12.5, 30.0, 4.0)
DIRECTION = np.diag([1.0, -1.0, 1.0])  # a flipped axis, as in many scanners' files
CLASS_KEYS = {"dice", "jaccard", "sa", "hd95_mm", "assd_mm"}
MEAN_KEYS = {"dice", "jaccard", "sa"}


def medseg_script() -> list[str]:
    """The installed console script (next to this Python), else the module entry."""
    script = Path(sys.executable).with_name("medseg")
    found = str(script) if script.exists() else shutil.which("medseg")
    return [found] if found else [sys.executable, "-m", "napari_medseg.cli"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [*medseg_script(), *args], capture_output=True, text=True, env=env, timeout=300
    )


def assert_user_error(code: int, err: str, command: str, *patterns: str) -> str:
    """Exit code 2 and one line ``medseg <command>: error: ...`` on stderr, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"medseg {command}: error: "), err
    assert err.rstrip().endswith(errors[0]), err  # nothing after the message
    for pattern in patterns:
        assert pattern in errors[0], errors[0]
    return errors[0]


def refused(capsys, argv: list[str], *patterns: str) -> str:
    code = main(argv)
    return assert_user_error(code, capsys.readouterr().err, argv[0], *patterns)


def dice(segmentation: np.ndarray, expert: np.ndarray, label: int, mask=None) -> float:
    """Independent Dice of one label, optionally on the voxels of ``mask`` only."""
    s, e = segmentation == label, expert == label
    if mask is not None:
        s, e = s[mask], e[mask]
    total = int(s.sum()) + int(e.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(s, e).sum()) / total


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """The synthetic case on disk: image, expert mask, sparse annotation (NIfTI)."""
    folder = tmp_path_factory.mktemp("cli")
    synthetic = make_synthetic_case(shape=SHAPE, spacing=SPACING, seed=0)
    geometry = dict(spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    return {
        "dir": folder,
        "image": write_volume(folder / "image.nii.gz", synthetic.image, **geometry),
        "expert": write_volume(
            folder / "expert.nii.gz", synthetic.expert_mask, labels=True, **geometry
        ),
        "annotation": write_volume(
            folder / "annotation.nii.gz", synthetic.annotation, labels=True, **geometry
        ),
    }


@pytest.fixture(scope="module")
def pipeline(case) -> dict[str, Path]:
    """Train (3 iterations) and predict through the CLI, once for the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = case["dir"]
    out = dict(case)
    out["model"] = folder / "model.safetensors"
    out["segmentation"] = folder / "segmentation.nii.gz"
    out["probabilities"] = folder / "probabilities.npy"
    try:
        assert (
            main(["train", str(case["image"]), str(case["annotation"]), "--out", str(out["model"]),
                  "--iterations", "3", "--device", "cpu", "--class-names", "tube"])
            == 0
        )  # fmt: skip
        assert (
            main(["predict", str(out["model"]), str(case["image"]), "--out",
                  str(out["segmentation"]), "--probabilities", str(out["probabilities"]),
                  "--device", "cpu"])
            == 0
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return out


# ---- the happy path ------------------------------------------------------------------


def test_train_writes_a_loadable_model(pipeline):
    model = load_model(pipeline["model"])
    assert model.config.history["steps"] == 3
    assert model.config.class_names == ["background", "tube"]
    assert model.config.spacing == pytest.approx(SPACING)


def test_segmentation_keeps_the_image_geometry(pipeline):
    image = read_volume(pipeline["image"])
    segmentation = read_volume(pipeline["segmentation"])
    assert segmentation.shape == image.shape == SHAPE
    np.testing.assert_allclose(segmentation.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(segmentation.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(segmentation.direction, DIRECTION, atol=1e-6)
    np.testing.assert_allclose(segmentation.direction, image.direction, atol=1e-6)
    assert segmentation.array.dtype.kind == "u"
    assert set(np.unique(segmentation.array)) <= {0, 1}


def test_probabilities_file_is_written(pipeline):
    probabilities = np.load(pipeline["probabilities"], allow_pickle=False)
    labels = read_volume(pipeline["segmentation"]).array
    assert probabilities.shape == (2, *SHAPE) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probabilities.argmax(axis=0), labels)


def test_probabilities_in_a_medical_format_keep_the_geometry(pipeline, capsys):
    out = pipeline["dir"] / "probabilities.nii.gz"
    code = main(["predict", str(pipeline["model"]), str(pipeline["image"]), "--out",
                 str(pipeline["dir"] / "seg2.nii.gz"), "--probabilities", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    volume = read_volume(out, allow_channels=True)
    assert volume.shape == (2, *SHAPE)
    np.testing.assert_allclose(volume.spacing[1:], SPACING, rtol=1e-6)
    np.testing.assert_allclose(volume.origin[1:], ORIGIN, atol=1e-5)


def _evaluate_json(capsys, *argv: str) -> dict:
    assert main(["evaluate", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1  # one JSON object, nothing else on stdout
    return json.loads(out)


def _check_schema(result: dict) -> None:
    assert set(result) == {"classes", "mean"}
    assert set(result["classes"]) == {"1"}
    for metrics in result["classes"].values():
        assert CLASS_KEYS <= set(metrics)
        for key in ("dice", "jaccard", "sa"):
            assert isinstance(metrics[key], float)
        for key in ("hd95_mm", "assd_mm"):
            assert metrics[key] is None or isinstance(metrics[key], float)
    assert set(result["mean"]) == MEAN_KEYS
    assert all(isinstance(v, float) for v in result["mean"].values())


def test_evaluate_json_schema_and_dice(pipeline, capsys):
    result = _evaluate_json(capsys, str(pipeline["segmentation"]), str(pipeline["expert"]))
    _check_schema(result)
    segmentation = read_volume(pipeline["segmentation"]).array
    expert = read_volume(pipeline["expert"]).array
    expected = dice(segmentation, expert, 1)
    assert abs(result["classes"]["1"]["dice"] - expected) < 1e-3
    assert abs(result["mean"]["dice"] - expected) < 1e-3


def test_evaluate_json_excluding_annotated_voxels(pipeline, capsys):
    result = _evaluate_json(
        capsys,
        str(pipeline["segmentation"]),
        str(pipeline["expert"]),
        "--exclude",
        str(pipeline["annotation"]),
    )
    _check_schema(result)
    segmentation = read_volume(pipeline["segmentation"]).array
    expert = read_volume(pipeline["expert"]).array
    unannotated = read_volume(pipeline["annotation"]).array == 0
    assert 0 < unannotated.sum() < unannotated.size
    expected = dice(segmentation, expert, 1, mask=unannotated)
    assert abs(result["classes"]["1"]["dice"] - expected) < 1e-3


def test_evaluate_perfect_segmentation_scores_one(case, capsys):
    result = _evaluate_json(capsys, str(case["expert"]), str(case["expert"]))
    _check_schema(result)
    assert result["classes"]["1"]["dice"] == pytest.approx(1.0)
    assert result["classes"]["1"]["hd95_mm"] == pytest.approx(0.0)


def test_evaluate_warns_when_an_annotation_is_given_as_the_segmentation(case, capsys):
    assert main(["evaluate", str(case["annotation"]), str(case["expert"])]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "label(s) 2" in err[0], err


def test_evaluate_of_a_matching_segmentation_warns_of_nothing(case, capsys):
    assert main(["evaluate", str(case["expert"]), str(case["expert"])]) == 0
    assert capsys.readouterr().err == ""


def test_console_script_runs_predict_like_the_library(pipeline):
    """The installed entry point works in a fresh process and gives the same labels."""
    out = pipeline["dir"] / "script_segmentation.nrrd"
    done = run_script(
        "predict", str(pipeline["model"]), str(pipeline["image"]), "--out", str(out),
        "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and f"saved {out}" in done.stdout
    np.testing.assert_array_equal(
        read_volume(out).array, read_volume(pipeline["segmentation"]).array
    )


def test_the_command_line_does_not_import_what_only_the_gui_needs_before_training():
    """``torch._dynamo`` (a second of start-up) is imported ahead of time by the Train widget
    only; a ``medseg`` command that builds its options and plans nothing leaves it out."""
    code = (
        "import sys; from napari_medseg.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_predict_names_the_regions_apart_from_the_painting(pipeline, capsys, monkeypatch,
                                                          tmp_path):
    """With --annotation, a structure lying largely where nothing was painted is named, with
    the setting that clears it; --regions touching then clears it instead."""
    import napari_medseg.api as api
    from napari_medseg.inference import Prediction

    painted = np.zeros(SHAPE, np.uint8)
    painted[2, 2:6, 2:6] = 1
    painted[2, 3, 3] = 2  # the tube painted at one voxel
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:4, 2:5, 2:5] = 1  # touching the painted voxel
    labels[10:14, 20:26, 20:26] = 1  # far from anything painted: 144 voxels
    monkeypatch.setattr(api, "predict_volume_with_geometry",
                        lambda *args, **kwargs: Prediction(labels.copy(), None))
    annotation = write_volume(tmp_path / "painted.nii.gz", painted, labels=True,
                              spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    command = ["predict", str(pipeline["model"]), str(pipeline["image"]), "--annotation",
               str(annotation), "--device", "cpu", "--out"]
    assert main([*command, str(tmp_path / "all.nii.gz")]) == 0
    out = capsys.readouterr().out
    assert "apart from the painting (tube: 1 region(s), 94% of its voxels)" in out  # 144 of 154
    assert "--regions touching" in out
    assert main([*command, str(tmp_path / "touching.nii.gz"), "--regions", "touching"]) == 0
    out = capsys.readouterr().out
    assert "144 voxels apart from the painting cleared" in out and "region(s)" not in out
    assert not read_volume(tmp_path / "touching.nii.gz").array[10:14].any()


def test_console_script_exit_code_for_a_user_mistake(tmp_path):
    done = run_script("evaluate", str(tmp_path / "missing.nii.gz"), str(tmp_path / "x.nii.gz"))
    assert_user_error(done.returncode, done.stderr, "evaluate", "no such file or folder")


# ---- user mistakes: exit code 2, one line on stderr ----------------------------------


def test_missing_files(case, capsys, tmp_path):
    missing = str(tmp_path / "missing.nii.gz")
    model = str(tmp_path / "m.safetensors")
    refused(capsys, ["train", missing, str(case["annotation"]), "--out", model], "missing.nii.gz")
    refused(capsys, ["train", str(case["image"]), missing, "--out", model], "no such file")
    refused(capsys, ["predict", str(tmp_path / "none.safetensors"), str(case["image"]),
                     "--out", str(tmp_path / "s.nii.gz")], "model file not found")  # fmt: skip
    refused(capsys, ["evaluate", missing, str(case["expert"])], "no such file")
    assert not (tmp_path / "m.safetensors").exists()


def test_shapes_that_differ(case, capsys, tmp_path, pipeline):
    small = write_volume(tmp_path / "small.nii.gz", np.ones((16, 32, 30), np.uint8),
                         spacing=SPACING, labels=True)  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(small), "--out", str(tmp_path / "m")],
            "annotation shape (16, 32, 30) differs from image shape (16, 32, 32)")  # fmt: skip
    refused(capsys, ["evaluate", str(small), str(case["expert"])],
            "segmentation shape (16, 32, 30) differs")  # fmt: skip
    refused(capsys, ["evaluate", str(pipeline["segmentation"]), str(case["expert"]),
                     "--exclude", str(small)], "annotation shape")  # fmt: skip


def test_geometry_that_differs(case, capsys, tmp_path):
    annotation = read_volume(case["annotation"])
    moved = write_volume(tmp_path / "moved.nii.gz", annotation.array, spacing=SPACING,
                         origin=(0.0, 0.0, 0.0), direction=DIRECTION, labels=True)  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(moved), "--out", str(tmp_path / "m")],
            "annotation origin")  # fmt: skip


def test_annotation_with_no_annotated_voxel(case, capsys, tmp_path):
    empty = write_volume(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8), spacing=SPACING,
                         origin=ORIGIN, direction=DIRECTION, labels=True)  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(empty), "--out", str(tmp_path / "m")],
            "no annotated voxel")  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_unknown_formats(case, capsys, tmp_path, pipeline):
    xyz = tmp_path / "image.xyz"
    xyz.write_text("not an image")
    refused(capsys, ["train", str(xyz), str(case["annotation"]), "--out", str(tmp_path / "m")],
            "unknown file type", ".nii.gz")  # fmt: skip
    refused(capsys, ["predict", str(pipeline["model"]), str(case["image"]), "--out",
                     str(tmp_path / "seg.xyz")], "unknown file type")  # fmt: skip
    assert not (tmp_path / "seg.xyz").exists()
    refused(capsys, ["evaluate", str(xyz), str(case["expert"])], "unknown file type")


class Exploit:
    """Unpickling this creates a marker file: proves whether pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_pickle_model_file(case, capsys, tmp_path, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    torch.save({"state_dict": {}, "payload": Exploit(marker)}, evil)
    refused(capsys, ["predict", str(evil), str(case["image"]), "--out",
                     str(tmp_path / "seg.nii.gz")], "pickle", "safetensors")  # fmt: skip
    assert not marker.exists()
    assert not (tmp_path / "seg.nii.gz").exists()


def test_non_model_file_given_as_model(case, capsys, tmp_path):
    refused(capsys, ["predict", str(case["image"]), str(case["image"]), "--out",
                     str(tmp_path / "seg.nii.gz")], "not a napari-medseg model")  # fmt: skip


def test_everything_annotated_leaves_nothing_to_score(case, capsys, tmp_path):
    full = write_volume(tmp_path / "full.nii.gz", np.ones(SHAPE, np.uint8), spacing=SPACING,
                        origin=ORIGIN, direction=DIRECTION, labels=True)  # fmt: skip
    refused(capsys, ["evaluate", str(case["expert"]), str(case["expert"]), "--exclude",
                     str(full)], "nothing is left to score")  # fmt: skip


def test_impossible_settings(case, capsys, tmp_path):
    refused(capsys, ["train", str(case["image"]), str(case["annotation"]), "--out",
                     str(tmp_path / "m"), "--iterations", "0"], "iteration count")  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(case["annotation"]), "--out",
                     str(tmp_path / "m"), "--time-budget", "-5"], "time budget")  # fmt: skip


def test_argument_mistakes_exit_with_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "image.nii.gz"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "medseg train: error: the following arguments are required" in err
    assert "Traceback" not in err


def test_label_values_outside_the_class_names(case, capsys, tmp_path):
    annotation = read_volume(case["annotation"])
    stray = annotation.array.copy()
    stray[0, 0, 0] = 5  # structure 4; only "tube" (structure 1) is declared
    bad = write_volume(tmp_path / "stray.nii.gz", stray, spacing=SPACING, origin=ORIGIN,
                       direction=DIRECTION, labels=True)  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(bad), "--out", str(tmp_path / "m"),
                     "--iterations", "1", "--class-names", "tube"], "outside")  # fmt: skip
    assert not (tmp_path / "m").exists()


def test_label_values_that_are_not_labels(case, capsys, tmp_path):
    annotation = read_volume(case["annotation"])
    negative = write_volume(tmp_path / "neg.nii.gz", annotation.array.astype(np.int16) - 1,
                            spacing=SPACING, origin=ORIGIN, direction=DIRECTION,
                            labels=True)  # fmt: skip
    refused(capsys, ["train", str(case["image"]), str(negative), "--out", str(tmp_path / "m")],
            "negative values")  # fmt: skip


def test_output_into_a_missing_folder(pipeline, capsys, tmp_path):
    refused(capsys, ["predict", str(pipeline["model"]), str(pipeline["image"]), "--out",
                     str(tmp_path / "no" / "seg.nii.gz")], "does not exist")  # fmt: skip


def test_intensity_image_given_as_expert_mask(case, capsys):
    refused(capsys, ["evaluate", str(case["expert"]), str(case["image"])], "label")


def test_flips_option_reaches_training(case, tmp_path, capsys):
    model_path = tmp_path / "noflips.safetensors"
    args = ["train", str(case["image"]), str(case["annotation"]), "--out", str(model_path),
            "--iterations", "1", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--flips", "off"]) == 0
    assert load_model(model_path).config.history["flips"] is False  # one structure: auto is on
    with pytest.raises(SystemExit) as exc:
        main([*args, "--flips", "sometimes"])
    assert exc.value.code == 2
    assert "--flips" in capsys.readouterr().err


def test_ensemble_option_trains_and_saves_several_networks(case, tmp_path, capsys):
    model_path = tmp_path / "ensemble.safetensors"
    args = ["train", str(case["image"]), str(case["annotation"]), "--out", str(model_path),
            "--iterations", "1", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--ensemble", "2"]) == 0
    assert "2 x unet3d" in capsys.readouterr().out
    model = load_model(model_path)
    assert model.config.network.members == 2 and model.config.history["member_steps"] == [1, 1]
    seg, spread = tmp_path / "seg.nrrd", tmp_path / "uncertainty.nrrd"
    predict = ["predict", str(model_path), str(case["image"]), "--out", str(seg)]
    assert main([*predict, "--uncertainty", str(spread)]) == 0
    out = capsys.readouterr().out
    assert f"saved {spread}" in out and "paint one of them next" in out
    # with the annotation, painted slices are never suggested
    annotation = read_volume(case["annotation"]).array
    steered = ["--uncertainty", str(spread), "--annotation", str(case["annotation"])]
    assert main([*predict, *steered]) == 0
    (line,) = [t for t in capsys.readouterr().out.splitlines() if "paint one of them" in t]
    planes = {"axial": 0, "coronal": 1, "sagittal": 2}
    found = re.findall(r"(axial|coronal|sagittal) slice (\d+)", line.split(":")[0])
    suggested = [(planes[plane], int(k)) for plane, k in found]
    assert suggested and all(
        (np.moveaxis(annotation, axis, 0)[k] == 0).any() for axis, k in suggested
    )
    image, uncertainty = read_volume(case["image"]), read_volume(spread)
    assert uncertainty.shape == image.shape and uncertainty.array.dtype == np.float32
    np.testing.assert_allclose(uncertainty.spacing, image.spacing)
    assert main([*args, "--ensemble", "0"]) == 2  # a clear one-line refusal
    assert "ensemble" in capsys.readouterr().err


def test_uncertainty_of_a_single_network_is_its_doubt(case, tmp_path, capsys):
    model_path = tmp_path / "one.safetensors"
    assert main(["train", str(case["image"]), str(case["annotation"]), "--out", str(model_path),
                 "--iterations", "1", "--device", "cpu"]) == 0  # fmt: skip
    seg, doubt = tmp_path / "seg.nrrd", tmp_path / "u.nrrd"
    code = main(["predict", str(model_path), str(case["image"]), "--out", str(seg),
                 "--uncertainty", str(doubt), "--device", "cpu"])  # fmt: skip
    assert code == 0 and seg.exists()
    values = read_volume(doubt).array
    assert values.shape == read_volume(seg).array.shape
    assert 0.0 <= values.min() and values.max() <= 1.0
    out = capsys.readouterr().out
    assert re.search(r"least sure on (axial|coronal|sagittal) slice \d+", out), out


def test_predict_keeps_painted_voxels_given_the_annotation(pipeline, tmp_path, capsys):
    """``predict --annotation``: painted voxels keep the user's label, as in the widget."""
    annotation = read_volume(pipeline["annotation"]).array
    painted = annotation > 0
    seg = tmp_path / "kept.nii.gz"
    predict = ["predict", str(pipeline["model"]), str(pipeline["image"]), "--device", "cpu"]
    assert main([*predict, "--out", str(seg), "--annotation", str(pipeline["annotation"])]) == 0
    out = capsys.readouterr().out
    assert f"{int(painted.sum()):,} painted voxels kept" in out
    kept = read_volume(seg).array
    np.testing.assert_array_equal(kept[painted], annotation[painted] - 1)
    # unpainted voxels are the network's own answer, the same as without the annotation
    plain = read_volume(pipeline["segmentation"]).array
    np.testing.assert_array_equal(kept[~painted], plain[~painted])
    assert (plain[painted] != annotation[painted] - 1).any()  # so keeping them changed something

    # an annotation of another image, or painting a structure the model does not know:
    # one line, and nothing written
    other = tmp_path / "other.nii.gz"
    write_volume(other, annotation[:-1], spacing=SPACING, labels=True)
    refused(capsys, [*predict, "--out", str(tmp_path / "a.nii.gz"), "--annotation", str(other)],
            "annotation shape")  # fmt: skip
    unknown = annotation.copy()
    unknown[0, 0, 0] = 5  # structure 4; the model knows one
    write_volume(other, unknown, spacing=SPACING, origin=ORIGIN, direction=DIRECTION, labels=True)
    refused(capsys, [*predict, "--out", str(tmp_path / "b.nii.gz"), "--annotation", str(other)],
            "structure 4", "knows 1")  # fmt: skip
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()


def test_planes_option_trains_a_2d_network_on_three_planes(case, tmp_path, capsys):
    model_path = tmp_path / "planes.safetensors"
    args = ["train", str(case["image"]), str(case["annotation"]), "--out", str(model_path),
            "--iterations", "1", "--device", "cpu", "--arch", "unet2d"]  # fmt: skip
    assert main([*args, "--planes", "three"]) == 0
    assert load_model(model_path).config.planes == (0, 1, 2)
    seg = tmp_path / "seg.nrrd"
    assert main(["predict", str(model_path), str(case["image"]), "--out", str(seg)]) == 0
    assert read_volume(seg).shape == SHAPE
    assert main(args) == 0  # the default: one plane
    assert load_model(model_path).config.planes == (0,)
    with pytest.raises(SystemExit) as exc:
        main([*args, "--planes", "two"])
    assert exc.value.code == 2
    assert "--planes" in capsys.readouterr().err


def test_group_norm_option_builds_and_reloads_group_norm(case, tmp_path):
    model_path = tmp_path / "gn.safetensors"
    args = ["train", str(case["image"]), str(case["annotation"]), "--out", str(model_path),
            "--iterations", "1", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--group-norm"]) == 0
    model = load_model(model_path)
    assert model.config.network.norm_groups == 4 and model.config.training["group_norm"]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.network.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.network.modules())
    seg = tmp_path / "seg.nrrd"
    assert main(["predict", str(model_path), str(case["image"]), "--out", str(seg)]) == 0
    assert read_volume(seg).shape == SHAPE


@pytest.mark.parametrize("command", ["train", "predict", "evaluate"])
def test_help_shows_formats_defaults_and_examples(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert ".nii.gz" in text and "DICOM folder" in text
    assert f"medseg {command} " in text.split("examples:")[1]
    if command != "evaluate":
        assert "(default: auto)" in " ".join(text.split())  # defaults are shown
