"""``medseg predict MODEL INPUT... --out-dir DIR``: a cohort of scans on dask.distributed.

Unit tests of the core (:mod:`napari_medseg.cohort`: inputs, names, resumability, the task
run in this process), the command's refusals before any work, then real clusters: the
default ``LocalCluster`` through the ``medseg`` script, and a ``dask scheduler`` with two
``dask worker`` processes, one of which is SIGKILLed while it runs a scan.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_medseg import api, checkpoint
from napari_medseg.checkpoint import save_model
from napari_medseg.cli import main
from napari_medseg.cohort import (
    CohortConfig,
    ScanJob,
    expand_inputs,
    plan_cohort,
    run_scan,
    scan_name,
)
from napari_medseg.errors import MedsegInputError
from napari_medseg.inference import PredictConfig
from napari_medseg.io import read_volume, write_volume
from napari_medseg.progress import run_to_completion
from napari_medseg.synthetic import make_synthetic_case
from napari_medseg.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 32, 32)
SPACING = (2.0, 1.0, 1.0)
#: Small tiles, much overlap: about a second a scan on one thread, so that a batch of 12 on
#: two workers lasts long enough to kill one of them in the middle.
SLOW_TILES = ["--tile-shape", "8", "16", "16", "--overlap", "0.75"]
SLOW_CONFIG = PredictConfig(device="cpu", tile_shape=(8, 16, 16), overlap=0.75)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny 3D U-Net (4 base channels, one step), as tests/test_checkpoint.py trains."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        case = make_synthetic_case(shape=SHAPE, spacing=SPACING, seed=0)
        config = TrainConfig(iterations=1, time_budget=None, base_channels=4, device="cpu",
                             seed=0)  # fmt: skip
        model = run_to_completion(
            train(case.image, case.annotation, config, spacing=SPACING, class_names=["tube"])
        )
    finally:
        torch.set_num_threads(previous)
    return save_model(tmp_path_factory.mktemp("model") / "model.safetensors", model)


def write_scans(folder: Path, count: int, experts: Path | None = None) -> list[Path]:
    """``count`` synthetic scans ``s00.nii.gz`` ... (and their expert masks)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        case = make_synthetic_case(shape=SHAPE, spacing=SPACING, seed=i)
        paths.append(write_volume(folder / f"s{i:02d}.nii.gz", case.image, spacing=SPACING))
        if experts is not None:
            experts.mkdir(parents=True, exist_ok=True)
            write_volume(experts / f"s{i:02d}.nii.gz", case.expert_mask, spacing=SPACING,
                         labels=True)  # fmt: skip
    return paths


def touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def assert_one_line_error(code: int, err: str, *patterns: str) -> str:
    """Exit 2 and one line ``medseg predict: error: ...`` on stderr, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert errors[0].startswith("medseg predict: error: "), err
    for pattern in patterns:
        assert pattern in errors[0], errors[0]
    return errors[0]


def medseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "medseg"), *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}  # fmt: skip


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def restore_torch_and_api():
    """Running a task here sets torch's threads: they are put back afterwards."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


# ---- inputs and names ----------------------------------------------------------------


def test_inputs_expand_files_folders_patterns_and_dicom_series(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    x = touch(a / "x.nii.gz")
    y = touch(a / "y.nrrd")
    touch(a / "notes.txt")
    touch(a / ".hidden.nii.gz")
    touch(a / "y.raw")  # a data file, not a scan
    series = a / "series"
    for k in range(3):
        touch(series / f"{k}.dcm")
    z = touch(b / "z.mha")
    touch(b / "w.nrrd")
    found = expand_inputs([a, str(tmp_path / "b" / "*.mha"), x])
    assert found == [series, x, y, z]  # x once
    assert expand_inputs([series]) == [series]  # a DICOM series folder is one scan
    assert expand_inputs([str(tmp_path / "**" / "*.nrrd")]) == [y, b / "w.nrrd"]
    touch(a / "x_seg.nii.gz")  # an earlier output in the output folder is not a scan
    assert expand_inputs([a], out_dir=a) == [series, x, y]
    assert a / "x_seg.nii.gz" in expand_inputs([a])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (["missing.nii.gz"], "image not found"),
        (["*.nothing"], "no scan matches"),
        (["empty"], "no scan in folder"),
        (["notes.txt"], "unknown file type"),
    ],
)
def test_inputs_naming_nothing_are_refused(tmp_path, monkeypatch, inputs, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "notes.txt")
    with pytest.raises(MedsegInputError, match=message):
        expand_inputs(inputs)


