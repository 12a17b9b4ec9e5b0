"""nnU-Net v2 dataset export and import (``medseg export-nnunet`` / ``import-nnunet``).

The exported dataset is checked by nnU-Net's own ``verify_dataset_integrity`` (nnunetv2,
a test-only dependency); import of an export gives back the images, annotations and names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_medseg.cli import main
from napari_medseg.colors import CLASS_NAMES_KEY
from napari_medseg.errors import MedsegInputError
from napari_medseg.io import read_volume, write_volume
from napari_medseg.io.segments import Segments
from napari_medseg.nnunet import (
    NnunetExportConfig,
    NnunetImportConfig,
    export_nnunet,
    from_nnunet_labels,
    import_nnunet,
    to_nnunet_labels,
)

SPACING = (2.0, 0.8, 0.7)
ORIGIN = (-12.5, 30.0, 4.0)
DIRECTION = np.diag([1.0, -1.0, 1.0])
NAMES = ["liver", "tumour"]


def _case(folder: Path, name: str, seed: int, shape=(6, 12, 10)) -> tuple[Path, Path]:
    """An image and its sparse annotation on disk; the annotation names its structures."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 20, shape).astype(np.float32)
    annotation = np.zeros(shape, np.uint8)
    annotation[2] = 1
    annotation[2, 3:8, 2:6] = 2
    annotation[2, 8:10, 6:9] = 3
    annotation[4, :, :5] = 1
    geometry = dict(spacing=SPACING, origin=ORIGIN, direction=DIRECTION)
    image_path = write_volume(folder / f"{name}.nii.gz", image, **geometry)
    annotation_path = write_volume(
        folder / f"{name}_annotation.nii.gz", annotation, **geometry,
        segments=Segments.of_structures(NAMES, "annotation"),
    )  # fmt: skip
    return image_path, annotation_path


@pytest.fixture
def cases(tmp_path) -> list[tuple[Path, Path]]:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    return [_case(inputs, "ct1", 0), _case(inputs, "ct2", 1, shape=(5, 9, 11))]


def _export(cases, root: Path, **config) -> Path:
    settings = {"dataset_id": 501, "dataset_name": "Liver", **config}
    return export_nnunet(cases, root, NnunetExportConfig(**settings))


def test_label_conversion_both_ways():
    annotation = np.array([0, 1, 2, 3, 0], np.uint8)
    labels = to_nnunet_labels(annotation, ignore=3)
    assert labels.tolist() == [3, 0, 1, 2, 3]
    assert from_nnunet_labels(labels, 2, 3).tolist() == annotation.tolist()
    with pytest.raises(MedsegInputError, match="holds 4"):
        from_nnunet_labels(np.array([0, 4], np.uint8), 2, 3)


