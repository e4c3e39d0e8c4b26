"""When the machine fails the app: full disks, read-only folders, memory, file handles, kills.

Each condition is met for real (issue 19): small tmpfs file systems (as root),
read-only bind mounts in a private mount namespace, ``resource`` limits on the
run's processes, and SIGKILL sent to the process that runs a step. Each ends
in one sentence naming the folder or the image and step, and the fix; no
traceback; and an image's derivative set interrupted half-way is never taken
for a finished one (docs/reliability.md, "The machine").
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import (
    FAST_REGISTRATION,
    bids_dataset,
    can_mount,
    can_unshare,
    cli,
    cli_command,
    fill_disk,
    finished_crops,
    kill_group,
    kmeans,
    oblique,
    one_error_line,
    pages,
    run_env,
    small_disk,
    small_t1w,
    start_cli,
    wait_for,
)

from bids_pcs.config import load_settings
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.io.derivatives import init_derivatives
from bids_pcs.io.manifest import describe_files, set_problem
from bids_pcs.preprocess import output_paths, preprocessed_state, preprocessing_settings

needs_mount = pytest.mark.skipif(not can_mount(), reason="mounting a tmpfs needs root")
FAST = ("--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1", *FAST_REGISTRATION)


def _settings(out: Path):
    return load_settings("default", {
        "registration": {"n4": False, "refine_on_region": False, "fine_mm": 4.0},
        "run": {"output_dir": str(out)}})


@pytest.fixture(scope="module")
def raw(shared_data, tmp_path_factory) -> Path:
    return bids_dataset(tmp_path_factory.mktemp("raw") / "bids", {"a": kmeans(shared_data)})


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> tuple[Path, Path]:
    """An undisturbed participant run of ``raw``: (OUTPUT_DIR, work dir)."""
    root = tmp_path_factory.mktemp("reference")
    out, work = root / "out", root / "work"
    done = cli(raw, out, "participant", *FAST, "-w", work, env=run_env(root))
    assert done.returncode == 0, done.stderr[-3000:]
    return out, work


def _anat(out: Path) -> Path:
    return out / "sub-a" / "anat"


def _work_copy(reference: tuple[Path, Path], tmp_path: Path) -> Path:
    """The reference's work dir: registration is cached, so a run goes straight to writing."""
    work = tmp_path / "work"
    shutil.copytree(reference[1], work, symlinks=True)
    return work


