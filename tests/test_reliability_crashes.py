"""Runs that are killed, interrupted or doubled: no finished work lost, no half-written file.

Covered elsewhere (docs/reliability.md): an exception inside ``atomic_path``
leaves nothing (tests/test_derivatives.py), concurrent writers of the
dataset-level files (test_derivatives.py), SIGTERM inside the training engine
and resuming a finished epoch (tests/test_engine.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import (
    FAST_REGISTRATION,
    bids_dataset,
    finished_crops,
    kill_group,
    kmeans,
    oblique,
    run_env,
    start_cli,
    wait_for,
)

from bids_pcs.io.atomic import atomic_path
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.io.derivatives import init_derivatives
from bids_pcs.io.validator import validate
from bids_pcs.preprocess import output_paths


def _hidden_temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp" in p.name]


def _check_whole(root: Path) -> int:
    """Open every visible NIfTI and JSON under ``root`` in full; return how many were read."""
    read = 0
    for path in root.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.name.endswith((".nii", ".nii.gz")):
            np.asarray(nib.load(path).dataobj)  # raises on a truncated file
            read += 1
        elif path.suffix == ".json":
            json.loads(path.read_text())
            read += 1
    return read


# --------------------------------------------------- a writer killed mid-file
def _write_then_die(target: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"half of a file")
        os.kill(os.getpid(), signal.SIGKILL)  # no finally, no cleanup: as the OOM killer does


@pytest.mark.bad_input("crash:SIGKILL inside an atomic write")
def test_a_writer_killed_mid_file_leaves_no_derivative_and_the_next_run_sweeps_its_rest(tmp_path):
    out = init_derivatives(tmp_path / "out")
    target = out / "sub-01" / "anat" / "sub-01_desc-x_T1w.json"
    process = multiprocessing.get_context("spawn").Process(target=_write_then_die,
                                                           args=(str(target),))
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    assert not target.exists()
    (leftover,) = _hidden_temporaries(out)
    assert leftover.parent == target.parent and leftover.name.startswith(f".{target.name}.")
    # a live writer's temporary file is kept, a dead one's is removed
    with atomic_path(out / "sub-01" / "anat" / "other.json") as live:
        live.write_text("{}")
        init_derivatives(out)
        assert live.exists()
    assert _hidden_temporaries(out) == []


# ------------------------------------- participant runs: killed, and doubled
@pytest.fixture(scope="module")
def raw(shared_data, tmp_path_factory) -> Path:
    head = kmeans(shared_data)
    return bids_dataset(tmp_path_factory.mktemp("raw") / "bids",
                        {"a": head, "b": oblique(head)})


def _participant(raw: Path, out: Path, env: dict[str, str], log: Path, *extra: str):
    return start_cli(raw, out, "participant", "--skip-bids-validation", "--nprocs", "1",
                     "--omp-nthreads", "1", *FAST_REGISTRATION, *extra, env=env, log=log)


def _complete(out: Path, raw: Path) -> bool:
    return all(path.is_file() for image in collect_t1w(raw)
               for path in output_paths(out, image).all())


@pytest.mark.bad_input("crash:SIGKILL of a participant run while it writes derivatives")
@pytest.mark.slow
def test_a_participant_run_killed_mid_way_leaves_no_partial_file_and_a_rerun_completes(
        raw, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = run_env(tmp_path)
    first = _participant(raw, out, env, tmp_path / "first.log", "-w", str(work))

    def writing() -> bool:  # the first derivative of an image has appeared
        return any((out / f"sub-{s}" / "anat").is_dir()
                   and any((out / f"sub-{s}" / "anat").iterdir()) for s in "ab")

    try:
        assert wait_for(writing, first, timeout=240, poll_s=0.005), \
            (tmp_path / "first.log").read_text()[-3000:]
        kill_group(first)
    finally:
        first.wait(60)
    assert first.returncode == -signal.SIGKILL
    assert not _complete(out, raw)  # it really was stopped mid-way
    _check_whole(out)  # every visible file is whole

    second = _participant(raw, out, env, tmp_path / "second.log", "-w", str(work))
    assert second.wait(240) == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert _complete(out, raw)
    assert _check_whole(out) >= 2 * 5
    assert _hidden_temporaries(out) == []


@pytest.mark.bad_input("crash:two participant runs at once on one OUTPUT_DIR")
@pytest.mark.slow
def test_two_participant_runs_at_once_on_one_output_dir_both_finish(raw, tmp_path):
    out = tmp_path / "out"
    env = run_env(tmp_path)  # one TMPDIR: both runs share the default work dir too
    runs = [_participant(raw, out, env, tmp_path / f"run{k}.log") for k in range(2)]
    try:
        codes = [run.wait(300) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                kill_group(run)
    logs = [(tmp_path / f"run{k}.log").read_text() for k in range(2)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    assert _complete(out, raw)
    # each image was registered once; the other run waited for it
    assert sum(log.count("another run is preprocessing it") for log in logs) >= 1
    assert _hidden_temporaries(out) == []
    assert len(list((out / "logs").glob("participant_*.log"))) == 2
    report = validate(out)
    assert report.ok, report.summary()


# ----------------------------------------------- training: SIGTERM, SIGKILL
RECIPE = "tiny-cpu-2mm"
EPOCHS = 8


@pytest.fixture
def preprocessed(tmp_path) -> tuple[Path, Path]:
    """Four small images whose crops already exist (registration is tested elsewhere)."""
    return finished_crops(tmp_path, RECIPE)


def _checkpoint(work: Path) -> dict:
    path = work / "pretrain" / "pretrain-reconstruction" / "checkpoint.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.bad_input("crash:SIGKILL during training", "crash:SIGTERM during training")
@pytest.mark.slow
def test_training_resumes_after_sigkill_from_its_last_checkpoint_and_saves_on_sigterm(
        preprocessed, tmp_path):
    raw, out = preprocessed
    work = tmp_path / "work"
    env = run_env(tmp_path)
    args = (raw, out, "pretrain", "--method", "reconstruction", "--recipe", RECIPE,
            "--skip-bids-validation", "--device", "cpu", "--omp-nthreads", "1",
            "--set", f"pretrain.epochs={EPOCHS}", "--set", "pretrain.batch_size=4",
            "--set", "model.feature_size=4", "-w", str(work))

    # 1) SIGKILL (the OOM killer, a node lost): no chance to save anything more
    run = start_cli(*args, env=env, log=tmp_path / "1.log")
    try:
        assert wait_for(lambda: _checkpoint(work).get("epoch", 0) >= 1, run, timeout=120), \
            (tmp_path / "1.log").read_text()[-3000:]
        kill_group(run)
    finally:
        run.wait(60)
    assert run.returncode == -signal.SIGKILL
    after_kill = _checkpoint(work)
    assert 1 <= after_kill["epoch"] < EPOCHS

    # 2) --resume, then SIGTERM (what a scheduler sends before the end of a job) once it
    #    has gone further: it saves where it is (mid-epoch) and exits 143
    run = start_cli(*args, "--resume", env=env, log=tmp_path / "2.log")
    try:
        assert wait_for(lambda: _checkpoint(work).get("global_step", 0)
                        > after_kill["global_step"] + 2, run, timeout=120), \
            (tmp_path / "2.log").read_text()[-3000:]
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) == 143
    finally:
        kill_group(run)
    log = (tmp_path / "2.log").read_text()
    assert "bids_pcs: error: Pre-training stopped by a signal" in log
    assert "rerun with --resume" in log and "Traceback" not in log
    after_term = _checkpoint(work)
    assert after_term["global_step"] > after_kill["global_step"] + 2
    # resumed, not restarted: the epochs done before SIGKILL are kept as they were
    assert after_term["history"][: len(after_kill["history"])] == after_kill["history"]
    assert not (out / "models" / "pretrain-reconstruction" / "model.json").exists()
    assert _hidden_temporaries(out) == [] and _hidden_temporaries(work) == []