def test_export_layout_and_dataset_json(cases, tmp_path):
    folder = _export(cases, tmp_path / "nnUNet_raw", channel="CT")
    assert folder == tmp_path / "nnUNet_raw" / "Dataset501_Liver"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "ct1_0000.nii.gz", "ct2_0000.nii.gz",
    ]  # fmt: skip
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["ct1.nii.gz", "ct2.nii.gz"]
    info = json.loads((folder / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "liver": 1, "tumour": 2, "ignore": 3}
    assert info["channel_names"] == {"0": "CT"}
    assert info["numTraining"] == 2 and info["file_ending"] == ".nii.gz"
    labels = read_volume(folder / "labelsTr" / "ct1.nii.gz")
    annotation = read_volume(cases[0][1]).array
    assert np.array_equal(labels.array[annotation == 0], np.full((annotation == 0).sum(), 3))
    assert np.array_equal(labels.array[annotation > 0], annotation[annotation > 0] - 1)
    assert labels.spacing == pytest.approx(SPACING)
    assert labels.origin == pytest.approx(ORIGIN)
    assert np.allclose(labels.direction, DIRECTION)
    assert not list((tmp_path / "nnUNet_raw").glob(".medseg-tmp-*"))


def test_export_passes_nnunets_integrity_check(cases, tmp_path, monkeypatch, capfd):
    root = tmp_path / "nnUNet_raw"
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir(exist_ok=True)
        monkeypatch.setenv(name, str(tmp_path / name))
    verify = pytest.importorskip(
        "nnunetv2.experiment_planning.verify_dataset_integrity"
    ).verify_dataset_integrity
    folder = _export(cases, root)
    verify(str(folder), num_processes=1)  # raises (AssertionError, RuntimeError) when wrong
    said = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in said
    assert "Error" not in said and "Warning" not in said, said


def test_import_of_an_export_gives_back_the_cases(cases, tmp_path):
    folder = _export(cases, tmp_path / "raw")
    imported = import_nnunet(folder, tmp_path / "back")
    assert [c.case for c in imported] == ["ct1", "ct2"]
    for (image_path, annotation_path), case in zip(cases, imported):
        original, back = read_volume(image_path), read_volume(case.image)
        assert back.array.dtype == original.array.dtype
        assert np.array_equal(back.array, original.array)
        annotation, round_trip = read_volume(annotation_path), read_volume(case.annotation)
        assert np.array_equal(round_trip.array, annotation.array)
        assert round_trip.spacing == pytest.approx(annotation.spacing)
        assert round_trip.origin == pytest.approx(annotation.origin)
        assert np.allclose(round_trip.direction, annotation.direction)
        assert round_trip.metadata[CLASS_NAMES_KEY] == NAMES
        assert round_trip.metadata["medseg_kind"] == "annotation"


def test_import_of_one_case_through_the_cli(cases, tmp_path, capsys):
    folder = _export(cases, tmp_path / "raw")
    out = tmp_path / "one"
    assert main(["import-nnunet", str(folder), "--out", str(out), "--case", "ct2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ct2.nii.gz", "ct2_annotation.label.txt", "ct2_annotation.nii.gz",
    ]  # fmt: skip


def test_export_through_the_cli_with_names_given(cases, tmp_path, capsys):
    argv = ["export-nnunet", *map(str, cases[0]), "--out", str(tmp_path / "raw"),
            "--dataset-id", "7", "--class-names", "organ,lesion"]  # fmt: skip
    assert main(argv) == 0
    info = json.loads((tmp_path / "raw" / "Dataset007_MedSeg" / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}
    assert info["channel_names"] == {"0": "MRI"}
    assert "nnU-Net dataset written" in capsys.readouterr().out


def _refused(capsys, argv: list[str], *words: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"medseg {argv[0]}: error: "), err
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_exits_with_2_and_writes_nothing(cases, tmp_path, capsys):
    root = tmp_path / "raw"
    image, annotation = map(str, cases[0])
    other_image = str(cases[1][0])
    base = ["export-nnunet", "--out", str(root)]
    _refused(capsys, [*base, "--dataset-id", "0", image, annotation], "dataset id")
    _refused(capsys, [*base, "--dataset-id", "1000", image, annotation], "dataset id")
    _refused(capsys, [*base, "--dataset-id", "5", "--dataset-name", "a b", image, annotation],
             "dataset name")  # fmt: skip
    _refused(capsys, [*base, "--dataset-id", "5", image], "pairs")
    _refused(capsys, [*base, "--dataset-id", "5", other_image, annotation], "shape")
    _refused(capsys, [*base, "--dataset-id", "5", image, annotation, "--class-names", "one"],
             "2 structures")  # fmt: skip
    _refused(capsys, [*base, "--dataset-id", "5", image, str(tmp_path / "missing.nii.gz")],
             "not found")  # fmt: skip
    assert not root.exists() or not any(root.iterdir())
    (root / "Dataset005_MedSeg").mkdir(parents=True)
    (root / "Dataset005_MedSeg" / "notes.txt").write_text("mine")
    _refused(capsys, [*base, "--dataset-id", "5", image, annotation], "not empty")
    _refused(capsys, [*base, "--dataset-id", "5", "--dataset-name", "Other", image, annotation],
             "taken")  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == ["Dataset005_MedSeg"]


def test_geometry_mismatch_is_refused(tmp_path, capsys):
    image, annotation = _case(tmp_path, "ct", 0)
    moved = read_volume(annotation)
    write_volume(annotation, moved.array, spacing=(3.0, 0.8, 0.7), origin=ORIGIN,
                 direction=DIRECTION, labels=True)  # fmt: skip
    _refused(capsys, ["export-nnunet", str(image), str(annotation), "--out",
                      str(tmp_path / "raw"), "--dataset-id", "9"], "spacing")  # fmt: skip
    assert not any((tmp_path / "raw").iterdir())


def test_import_refuses_what_is_not_a_dataset(cases, tmp_path, capsys):
    _refused(capsys, ["import-nnunet", str(tmp_path), "--out", str(tmp_path / "x")],
             "dataset.json")  # fmt: skip
    folder = _export(cases, tmp_path / "raw")
    out = tmp_path / "taken"
    out.mkdir()
    (out / "a.txt").write_text("mine")
    _refused(capsys, ["import-nnunet", str(folder), "--out", str(out)], "not empty")
    _refused(capsys, ["import-nnunet", str(folder), "--out", str(tmp_path / "y"), "--case", "ct9"],
             "no case")  # fmt: skip
    info = json.loads((folder / "dataset.json").read_text())
    info["labels"] = {"background": 0, "liver": [1, 2]}
    (folder / "dataset.json").write_text(json.dumps(info))
    _refused(capsys, ["import-nnunet", str(folder), "--out", str(tmp_path / "z")], "region")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_import_refuses_labels_outside_the_dataset(cases, tmp_path):
    folder = _export(cases, tmp_path / "raw")
    labels = read_volume(folder / "labelsTr" / "ct1.nii.gz")
    broken = labels.array.copy()
    broken[0, 0, 0] = 7
    write_volume(folder / "labelsTr" / "ct1.nii.gz", broken, reference=labels, labels=True)
    with pytest.raises(MedsegInputError, match="holds 7"):
        import_nnunet(folder, tmp_path / "back", NnunetImportConfig())
    assert not (tmp_path / "back").exists()