# ------------------------------------------------- a full disk, half-way
@needs_mount
@pytest.mark.slow
@pytest.mark.bad_input("disk:OUTPUT_DIR full half-way through an image's derivatives")
def test_a_disk_full_half_way_through_an_image_is_named_and_a_rerun_completes_it_identically(
        raw, reference, tmp_path):
    ref_out, _ = reference
    work = _work_copy(reference, tmp_path)
    env = run_env(tmp_path)
    ref_files = {p.name: p.read_bytes() for p in _anat(ref_out).iterdir()}
    right = next(n for n in ref_files if "medialfrontalR_T1w.nii" in n)
    # what the sink writes before the right crop (transforms, sidecars, left crop)
    before = sum(pages(len(data)) for name, data in ref_files.items()
                 if "medialfrontalR" not in name and "registration_qc" not in name)
    # what the run writes before the sink: dataset files, its log and config (with room)
    others = sum(pages(p.stat().st_size) for p in ref_out.rglob("*")
                 if p.is_file() and "sub-a" not in p.parts) + 64 * 1024
    with small_disk(tmp_path / "out", "6m") as out:
        filler = fill_disk(out, leave_bytes=others + before + pages(len(ref_files[right])) // 2)
        first = cli(raw, out, "participant", *FAST, "-w", work, env=env)
        assert first.returncode == 1, first.stderr[-3000:]
        error = one_error_line(first.stderr)
        assert (f"No space left on the device of {_anat(out)} (OUTPUT_DIR, " in error
                and "while writing the derivatives of sub-a" in error
                and "free space there or choose another OUTPUT_DIR" in error), error
        # it really stopped half-way: the left crop is written, the right one and the
        # QC record (the set's manifest, written last) are not; no temporary is left
        names = {p.name for p in _anat(out).iterdir()}
        assert any("medialfrontalL_T1w.nii" in n for n in names) and right not in names
        assert not any("registration_qc" in n for n in names)
        assert not [p for p in out.rglob(".*") if ".tmp" in p.name]
        (image,) = collect_t1w(raw)
        state, why = preprocessed_state(_settings(out), image)
        assert state is None and "registration_qc.json, written last, is missing" in why

        # every later level takes it for not done: group says so and summarises nothing
        group = cli(raw, out, "group", env=env)
        assert group.returncode == 1
        assert "holds no complete participant results (sub-a: its preprocessing outputs " \
               "are incomplete" in one_error_line(group.stderr)

        # space freed, the same command completes the set, identical to an undisturbed run
        filler.unlink()
        second = cli(raw, out, "participant", *FAST, "-w", work, env=env)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "its preprocessing outputs are incomplete" in second.stderr
        files = {p.name: p.read_bytes() for p in _anat(out).iterdir()}
        assert files.keys() == ref_files.keys()
        assert [n for n in files if files[n] != ref_files[n]] == []
        assert preprocessed_state(_settings(out), image)[0] is not None


@pytest.mark.bad_input("disk:a set with a file missing, changed, or without its record")
def test_a_derivative_set_is_complete_only_as_its_manifest_lists_it(tmp_path):
    raw = bids_dataset(tmp_path / "bids", {"01": small_t1w()})
    out = init_derivatives(tmp_path / "out", raw)
    settings = _settings(out)
    (image,) = collect_t1w(raw)
    where = output_paths(out, image)
    for index, path in enumerate(where.members()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}" if path.suffix == ".json" else bytes([index]) * 100)
    record = {"Passed": True, "Settings": preprocessing_settings(settings),
              "Files": describe_files(where.members(), where.qc_file.parent)}
    where.qc_file.write_text(json.dumps(record))
    assert preprocessed_state(settings, image) [0] is not None

    crop = where.crops["R"]
    crop.write_bytes(b"\xff" * 100)  # same size, other bytes
    assert preprocessed_state(settings, image)[1] == (
        f"its preprocessing outputs are incomplete ({crop.name} differs from the file "
        "recorded (SHA-256))")
    crop.unlink()
    assert f"{crop.name} is missing" in preprocessed_state(settings, image)[1]
    where.qc_file.unlink()
    assert set_problem(where.qc_file, where.members()) == (
        f"{where.qc_file.name}, written last, is missing")
    for path in where.members():
        path.unlink(missing_ok=True)
    assert preprocessed_state(settings, image) == (None, None)  # nothing there: not begun


@pytest.mark.bad_input("disk:an interrupted set met by the training levels")
def test_the_training_levels_take_an_incomplete_set_for_not_done(raw, reference, tmp_path,
                                                                 caplog):
    """``pretrain``, ``finetune`` and ``study`` take their crops from preprocessed_passing_qc."""
    from bids_pcs.levels.training_inputs import preprocessed_passing_qc
    from bids_pcs.training.distributed import DistContext

    ref_out, _ = reference
    work = _work_copy(reference, tmp_path)
    out = tmp_path / "out"
    shutil.copytree(ref_out, out, symlinks=True)
    (image,) = collect_t1w(raw)
    where = output_paths(out, image)
    # the state a run stopped mid-set leaves: its record removed first, the right crop not
    # written yet
    where.qc_file.unlink()
    where.crops["R"].unlink()
    settings = _settings(out).replace(run={"bids_dir": str(raw), "work_dir": str(work),
                                           "nprocs": 1, "omp_nthreads": 1})
    with caplog.at_level("INFO", logger="bids_pcs"):
        (result,), qc_failed = preprocessed_passing_qc(settings, [image], DistContext())
    assert (f"sub-a: its preprocessing outputs are incomplete ({where.qc_file.name}, written "
            "last, is missing); preprocessing it again.") in caplog.messages
    assert qc_failed == [] and result is not None and result.crops["R"].is_file()
    assert {p.name: p.read_bytes() for p in _anat(out).iterdir()} == {
        p.name: p.read_bytes() for p in _anat(ref_out).iterdir()}


# --------------------------------------------- a full work dir, in a node
@needs_mount
@pytest.mark.bad_input("disk:work dir full while a Nipype node runs")
def test_a_work_dir_filling_up_during_registration_is_named(raw, tmp_path):
    env = run_env(tmp_path)
    with small_disk(tmp_path / "work", "24m") as work:
        run = start_cli(raw, tmp_path / "out", "participant", *FAST, "-w", work, env=env,
                        log=tmp_path / "run.log")
        register = work / "bids_pcs_preproc_wf" / "sub_a_wf" / "register"
        try:
            assert wait_for(register.is_dir, run, timeout=120, poll_s=0.01), \
                (tmp_path / "run.log").read_text()[-3000:]
            fill_disk(work)  # full while antsRegistration runs
            assert run.wait(180) == 1
        finally:
            kill_group(run)
        log = (tmp_path / "run.log").read_text()
        error = one_error_line(log)
        assert f"No space left on the device of {work}" in error, error
        assert "(the work directory, " in error and "choose another --work-dir" in error


# ----------------------------------------------- before the long work
@needs_mount
@pytest.mark.bad_input("disk:OUTPUT_DIR too small before any work")
def test_a_clearly_too_small_output_dir_is_refused_before_any_registration(raw, tmp_path):
    env = run_env(tmp_path)
    with small_disk(tmp_path / "out", "400k") as out:
        started = time.perf_counter()
        done = cli(raw, out, "participant", *FAST, "-w", tmp_path / "work", env=env)
        seconds = time.perf_counter() - started
    assert done.returncode == 1
    error = one_error_line(done.stderr)
    assert f"OUTPUT_DIR {out} has " in error and "free, but this run writes about" in error
    assert "MiB for 1 image(s)" in error and "choose another OUTPUT_DIR" in error
    assert not (tmp_path / "work" / "bids_pcs_preproc_wf").exists()  # nothing registered
    assert seconds < 60


@needs_mount
@pytest.mark.bad_input("disk:OUTPUT_DIR a little small before any work (a warning)",
                       "disk:work dir too small before any work",
                       "disk:OUTPUT_DIR and work dir on one small disk")
def test_free_space_is_weighed_against_the_estimate_per_folder_and_device(raw, tmp_path,
                                                                          caplog):
    from bids_pcs.preflight import check_before_work, disk_estimate
    from bids_pcs.system_errors import DiskFullError, human_size

    (image,) = collect_t1w(raw)
    need = disk_estimate(_settings(tmp_path), 128 * 128 * 62, with_model=False)
    with small_disk(tmp_path / "out", "16m") as out, small_disk(tmp_path / "work", "16m") as work:
        settings = _settings(out).replace(run={"work_dir": str(work)})
        fill_disk(out, leave_bytes=need.output_bytes * 3 // 4)  # short, not clearly: warned
        fill_disk(work, leave_bytes=need.work_bytes // 4)  # clearly too small: refused
        with caplog.at_level("WARNING", logger="bids_pcs"), pytest.raises(DiskFullError) as no:
            check_before_work(settings, [image])
        assert str(no.value).startswith(f"The work directory {work} has ")
        assert (f"free, but this run writes about {human_size(need.work_bytes)} for 1 image(s); "
                "free space there or choose another --work-dir") in str(no.value)
        assert any(m.startswith(f"OUTPUT_DIR {out} has ") and "this run may write about "
                   f"{human_size(need.output_bytes)} for 1 image(s)" in m
                   for m in caplog.messages), caplog.messages
    # both on one small disk: counted together
    with small_disk(tmp_path / "both", "8m") as both:
        fill_disk(both, leave_bytes=need.work_bytes // 2)
        settings = _settings(both / "out").replace(run={"work_dir": str(both / "work")})
        with pytest.raises(DiskFullError, match=f"OUTPUT_DIR {both / 'out'} and the work "
                           f"directory {both / 'work'} have .* free, but this run writes "
                           f"about {human_size(need.output_bytes + need.work_bytes)} for 1 "
                           r"image\(s\) together"):
            check_before_work(settings, [image])


@pytest.mark.bad_input("readonly:work dir on a read-only mount")
def test_a_read_only_work_dir_is_refused_before_any_registration(raw, tmp_path):
    if not can_unshare("-m"):
        pytest.skip("unshare -m (a private mount namespace) is not permitted here")
    work = tmp_path / "work"
    work.mkdir()
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(work),
                           *cli_command(raw, tmp_path / "out", "participant", *FAST, "-w", work)],
                          capture_output=True, text=True, timeout=180, check=False,
                          env=run_env(tmp_path))
    assert done.returncode == 1, done.stderr[-2000:]
    assert one_error_line(done.stderr).endswith(
        f"Work directory {work} is not writable (Read-only file system); choose another "
        "--work-dir you can write to.")
    assert list(work.iterdir()) == []


# -------------------------------------------- read-only, permission denied
@pytest.mark.bad_input("readonly:a participant folder read-only while derivatives are written")
def test_a_folder_turning_read_only_under_the_derivatives_sink_is_named(raw, reference,
                                                                         tmp_path):
    if not can_unshare("-m"):
        pytest.skip("unshare -m (a private mount namespace) is not permitted here")
    work = _work_copy(reference, tmp_path)
    out = tmp_path / "out"
    (out / "sub-a").mkdir(parents=True)
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, str(out / "sub-a"),
                           *cli_command(raw, out, "participant", *FAST, "-w", work)],
                          capture_output=True, text=True, timeout=180, check=False,
                          env=run_env(tmp_path))
    assert done.returncode == 1, done.stderr[-2000:]
    assert one_error_line(done.stderr).endswith(
        f"{out / 'sub-a'} (OUTPUT_DIR) is on a read-only file system while writing the "
        "derivatives of sub-a; mount it writable or choose another OUTPUT_DIR.")


