"""The SLURM templates of pipelines/ on a real one-node cluster (started by .ci/slurm).

A participant job array over a small synthetic dataset with one broken image,
the dependent group job, and distributed training through ``srun`` +
``torchrun`` (two gloo processes on the CPU). Skipped without a cluster, except
under CI (``BIDS_PCS_REQUIRE_SLURM=1``), where a missing cluster fails.
"""

from __future__ import annotations

import csv
import gzip
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
from slurm_helpers import (
    PIPELINES,
    exit_code,
    job_records,
    require_cluster,
    run_as_job_user,
    sbatch,
    shared_workspace,
    wait_for,
)

from bids_pcs.synth import SynthOptions, make_cohort

pytestmark = pytest.mark.slurm
RECIPE = "tiny-cpu-2mm"
BROKEN = "03"
# one CPU and 1.5 GB per task: two tasks at a time on a two-core node
TASK_RESOURCES = "--cpus-per-task=1 --mem=1500M --time=00:10:00"


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


@pytest.fixture(scope="module")
def array_run():
    """A synthetic dataset run through submit_participants.sh; everything the tests read."""
    shared = require_cluster()
    root = shared_workspace(shared, "participant-array")
    summary = make_cohort(root / "bids", 4, seed=3, options=SynthOptions.from_preset(
        "easy", anatomy=("MNI152NLin2009aSym",), figure=False, voxel_sizes=((1.5, 1.5, 1.5),)))
    broken = next((summary.bids_dir / f"sub-{BROKEN}" / "anat").glob("*_T1w.nii.gz"))
    whole = broken.read_bytes()
    broken.write_bytes(whole[: len(whole) // 3])  # a copy cut short
    with pytest.raises(EOFError):
        gzip.decompress(broken.read_bytes())
    for path in [root, *root.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    out = root / "out"
    submitted = run_as_job_user(
        ["bash", str(PIPELINES / "submit_participants.sh"), str(summary.bids_dir), str(out),
         "--recipe", RECIPE],
        env={"SBATCH_ARGS": TASK_RESOURCES, "WORK_ROOT": str(root / "work")})
    assert submitted.returncode == 0, submitted.stderr
    words = submitted.stdout.split()
    array_job = words[words.index("job") + 1]
    group_job = words[words.index("job", words.index("job") + 1) + 1]
    group = wait_for(group_job, timeout=240)[0]
    tasks = job_records(array_job)
    return {"bids": summary.bids_dir, "out": out, "array_job": array_job, "tasks": tasks,
            "group": group, "images": sorted(p.name for p in summary.bids_dir.rglob("*_T1w.nii*"))}


def test_every_good_image_has_its_derivatives(array_run):
    out = array_run["out"]
    for subject in ("01", "02", "04"):
        anat = out / f"sub-{subject}" / "anat"
        crops = sorted(p.name for p in anat.glob("*desc-medialfrontal*_T1w.nii.gz"))
        assert len(crops) == 2, f"sub-{subject}: {crops}"
        assert list(anat.glob("*_xfm.h5")), f"sub-{subject} has no transform"
        assert list(anat.glob("*desc-registration_qc.json"))
    assert not (out / f"sub-{BROKEN}").exists() or not list(
        (out / f"sub-{BROKEN}").rglob("*.nii.gz"))


def test_the_broken_image_is_reported_by_name_with_its_exit_code(array_run):
    out, job = array_run["out"], array_run["array_job"]
    table = read_tsv(out / "logs" / f"slurm_participant_{job}.tsv")
    codes = {row["participant_id"]: int(row["exit_code"]) for row in table}
    assert codes == {"sub-01": 0, "sub-02": 0, f"sub-{BROKEN}": 1, "sub-04": 0}
    # the scheduler agrees with the table, task by task
    by_task = {int(r["ArrayTaskId"]): r for r in array_run["tasks"]}
    for row in table:
        record = by_task[int(row["task"])]
        assert exit_code(record) == int(row["exit_code"])
        assert record["JobState"] == ("COMPLETED" if row["exit_code"] == "0" else "FAILED")
    log = (out / "logs" / "slurm" / f"participant-{job}_3.out").read_text()
    assert f"sub-{BROKEN}_T1w.nii.gz" in log and "bids_pcs: error:" in log


def test_the_group_job_ran_after_the_array_and_summarised_the_good_images(array_run):
    out, group = array_run["out"], array_run["group"]
    assert group["JobState"] == "FAILED" and exit_code(group) == 1  # one participant failed
    last_task_end = max(when(r["EndTime"]) for r in array_run["tasks"])
    assert when(group["StartTime"]) >= last_task_end
    rows = read_tsv(out / "group_pcs.tsv")
    assert sorted(row["participant_id"] for row in rows) == ["sub-01", "sub-02", "sub-04"]


def test_each_task_wrote_its_own_outputs_once_within_its_allocation(array_run):
    out, job = array_run["out"], array_run["array_job"]
    table = {row["participant_id"]: row
             for row in read_tsv(out / "logs" / f"slurm_participant_{job}.tsv")}
    for subject in ("sub-01", "sub-02", "sub-04"):
        started = when(table[subject]["started"]).timestamp()
        finished = when(table[subject]["finished"]).timestamp()
        for path in (out / subject).rglob("*"):
            if path.is_file():
                # written by its own task, never again by another task or the group job
                assert started - 1 <= path.stat().st_mtime <= finished + 1, path
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers
    # every task planned within its allocation (SLURM_CPUS_PER_TASK, SLURM_MEM_PER_NODE)
    log = (out / "logs" / "slurm" / f"participant-{job}_1.out").read_text()
    assert ("Resources: 1 CPU(s), 1.5 GB (CPUs: SLURM_CPUS_PER_TASK; memory: "
            "SLURM_MEM_PER_NODE)") in log


# ------------------------------------------------------------- distributed training
# one crop per micro-batch: 6 crops (3 images x 2 hemispheres) make 6 micro-batches,
# 3 optimiser steps per epoch either way
TRAIN_OPTIONS = ("--recipe", RECIPE, "--participant-label", "01", "02", "04",
                 "--set", "pretrain.batch_size=1", "--set", "pretrain.epochs=2")
# float32 sums in another order (gloo's all-reduce of two gradients vs. autograd
# accumulating two micro-batches) differ by ~1e-7 relative per step; six AdamW
# steps of lr 1e-3 move a weight by up to 6e-3, so 1e-5 is far above rounding and
# far below any change of data, order or random draws
WEIGHT_TOLERANCE = 1e-5


def submit_training(array_run, name: str, processes: int, *options: str,
                    cpus: int = 2) -> str:
    out = array_run["out"]
    # --chdir: not the source checkout, whose bids_pcs/ would shadow the installed one
    return sbatch(f"--chdir={out.parent}", f"--cpus-per-task={cpus}", "--mem=4G",
                  "--gpus-per-node=0",
                  "--time=00:10:00", f"--output={out}/logs/slurm/train-{name}-%j.out",
                  PIPELINES / "train_ddp.sbatch", array_run["bids"], out, "pretrain",
                  "--method", "reconstruction", *TRAIN_OPTIONS, "--model-name", name,
                  "-w", out.parent / f"work-{name}", *options,
                  env={"NPROC_PER_NODE": str(processes),
                       "MASTER_PORT": str(29600 + processes + len(name))})


def seconds(record: dict[str, str]) -> float:
    return (when(record["EndTime"]) - when(record["StartTime"])).total_seconds()


def test_two_processes_under_srun_train_what_one_process_accumulating_trains(array_run):
    out = array_run["out"]
    ddp_job = submit_training(array_run, "ddp", 2)
    single_job = submit_training(array_run, "single", 1, "--set",
                                 "pretrain.accumulate_steps=2", cpus=1)
    ddp, single = wait_for(ddp_job, timeout=240)[0], wait_for(single_job, timeout=240)[0]
    ddp_log = (out / "logs" / "slurm" / f"train-ddp-{ddp_job}.out").read_text()
    assert ddp["JobState"] == "COMPLETED", ddp_log[-3000:]
    assert single["JobState"] == "COMPLETED"
    assert "2 process(es) (cpu, 1 thread(s) each)" in ddp_log
    print(f"SLURM pretrain: 2 processes {seconds(ddp):.0f} s, 1 process {seconds(single):.0f} s")

    from safetensors.torch import load_file

    from bids_pcs.models.model_io import read_model_card

    card = read_model_card(out / "models" / "ddp")
    assert card["training"]["processes"] == 2 and card["training"]["optimizer_steps"] == 6
    assert read_model_card(out / "models" / "single")["training"]["optimizer_steps"] == 6
    two = load_file(out / "models" / "ddp" / "model.safetensors")
    one = load_file(out / "models" / "single" / "model.safetensors")
    assert two.keys() == one.keys()
    for key in one:
        difference = float((two[key].double() - one[key].double()).abs().max())
        assert difference <= WEIGHT_TOLERANCE, f"{key}: {difference:.2e}"
    ddp_losses = read_tsv(out / "models" / "ddp" / "training_log.tsv")
    single_losses = read_tsv(out / "models" / "single" / "training_log.tsv")
    for a, b in zip(ddp_losses, single_losses, strict=True):
        assert abs(float(a["loss"]) - float(b["loss"])) <= 1e-5


def rank_pid(job_id: str, rank: int) -> int | None:
    """The pid of the training process of ``rank`` in job ``job_id`` (read from /proc)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(item.split("=", 1) for item in
                             environ.read_bytes().decode(errors="replace").split("\0")
                             if "=" in item)
        except OSError:
            continue
        if (variables.get("SLURM_JOB_ID") == job_id and variables.get("RANK") == str(rank)
                and "TORCHELASTIC_RUN_ID" in variables):
            return int(environ.parent.name)
    return None


def test_a_killed_rank_ends_the_job_in_seconds(array_run):
    out = array_run["out"]
    job = submit_training(array_run, "killed", 2, "--set", "pretrain.epochs=1000")
    checkpoints = out.parent / "work-killed" / "pretrain" / "killed"
    deadline = time.monotonic() + 180
    # training is under way once the first epoch's checkpoint is written
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert time.monotonic() < deadline, job_records(job)
        time.sleep(0.5)
    pid = rank_pid(job, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    record = wait_for(job, timeout=120)[0]
    ended_after = time.monotonic() - killed
    print(f"SLURM DDP: job ended {ended_after:.1f} s after rank 1 was killed")
    assert ended_after < 30, f"the job took {ended_after:.0f} s to end after the kill"
    assert record["JobState"] == "FAILED" and exit_code(record) != 0
    log = (out / "logs" / "slurm" / f"train-killed-{job}.out").read_text()
    root_cause = log[log.index("Root Cause"):]
    assert "rank      : 1" in root_cause[:400] and "SIGKILL" in root_cause[:400], root_cause
    assert not (out / "models" / "killed" / "model.safetensors").exists()


def test_finetuning_runs_with_two_processes_under_srun(array_run):
    out = array_run["out"]
    labels = array_run["bids"] / "derivatives" / "pcs-labels"
    job = sbatch(f"--chdir={out.parent}", "--cpus-per-task=2", "--mem=4G", "--gpus-per-node=0",
                 "--time=00:10:00", f"--output={out}/logs/slurm/train-finetune-%j.out",
                 PIPELINES / "train_ddp.sbatch", array_run["bids"], out, "finetune",
                 "--init", "scratch", "--strategy", "full", "--labels", labels,
                 "--recipe", RECIPE, "--participant-label", "01", "02", "04",
                 "--set", "finetune.epochs=1", "--set", "finetune.batch_size=1",
                 "--model-name", "finetune-ddp", "-w", out.parent / "work-finetune",
                 env={"NPROC_PER_NODE": "2", "MASTER_PORT": "29711"})
    record = wait_for(job, timeout=240)[0]
    log = (out / "logs" / "slurm" / f"train-finetune-{job}.out").read_text()
    assert record["JobState"] == "COMPLETED", log[-3000:]
    print(f"SLURM finetune: 2 processes {seconds(record):.0f} s")

    from bids_pcs.models.model_io import read_model_card

    card = read_model_card(out / "models" / "finetune-ddp")
    assert card["stage"] == "finetune" and card["training"]["processes"] == 2