def test_scan_names():
    assert scan_name("a/ct.nii.gz") == "ct"
    assert scan_name("a/ct.seg.nrrd") == "ct.seg"
    assert scan_name("a/dicom_ct") == "dicom_ct"
    assert scan_name("a/ct.1.2") == "ct.1.2"  # a folder named after a UID keeps its name


def test_same_names_are_refused_before_any_work(model_path, tmp_path, capsys):
    first, second = touch(tmp_path / "a" / "ct.nii.gz"), touch(tmp_path / "b" / "ct.nrrd")
    out = tmp_path / "out"
    code = main(["predict", str(model_path), str(first), str(second), str(tmp_path / "a"),
                 "--out-dir", str(out)])  # fmt: skip
    line = assert_one_line_error(code, capsys.readouterr().err, "ct_seg.nii.gz", str(first),
                                 str(second))  # fmt: skip
    assert "overwrite" in line
    assert not out.exists()  # refused before anything was created


def test_one_image_form_and_cohort_options_do_not_mix(model_path, tmp_path, capsys):
    image = touch(tmp_path / "a.nii.gz")
    other = touch(tmp_path / "b.nii.gz")
    out = ["--out", str(tmp_path / "seg.nii.gz")]
    predict = ["predict", str(model_path), str(image)]
    assert_one_line_error(main([*predict, str(other), *out]), capsys.readouterr().err,
                          "--out-dir")  # fmt: skip
    assert_one_line_error(main([*predict, *out, "--workers", "2"]), capsys.readouterr().err,
                          "--workers works with --out-dir")  # fmt: skip
    cohort = [*predict, "--out-dir", str(tmp_path / "out")]
    assert_one_line_error(main([*cohort, "--probabilities", "p.npy"]),
                          capsys.readouterr().err, "--probabilities")  # fmt: skip
    assert_one_line_error(main([*cohort, "--workers", "2", "--scheduler", "tcp://x:1"]),
                          capsys.readouterr().err, "--workers")  # fmt: skip
    assert_one_line_error(main([*cohort, "--format", "dcm"]), capsys.readouterr().err,
                          "--format")  # fmt: skip
    assert_one_line_error(main([*cohort, "--metrics-against", str(tmp_path / "none")]),
                          capsys.readouterr().err, "no such folder")  # fmt: skip
    assert_one_line_error(main([*cohort, "--scheduler", "garbage"]), capsys.readouterr().err,
                          "cannot reach the dask scheduler at garbage")  # fmt: skip
    with pytest.raises(SystemExit) as done:  # argparse: --out and --out-dir exclude each other
        main([*cohort, *out])
    assert done.value.code == 2