_AS_NOBODY = """
import sys
from pathlib import Path
from bids_pcs.io.atomic import write_text
from bids_pcs.system_errors import RunFolder, system_error
folder = Path(sys.argv[1])
try:
    write_text(folder / "sub-01" / "x.json", "{}")
except OSError as exc:
    print(system_error(exc, folders=[RunFolder(folder, "OUTPUT_DIR", "another OUTPUT_DIR")]))
"""


@pytest.mark.bad_input("readonly:permission denied (a folder of another user)")
def test_permission_denied_names_the_folder_and_the_fix(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process as another user")
    # pytest's folders are root's alone (0700): nobody must reach this one to be refused in it
    out = Path(tempfile.mkdtemp(prefix="bids_pcs-denied-"))
    try:
        out.chmod(0o755)  # root's: nobody may look inside, not write
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               sys.executable, "-c", _AS_NOBODY, str(out)],
                              capture_output=True, text=True, timeout=60, check=False,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                   "HOME": str(out)})
    finally:
        shutil.rmtree(out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        f"{out} (OUTPUT_DIR) is not writable by this user (Permission denied); give this user "
        "write access to it or choose another OUTPUT_DIR.")


# ------------------------------------------------------ memory, signals
@pytest.fixture(scope="module")
def two_images(shared_data, tmp_path_factory) -> Path:
    head = kmeans(shared_data)
    return bids_dataset(tmp_path_factory.mktemp("two") / "bids", {"a": head, "b": oblique(head)})


