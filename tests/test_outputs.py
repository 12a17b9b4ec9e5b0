"""Outputs are checked before any work, and a save that still fails keeps the work.

``medseg train`` and ``medseg predict`` refuse an output they could not write (a read-only
folder, a missing folder, a folder given as the file, an unknown extension, two outputs
naming one file, an output naming an input) with one line and exit code 2, before a network
is built or a tile computed. A model whose save fails after training is kept in a rescue
folder, and the error names it; a prediction that wrote its segmentation but not its
probabilities says which was written.

Read-only folders are real mounts (``mount -t tmpfs -o ro``, ``mount --bind`` then
``remount,ro``): root ignores permission bits, so ``chmod`` would prove nothing. Those tests
need root and the ``mount`` command, and are skipped otherwise.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import napari_medseg._passes as passes
from napari_medseg import api
from napari_medseg.checkpoint import load_model, save_model
from napari_medseg.cli import main
from napari_medseg.errors import MedsegError, MedsegInputError
from napari_medseg.inference import PredictConfig, predict_volume
from napari_medseg.io import read_volume, write_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, optimisation, train

SHAPE = (16, 24, 24)
FAST = ["--iterations", "1", "--base-channels", "4", "--device", "cpu"]


# ---- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> dict[str, Path]:
    """Image, annotation and a trained model on disk."""
    folder = tmp_path_factory.mktemp("outputs")
    synthetic = make_synthetic_case(shape=SHAPE)
    config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu")
    model = run_to_completion(train(synthetic.image, synthetic.annotation, config))
    return {
        "dir": folder,
        "image": write_volume(folder / "image.nii.gz", synthetic.image),
        "annotation": write_volume(
            folder / "annotation.nii.gz", synthetic.annotation, labels=True
        ),  # fmt: skip
        "model": save_model(folder / "model.safetensors", model),
    }


@pytest.fixture(autouse=True)
def rescue_dir(tmp_path, monkeypatch) -> Path:
    """Rescued models go to a temporary folder, never into the user's cache."""
    folder = tmp_path / "rescued"
    monkeypatch.setenv("MEDSEG_RESCUE_DIR", str(folder))
    return folder


@pytest.fixture
def no_training(monkeypatch):
    """Fail if a network is built: proves a refusal happens before any training."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built for an output that should have been refused")

    monkeypatch.setattr(optimisation, "build_network", refuse)


@pytest.fixture
def no_predicting(monkeypatch):
    """Fail if a tile is computed: proves a refusal happens before predicting."""

    def refuse(*args, **kwargs):
        raise AssertionError("a tile was computed for an output that should have been refused")

    monkeypatch.setattr(passes, "forward", refuse)


def _need_root_and_mount() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("a real read-only mount needs root (chmod does not stop root)")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("a real read-only mount needs the mount and umount commands")


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


def _umount(point: Path) -> None:
    if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def read_only(tmp_path) -> Iterator[Path]:
    """A real read-only file system (a tmpfs mounted ``ro``)."""
    _need_root_and_mount()
    point = tmp_path / f"ro-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    _mount("-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(point))
    try:
        with pytest.raises(OSError) as refused:
            (point / "probe").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS  # really read-only, even for root
        yield point
    finally:
        _umount(point)


class Freezable:
    """A folder bind-mounted onto itself, which :meth:`freeze` turns read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frozen = False

    def freeze(self, *_: object) -> None:
        if not self.frozen:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(self.path)], check=True)
            self.frozen = True


@pytest.fixture
def freezable(tmp_path) -> Iterator[Freezable]:
    """A writable folder that a callback can make read-only while work runs."""
    _need_root_and_mount()
    point = tmp_path / f"bind-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    _mount("--bind", str(point), str(point))
    try:
        yield Freezable(point)
    finally:
        _umount(point)