def test_without_distributed_one_line_says_what_to_install(model_path, tmp_path, capsys,
                                                          monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    image = touch(tmp_path / "a.nii.gz")
    code = main(["predict", str(model_path), str(image), "--out-dir", str(tmp_path / "out")])
    assert_one_line_error(code, capsys.readouterr().err,
                          "cohorts need the cohort extra: pip install 'napari-medseg[cohort]'")


def test_format_option_names_the_output_extension():
    assert CohortConfig(out_dir="d", format=".nrrd").format == "nrrd"
    with pytest.raises(MedsegInputError, match="nii.gz"):
        CohortConfig(out_dir="d", format="png")


# ---- the task in this process, and resuming ------------------------------------------


def jobs_of(plan) -> list[ScanJob]:
    return [ScanJob(s, plan.model, plan.predict, plan.fingerprints[s.name]) for s in plan.todo]


def test_finished_scans_are_skipped_and_the_model_is_loaded_once(
    model_path, tmp_path, monkeypatch, restore_torch_and_api
):
    scans = write_scans(tmp_path / "scans", 3, experts=tmp_path / "experts")
    loads = []
    real_load = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda *a, **k: loads.append(a) or
                        real_load(*a, **k))  # fmt: skip
    config = CohortConfig(out_dir=str(tmp_path / "out"), metrics_against=str(tmp_path / "experts"))
    plan = plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"), config)
    assert [s.name for s in plan.todo] == ["s00", "s01", "s02"] and not plan.done
    records = [run_scan(job) for job in jobs_of(plan)[:2]]
    assert len(loads) == 1  # once for both scans (and predict_file went through the cache)
    for record in records:
        assert record["status"] == "ok", record
        tube = record["structures"]["1"]
        assert tube["name"] == "tube" and 0 <= tube["dice"] <= 1
        assert tube["volume_ml"] == pytest.approx(tube["voxels"] * 2.0 / 1000)
        assert read_json(Path(record["output"]).with_suffix("").with_suffix(".json")) == record
    plan = plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"), config)
    assert [s.name for s in plan.todo] == ["s02"] and sorted(plan.done) == ["s00", "s01"]
    other = CohortConfig(out_dir=str(tmp_path / "out"), format="nrrd")  # other output files
    assert not plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"),
                           other).done  # fmt: skip
    settings = PredictConfig(device="cpu", overlap=0.5)  # other settings
    assert not plan_cohort(model_path, [tmp_path / "scans"], settings, config).done

    os.utime(scans[0], ns=(time.time_ns(), time.time_ns() + 10**9))  # the image changed
    (tmp_path / "out" / "s01_seg.json").unlink()  # as if killed before the summary's write
    plan = plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"), config)
    assert not plan.done
    os.utime(model_path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))  # a new model
    run_scan(jobs_of(plan)[0])
    assert len(loads) == 2


def test_a_bad_scan_is_recorded_not_raised(model_path, tmp_path, restore_torch_and_api):
    good = write_scans(tmp_path / "scans", 1)[0]
    touch(tmp_path / "scans" / "broken.nii.gz", b"not a volume at all" * 10)
    config = CohortConfig(out_dir=str(tmp_path / "out"))
    plan = plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"), config)
    broken, fine = (run_scan(job) for job in jobs_of(plan))
    assert broken["status"] == "failed" and "broken.nii.gz" in broken["error"]
    assert fine["status"] == "ok" and Path(fine["image"]) == good
    assert read_json(tmp_path / "out" / "broken_seg.json")["status"] == "failed"
    assert not (tmp_path / "out" / "broken_seg.nii.gz").exists()
    plan = plan_cohort(model_path, [tmp_path / "scans"], PredictConfig(device="cpu"), config)
    assert [s.name for s in plan.todo] == ["broken"]  # a failed scan is tried again


# ---- real clusters -------------------------------------------------------------------