def _process_in(folder: Path, exclude: int) -> int | None:
    """The pid of a process whose working directory is ``folder`` (a Nipype node's worker)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != exclude:
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(folder):
                    return int(entry)
            except OSError:
                continue
    return None


@pytest.mark.slow
@pytest.mark.bad_input("memory:a registration killed by SIGKILL (the out-of-memory killer)")
def test_a_step_killed_like_the_oom_killer_does_names_image_step_and_flags(two_images,
                                                                           tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # two images side by side (MultiProc workers): --mem-gb keeps the plan so on any machine
    run = start_cli(two_images, out, "participant", "--skip-bids-validation", "--nprocs", "2",
                    "--mem-gb", "8", "--omp-nthreads", "1", *FAST_REGISTRATION, "-w", work,
                    env=run_env(tmp_path), log=tmp_path / "run.log")
    register = work / "bids_pcs_preproc_wf" / "sub_a_wf" / "register"
    try:
        assert wait_for(lambda: _process_in(register, run.pid) is not None, run, timeout=180,
                        poll_s=0.02), (tmp_path / "run.log").read_text()[-3000:]
        os.kill(_process_in(register, run.pid), signal.SIGKILL)
        assert run.wait(300) == 1
    finally:
        kill_group(run)
    error = one_error_line((tmp_path / "run.log").read_text())
    assert "1 of 2 T1w images could not be preprocessed (sub-a was killed at register by " \
           "SIGKILL (signal 9, which the out-of-memory killer" in error, error
    assert "lower --nprocs" in error and "--omp-nthreads" in error and "--mem-gb" in error
    # the other image, whose running step the broken process pool also stopped, went on
    settings = _settings(out)
    done = {image.prefix: preprocessed_state(settings, image)[0]
            for image in collect_t1w(two_images)}
    assert done["sub-a"] is None and done["sub-b"] is not None


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1500 * 2**20, 1500 * 2**20))


@pytest.mark.bad_input("memory:an address-space limit (ulimit -v) below an image's needs")
def test_running_out_of_memory_in_a_step_names_image_step_and_flags(tmp_path):
    # 512 x 512 x 500 voxels: 500 MiB per float32 copy, under the header limit
    data = np.zeros((512, 512, 500), np.uint8)
    data[200:300, 200:300, 200:300] = 100
    raw = bids_dataset(tmp_path / "bids", {"big": nib.Nifti1Image(data, np.diag(
        [0.5, 0.5, 0.5, 1.0]))})
    del data
    done = subprocess.run(cli_command(raw, tmp_path / "out", "participant",
                                      "--skip-bids-validation", "--nprocs", "1",
                                      "-w", tmp_path / "work"),
                          capture_output=True, text=True, timeout=300, check=False,
                          env=run_env(tmp_path), preexec_fn=_limit_memory)
    assert done.returncode == 1, done.stderr[-3000:]
    error = one_error_line(done.stderr)
    assert "sub-big_T1w.nii.gz ran out of memory at " in error, error
    assert "Unable to allocate" in error
    assert "if memory ran out, lower --nprocs" in error and "--omp-nthreads" in error


def _few_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (14, 14))


@pytest.mark.bad_input("files:an open-file limit (ulimit -n) too low")
def test_too_many_open_files_is_one_sentence_with_the_limit(two_images, tmp_path):
    # two images side by side: MultiProc's workers and their pipes need the descriptors
    done = subprocess.run(cli_command(two_images, tmp_path / "out", "participant",
                                      "--skip-bids-validation", "--nprocs", "2", "--mem-gb", "8",
                                      "--omp-nthreads", "1", *FAST_REGISTRATION,
                                      "-w", tmp_path / "work"),
                          capture_output=True, text=True, timeout=300, check=False,
                          env=run_env(tmp_path), preexec_fn=_few_files)
    assert done.returncode == 1, done.stderr[-3000:]
    error = one_error_line(done.stderr)
    assert error.startswith("bids_pcs: error: Too many open files"), error
    assert "(this process may open 14 at once, see `ulimit -n`)" in error
    assert "ask the administrator" in error  # the hard limit is 14 too


# --------------------------------------------- model save, study job
@pytest.fixture
def crops_done(tmp_path) -> tuple[Path, Path]:
    return finished_crops(tmp_path)


@needs_mount
@pytest.mark.bad_input("disk:no space for the model files")
def test_no_space_for_a_model_is_one_sentence_naming_its_folder(crops_done, tmp_path):
    raw, out = crops_done
    with small_disk(out / "models", "64k") as models:
        fill_disk(models)
        done = cli(raw, out, "pretrain", "--method", "reconstruction", "--recipe",
                   "tiny-cpu-2mm", "--skip-bids-validation", "--device", "cpu",
                   "--omp-nthreads", "1", "--set", "pretrain.epochs=1", "--set",
                   "pretrain.batch_size=4", "--set", "model.feature_size=4",
                   "-w", tmp_path / "work", env=run_env(tmp_path))
        assert done.returncode == 1, done.stderr[-3000:]
        error = one_error_line(done.stderr)
        assert f"No space left on the device of {models / 'pretrain-reconstruction'} " \
               "(OUTPUT_DIR, " in error, error
        assert not (models / "pretrain-reconstruction" / "model.json").exists()
        assert not [p for p in models.rglob(".*") if ".tmp" in p.name]


@needs_mount
@pytest.mark.bad_input("disk:no space for the group report")
def test_no_space_for_the_group_report_is_one_sentence_naming_its_folder(tmp_path):
    from pcs_outputs import build_outputs, build_raw

    raw = build_raw(tmp_path / "raw")
    with small_disk(tmp_path / "out", "32m") as out:
        build_outputs(out, raw)
        fill_disk(out)
        done = cli(raw, out, "group", env=run_env(tmp_path))
        assert done.returncode == 1, done.stderr[-3000:]
        error = one_error_line(done.stderr)
        assert error.startswith(f"bids_pcs: error: No space left on the device of {out}"), error
        assert "(OUTPUT_DIR, 0 B free of 32.0 MiB)" in error, error
        assert "choose another OUTPUT_DIR" in error
        assert not list(out.glob("group_pcs.*")) and not [p for p in out.rglob(".*tmp*")]


@pytest.mark.bad_input("memory:a study job killed by SIGKILL")
def test_a_study_job_killed_by_a_signal_is_said_in_one_sentence(tmp_path):
    from bids_pcs.study.jobs import run_job

    job = tmp_path / "jobs" / "reconstruction-top.json"
    job.parent.mkdir()
    job.write_text("{}")
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_job(job)))
    thread.start()

    def worker() -> int | None:
        for entry in os.listdir("/proc"):
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"bids_pcs.study.worker" in cmdline and str(job).encode() in cmdline:
                return int(entry)
        return None

    deadline = time.monotonic() + 60
    while worker() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(worker(), signal.SIGKILL)
    thread.join(60)
    result = outcome["result"]
    assert result.returncode == -signal.SIGKILL and not result.run_wide
    assert result.error == (
        "Study job reconstruction-top was killed by SIGKILL (signal 9, which the "
        "out-of-memory killer or a scheduler's memory limit sends); if memory ran out, lower "
        "--nprocs (images preprocessed at once) or --omp-nthreads (threads per process), or "
        "give --mem-gb the memory the job really has and rerun: finished work is kept.")