def one_error_line(err: str, command: str) -> str:
    """The one ``medseg <command>: error: ...`` line, last; before it only progress bars."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"medseg {command}: error: "), err
    assert all(line.startswith(f"{command} [") for line in lines[:-1]), err
    return errors[0]


def run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, one_error_line(err, argv[0]) if code else ""


def train_argv(case, out: Path | str) -> list[str]:
    return ["train", str(case["image"]), str(case["annotation"]), "--out", str(out), *FAST]


def predict_argv(case, out: Path | str, *more: str) -> list[str]:
    return ["predict", str(case["model"]), str(case["image"]), "--out", str(out),
            "--device", "cpu", *more]  # fmt: skip


# ---- refused before training -------------------------------------------------------------


def test_train_into_a_read_only_folder_is_refused_before_training(
    case, read_only, no_training, capsys
):
    code, _, line = run(capsys, train_argv(case, read_only / "m.safetensors"))
    assert code == 2, line
    assert "read-only" in line and "m.safetensors" in line, line
    assert list(read_only.iterdir()) == []


def test_train_out_naming_an_existing_folder_is_refused_before_training(
    case, tmp_path, no_training, capsys
):
    folder = tmp_path / "models.safetensors"
    folder.mkdir()
    code, _, line = run(capsys, train_argv(case, folder))
    assert code == 2 and "is a folder" in line, line
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.mark.parametrize("name", ["m.nii.gz", "m.pt", "m.txt"])
def test_train_out_with_another_extension_is_refused_before_training(
    case, tmp_path, no_training, capsys, name
):
    code, _, line = run(capsys, train_argv(case, tmp_path / name))
    assert code == 2 and ".safetensors" in line, line
    assert not (tmp_path / name).exists()


def test_train_into_a_missing_folder_is_refused_before_training(
    case, tmp_path, no_training, capsys
):
    code, _, line = run(capsys, train_argv(case, tmp_path / "no" / "m.safetensors"))
    assert code == 2 and "does not exist" in line, line


def test_train_with_a_missing_annotation_is_refused_before_reading_the_image(
    case, tmp_path, monkeypatch, capsys
):
    def refuse(*args, **kwargs):
        raise AssertionError("an input was read although another one is missing")

    monkeypatch.setattr(api, "read_volume", refuse)
    argv = ["train", str(case["image"]), str(tmp_path / "gone.nii.gz"),
            "--out", str(tmp_path / "m.safetensors"), *FAST]  # fmt: skip
    code, _, line = run(capsys, argv)
    assert code == 2 and "gone.nii.gz" in line and "no such file" in line, line


# ---- refused before predicting -----------------------------------------------------------


def test_probabilities_into_a_read_only_folder_are_refused_before_predicting(
    case, read_only, tmp_path, no_predicting, capsys
):
    seg = tmp_path / "seg.nii.gz"
    argv = predict_argv(case, seg, "--probabilities", str(read_only / "p.npy"))
    code, out, line = run(capsys, argv)
    assert code == 2 and "read-only" in line and "p.npy" in line, line
    assert not seg.exists() and "saved" not in out


def test_segmentation_into_a_read_only_folder_is_refused_before_predicting(
    case, read_only, no_predicting, capsys
):
    code, _, line = run(capsys, predict_argv(case, read_only / "seg.nii.gz"))
    assert code == 2 and "read-only" in line, line


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (("--probabilities", "p.txt"), "unknown file type"),
        (("--uncertainty", "u.dcm"), "DICOM"),
        (("--probabilities", "seg.nii.gz"), "also the segmentation"),
        (("--probabilities", "./sub/../seg.nii.gz"), "also the segmentation"),
    ],
    ids=["unknown", "dicom", "same-file", "same-file-other-spelling"],
)
def test_impossible_predict_outputs_are_refused_before_predicting(
    case, tmp_path, no_predicting, capsys, monkeypatch, extra, pattern
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    option, name = extra
    code, _, line = run(capsys, predict_argv(case, "seg.nii.gz", option, name))
    assert code == 2 and pattern in line, line
    assert not (tmp_path / "seg.nii.gz").exists()


def test_an_output_naming_an_input_is_refused(case, tmp_path, no_predicting, capsys):
    image = tmp_path / "image.nii.gz"
    shutil.copyfile(case["image"], image)
    before = image.read_bytes()
    code, _, line = run(capsys, ["predict", str(case["model"]), str(image), "--out", str(image)])
    assert code == 2 and "the image" in line, line
    assert image.read_bytes() == before


def test_check_output_returns_the_path_and_leaves_nothing_behind(tmp_path):
    from napari_medseg.outputs import check_output

    assert check_output(tmp_path / "seg.nrrd", "segmentation") == tmp_path / "seg.nrrd"
    assert check_output(tmp_path / "m", "model", kind="model") == tmp_path / "m"  # no suffix
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MedsegInputError, match="^cannot save"):
        check_output(tmp_path / "m.npy", "model", kind="model")


# ---- a save that fails after the work keeps the work -------------------------------------


def _fail_first_save(monkeypatch, message: str) -> list[Path]:
    """``api.save_model`` fails on its first call only (a full disk at the worst time)."""
    real, calls = api.save_model, []

    def save(path, model):
        calls.append(Path(path))
        if len(calls) == 1:
            raise MedsegError(message)
        return real(path, model)

    monkeypatch.setattr(api, "save_model", save)
    return calls


def _rescued(line: str) -> Path:
    """The rescued model a one-line error names."""
    words = [w.rstrip(";,") for w in line.split() if w.rstrip(";,").endswith(".safetensors")]
    assert words and Path(words[0]).is_file(), line
    return Path(words[0])


def test_model_whose_save_fails_after_training_is_rescued(
    case, tmp_path, monkeypatch, capsys, rescue_dir
):
    target = tmp_path / "m.safetensors"
    _fail_first_save(monkeypatch, f"could not save {target}: No space left on device")
    code, out, line = run(capsys, train_argv(case, target))
    assert code == 1, line
    assert "No space left on device" in line and str(rescue_dir) in line, line
    assert not target.exists() and "saved" not in out
    kept = _rescued(line)
    assert kept.parent == rescue_dir
    model = load_model(kept)
    image = read_volume(case["image"]).array
    labels = predict_volume(model, image, PredictConfig(device="cpu")).labels
    assert labels.shape == SHAPE


def test_rescue_falls_back_to_the_temporary_folder(case, tmp_path, monkeypatch, rescue_dir):
    rescue_dir.write_text("a file where the rescue folder should be")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temporary))
    _fail_first_save(monkeypatch, "could not save m.safetensors: disk full")
    config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu")
    with pytest.raises(MedsegError) as failed:
        api.train_files(case["image"], case["annotation"], tmp_path / "m.safetensors", config)
    kept = _rescued(str(failed.value))
    assert kept.parent == temporary and "\n" not in str(failed.value)
    load_model(kept)


def test_model_is_rescued_when_its_folder_becomes_read_only_during_training(
    case, freezable, rescue_dir
):
    target = freezable.path / "m.safetensors"
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu")
    with pytest.raises(MedsegError) as failed:
        api.train_files(case["image"], case["annotation"], target, config,
                        on_progress=freezable.freeze)  # fmt: skip
    message = str(failed.value)
    assert "read-only" in message and "m.safetensors" in message, message
    assert not target.exists()
    assert _rescued(message).parent == rescue_dir
    load_model(_rescued(message))


def test_model_is_rescued_when_its_folder_is_removed_during_training(case, tmp_path, rescue_dir):
    folder = tmp_path / "gone"
    folder.mkdir()
    config = TrainConfig(iterations=2, time_budget=None, base_channels=4, device="cpu")
    with pytest.raises(MedsegError) as failed:
        api.train_files(
            case["image"], case["annotation"], folder / "m.safetensors", config,
            on_progress=lambda _: shutil.rmtree(folder, ignore_errors=True),
        )  # fmt: skip
    message = str(failed.value)
    assert "does not exist" in message, message
    load_model(_rescued(message))


def test_probabilities_that_fail_after_the_segmentation_say_what_was_written(
    case, tmp_path, monkeypatch, capsys
):
    seg, probabilities = tmp_path / "seg.nii.gz", tmp_path / "p.npy"

    def full_disk(path, *args, **kwargs):
        raise MedsegError(f"could not save {path}: disk full")

    monkeypatch.setattr(api, "write_probabilities", full_disk)
    code, out, line = run(capsys, predict_argv(case, seg, "--probabilities", str(probabilities)))
    assert code == 1, line
    assert f"saved the segmentation {seg}" in line, line
    assert line.endswith(f"could not save {probabilities}: disk full"), line
    assert read_volume(seg).shape == SHAPE and not probabilities.exists()
    assert "saved" not in out


def test_probabilities_into_a_folder_made_read_only_while_predicting(case, tmp_path, freezable):
    seg, probabilities = tmp_path / "seg.nii.gz", freezable.path / "p.npy"
    with pytest.raises(MedsegError) as failed:
        api.predict_file(
            case["model"], case["image"], seg, PredictConfig(device="cpu"),
            probabilities_path=probabilities, on_progress=freezable.freeze,
        )  # fmt: skip
    message = str(failed.value)
    assert f"saved the segmentation {seg}" in message and "read-only" in message, message
    assert read_volume(seg).shape == SHAPE and not probabilities.exists()


def test_a_folder_that_takes_no_new_files_is_not_called_missing(tmp_path):
    """/proc exists but refuses new files (ENOENT): the message must not say it is missing."""
    import os

    from napari_medseg.outputs import check_output

    if not os.path.isdir("/proc"):
        pytest.skip("no /proc to try")
    with pytest.raises(MedsegInputError) as refused:
        check_output("/proc/model.safetensors", "model", kind="model")
    assert "does not exist" not in str(refused.value) and "/proc" in str(refused.value)