def reference(model: Path, image: Path, out: Path, config: PredictConfig, threads: int):
    """The segmentation of one process (predict_file here, torch on ``threads`` threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return api.predict_file(model, image, out, config).labels
    finally:
        torch.set_num_threads(previous)


@pytest.mark.slow
def test_local_cluster_predicts_scores_reports_failures_and_resumes(model_path, tmp_path):
    scans = write_scans(tmp_path / "scans", 3, experts=tmp_path / "experts")
    touch(tmp_path / "scans" / "broken.nii.gz", b"not a volume at all" * 10)
    write_volume(tmp_path / "scans" / "time.nii.gz", np.zeros((2, 8, 16, 16), np.float32))
    out = tmp_path / "out"
    args = ["predict", str(model_path), str(tmp_path / "scans"), "--out-dir", str(out),
            "--workers", "1", "--device", "cpu", "--metrics-against", str(tmp_path / "experts")]
    done = medseg(*args)  # fmt: skip
    assert done.returncode == 1, done.stderr  # two scans failed, the others were written
    assert "Traceback" not in done.stderr
    summary = read_json(out / "cohort_summary.json")
    assert summary["counts"] == {"ok": 3, "failed": 2, "skipped": 0}
    by_name = {r["scan"]: r for r in summary["scans"]}
    assert "broken.nii.gz" in by_name["broken"]["error"]
    assert "has 4 dimensions" in by_name["time"]["error"]
    assert summary["mean_dice"]["mean"] == pytest.approx(
        np.mean([by_name[s]["mean_dice"] for s in ("s00", "s01", "s02")])
    )
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:7]] == ["broken", "s00", "s01", "s02", "time",
                                                        "mean"]  # fmt: skip
    for scan in scans:
        name = scan_name(scan)
        written = read_volume(out / f"{name}_seg.nii.gz").array
        threads = by_name[name]["threads"]
        expected = reference(model_path, scan, tmp_path / f"{name}_ref.nii.gz",
                             PredictConfig(device="cpu"), threads)  # fmt: skip
        assert np.array_equal(written, expected), name

    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("s*_seg.*")}
    again = medseg(*args)
    assert again.returncode == 1, again.stderr  # the two bad files fail again
    summary = read_json(out / "cohort_summary.json")
    assert summary["counts"] == {"ok": 0, "failed": 2, "skipped": 3}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("s*_seg.*")} == stamps


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A process of its own session, its output into ``log``."""
    with open(log, "wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def kill_a_busy_worker(client, pids: dict[str, int], out: Path, batch, total: int) -> dict:
    """SIGKILL a worker process while it runs a scan, once a third but not all of the scans
    are written (both workers are busy by then); say which, and how many were written."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and batch.poll() is None:
        written = len(list(out.glob("*_seg.nii.gz"))) if out.is_dir() else 0
        if total // 3 <= written < total - 2:
            busy = [address for address, keys in client.processing().items() if keys]
            if busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                return {"address": busy[0], "pid": pids[busy[0]], "written": written}
        time.sleep(0.02)
    pytest.fail(f"no worker could be killed mid-batch (batch exit code {batch.poll()})")


@pytest.mark.slow
def test_a_cohort_survives_a_killed_worker_and_resumes(model_path, tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes (no nanny: a killed
    worker stays dead); one is SIGKILLed while it predicts a scan. All 12 segmentations are
    written, each equal to a single-process prediction; a rerun skips all 12."""
    distributed = pytest.importorskip("distributed")
    scans = write_scans(tmp_path / "scans", 12)
    out = tmp_path / "out"
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    processes = [start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
                        "--no-dashboard"], tmp_path / "scheduler.log")]  # fmt: skip
    client = None
    try:
        for k in range(2):
            processes.append(start(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                 "--no-nanny", "--no-dashboard", "--memory-limit", "0", "--name", f"w{k}",
                 "--local-directory", str(tmp_path / f"w{k}")],
                tmp_path / f"worker{k}.log",
            ))  # fmt: skip
        client = distributed.Client(address, timeout=60)
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)
        assert sorted(pids.values()) == sorted(p.pid for p in processes[1:])  # no nanny
        args = ["predict", str(model_path), str(tmp_path / "scans"), "--out-dir", str(out),
                "--scheduler", address, "--device", "cpu", *SLOW_TILES]  # fmt: skip
        batch = subprocess.Popen([str(BIN / "medseg"), *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
        processes.append(batch)
        killed = kill_a_busy_worker(client, pids, out, batch, len(scans))
        stdout, stderr = batch.communicate(timeout=300)
        victim = next(p for p in processes if p.pid == killed["pid"])
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert batch.returncode == 0, stderr
        summary = read_json(out / "cohort_summary.json")
        assert summary["counts"] == {"ok": 12, "failed": 0, "skipped": 0}, stdout
        assert 4 <= killed["written"] < 10
        assert {r["worker"] for r in summary["scans"]} <= set(pids)
        for record in summary["scans"]:
            image = Path(record["image"])
            expected = reference(model_path, image, tmp_path / f"{record['scan']}_ref.nii.gz",
                                 SLOW_CONFIG, record["threads"])  # fmt: skip
            assert np.array_equal(read_volume(record["output"]).array, expected), record["scan"]

        stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("s*_seg.*")}
        assert len(stamps) == 36  # segmentation, label description and summary per scan
        again = medseg(*args)
        assert again.returncode == 0, again.stderr
        assert "0 predicted" in again.stdout and "12 skipped" in again.stdout
        summary = read_json(out / "cohort_summary.json")
        assert summary["counts"] == {"ok": 0, "failed": 0, "skipped": 12}
        assert summary["engine"] is None  # nothing was handed to the cluster
        assert {p.name: p.stat().st_mtime_ns for p in out.glob("s*_seg.*")} == stamps
    finally:
        if client is not None:
            client.close()
        for process in reversed(processes):
            stop(process)
