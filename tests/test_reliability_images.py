"""Bad and awkward T1w images, one bad image among many, and a confined run (issue 10).

The loader's refusals are checked one by one (no registration). Then one
participant run, module-scoped, takes a read-only dataset holding every bad
image beside four real ones (an oblique affine, a qform that disagrees with the
sform, and two fields of view that miss the medial frontal region), under an
audit hook that records every write and network attempt of every Python
process, in a private HOME and TMPDIR and, where possible, without a network
(``unshare -n``). The tests below read what that run did.
"""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import (
    BAD_IMAGES,
    FAST_REGISTRATION,
    audit_site,
    bids_dataset,
    can_unshare,
    changes,
    cli,
    inferior_only,
    kmeans,
    make_read_only,
    make_writable,
    network_events,
    oblique,
    one_error_line,
    outside,
    posterior_only,
    qform_disagrees,
    read_audit,
    run_env,
    small_t1w,
    snapshot,
    write_bad_image,
)

from bids_pcs.errors import ImageError
from bids_pcs.io.nifti import MAX_VOXELS, load_t1w, qform_sform_mismatch_mm

GOOD = ("oblique", "qform")
QC_FAILS = ("fovposterior",)
CANNOT_REGISTER = ("fovinferior",)


# ------------------------------------------------------------ the loader alone
@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_a_bad_image_is_refused_in_one_sentence_naming_it(tmp_path, name, bad_input):
    bad_input(f"image:{name}")
    path = tmp_path / f"sub-01_{name}_T1w.nii.gz"
    expected = write_bad_image(path, name)
    with pytest.raises(ImageError) as info:
        load_t1w(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(f"Image {path} ") and message.endswith(".")
    assert "\n" not in message and message.count("; ") >= 1  # what is wrong; what to do
    assert info.value.reason in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # nothing written


def test_a_huge_header_is_refused_before_any_voxel_is_read(tmp_path, bad_input):
    bad_input("image:huge header (memory)")
    path = tmp_path / "huge.nii.gz"
    write_bad_image(path, "huge")  # claims 2048^3 int16 voxels: 16 GiB
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=f"more than the {MAX_VOXELS}"):
            load_t1w(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20, f"{peak / 2**20:.1f} MiB allocated to refuse a header"


def test_accepted_image_memory_is_bounded_by_its_voxels(tmp_path):
    # a legal image costs its float32 copy and little more, whatever its stored dtype
    img = small_t1w((96, 96, 96))
    path = tmp_path / "t1w.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).astype(np.int16), img.affine), path)
    tracemalloc.start()
    try:
        loaded = load_t1w(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float32_bytes = 96**3 * 4
    assert loaded.get_data_dtype() == np.float32
    assert peak < 3.5 * float32_bytes, f"peak {peak / float32_bytes:.1f} x the float32 volume"


def test_one_volume_4d_is_read_as_3d_and_qform_sform_mismatch_is_measured(tmp_path, shared_data):
    path = tmp_path / "t1w.nii.gz"
    img = small_t1w()
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine), path)
    assert load_t1w(path).shape == img.shape
    assert load_t1w(path, check_data=False).shape == img.shape
    assert qform_sform_mismatch_mm(kmeans(shared_data)) == 0
    disagreeing = qform_disagrees(kmeans(shared_data))
    assert qform_sform_mismatch_mm(disagreeing) > 100
    nib.save(disagreeing, tmp_path / "q.nii.gz")
    # the sform wins, as in nibabel and fMRIPrep
    np.testing.assert_allclose(load_t1w(tmp_path / "q.nii.gz").affine, kmeans(shared_data).affine)


# ------------------------------------------- one run over good and bad images
@dataclass(frozen=True)
class MixedRun:
    root: Path
    bids_dir: Path
    output_dir: Path
    work_dir: Path
    returncode: int
    stdout: str
    stderr: str
    expected: dict[str, str]  # bad image label -> words its reason must contain
    watched: dict[str, list[str]]  # folder -> what changed in it
    audit: list[tuple[str, str]]
    allowed: list[Path]
    no_network_namespace: bool


@pytest.fixture(scope="module")
def mixed_run(shared_data, tmp_path_factory) -> MixedRun:
    root = tmp_path_factory.mktemp("mixed")
    head = kmeans(shared_data)
    images: dict[str, nib.Nifti1Image | bytes] = {
        "oblique": oblique(head), "qform": qform_disagrees(head),
        "fovposterior": posterior_only(head), "fovinferior": inferior_only(head),
    }
    images.update({name: make() for name, (make, _) in BAD_IMAGES.items()})
    bids_dir = bids_dataset(root / "bids", images)
    make_read_only(bids_dir)
    output_dir, work_dir = root / "out", root / "work"
    site = audit_site(root / "site")
    (root / "audit").mkdir()
    (root / "cwd").mkdir()
    env = run_env(root, PYTHONPATH=str(site), BIDS_PCS_AUDIT_LOG=str(root / "audit" / "log"))
    watched_dirs = {"bids": bids_dir, "home": root / "home", "cwd": root / "cwd",
                    "root": root}
    before = {key: snapshot(path) for key, path in watched_dirs.items()}
    no_network = can_unshare("-n")
    try:
        done = cli(bids_dir, output_dir, "participant", "--skip-bids-validation",
                   "--nprocs", "2", "--omp-nthreads", "1", "-w", work_dir, *FAST_REGISTRATION,
                   env=env, cwd=root / "cwd", timeout=400,
                   prefix=("unshare", "-n") if no_network else ())
        after = {key: snapshot(path) for key, path in watched_dirs.items()}
    finally:
        make_writable(bids_dir)
    allowed = [output_dir, work_dir, root / "tmp"]
    watched = {key: changes(before[key], after[key]) for key in watched_dirs}
    # in the test's own root, only the run's three places may change
    watched["root"] = [c for c in watched["root"]
                       if c[1:].split("/")[0] not in ("out", "work", "tmp", "audit")]
    expected = {name: words for name, (_, words) in BAD_IMAGES.items()}
    expected["fovinferior"] = "failed at register"
    return MixedRun(root, bids_dir, output_dir, work_dir, done.returncode, done.stdout,
                    done.stderr,
                    expected, watched, read_audit(root / "audit" / "log"), allowed, no_network)


def _first_run_log(run: MixedRun) -> str:
    """The log of the fixture's own run (a later test reruns into the same OUTPUT_DIR)."""
    # names carry the start time, so the earliest sorts first
    return sorted((run.output_dir / "logs").glob("participant_*.log"))[0].read_text()


def _qc(run: MixedRun, label: str) -> dict:
    path = (run.output_dir / f"sub-{label}" / "anat"
            / f"sub-{label}_space-MNI152NLin2009aSym_desc-registration_qc.json")
    return json.loads(path.read_text())


@pytest.mark.bad_input(*(f"image:{name} (among good ones)" for name in sorted(BAD_IMAGES)),
                       "image:field of view without a head")
@pytest.mark.slow
def test_bad_images_among_good_ones_are_listed_and_the_good_ones_go_through(mixed_run):
    assert mixed_run.returncode == 1, mixed_run.stderr[-3000:]
    error = one_error_line(mixed_run.stderr)
    n_images = len(mixed_run.expected) + len(GOOD) + len(QC_FAILS)
    assert f"{len(mixed_run.expected)} of {n_images} T1w images could not be preprocessed" in error
    listed = error.split("could not be preprocessed (", 1)[1]
    for label, words in mixed_run.expected.items():
        assert f"sub-{label} " in listed, (label, listed)
        reason = listed.split(f"sub-{label} ", 1)[1].split("; sub-", 1)[0]
        assert words in reason, (label, reason)
    assert "the other images' outputs are written" in error
    for label in GOOD:
        assert f"sub-{label} " not in listed
        anat = mixed_run.output_dir / f"sub-{label}" / "anat"
        assert len(list(anat.glob("*desc-medialfrontal?_T1w.nii.gz"))) == 2
        assert len(list(anat.glob("*_xfm.h5"))) == 2
    # each failed image has its full sentence, with the file's path, in the log
    log = _first_run_log(mixed_run)
    for label in mixed_run.expected:
        assert f"sub-{label}: " in log
    assert "sub-empty_T1w.nii.gz is an empty file; replace it with a valid NIfTI image." in log


@pytest.mark.bad_input("image:oblique affine", "image:qform and sform disagree")
@pytest.mark.slow
def test_oblique_and_qform_sform_mismatch_register_and_the_mismatch_is_warned(mixed_run):
    for label in GOOD:
        qc = _qc(mixed_run, label)
        assert qc["Passed"] is True, (label, qc)
    assert "qform and sform of sub-qform_T1w.nii.gz disagree by up to" in mixed_run.stderr
    assert "sub-oblique: the qform" not in mixed_run.stderr


@pytest.mark.bad_input("image:field of view misses the medial frontal region")
@pytest.mark.slow
def test_a_field_of_view_without_the_region_is_a_flagged_qc_failure(mixed_run):
    qc = _qc(mixed_run, "fovposterior")
    assert qc["Passed"] is False and qc["MinCorrelation"] < qc["Threshold"]
    crop_sidecar = next((mixed_run.output_dir / "sub-fovposterior" / "anat").glob(
        "*desc-medialfrontalL_T1w.json"))
    assert json.loads(crop_sidecar.read_text())["RegistrationQC"]["Passed"] is False
    assert "sub-fovposterior: registration QC FAILED" in mixed_run.stderr
    # a QC failure is a result, not an error: a run of the images that went through exits 0
    rerun = cli(mixed_run.bids_dir, mixed_run.output_dir, "participant",
                "--skip-bids-validation", "--participant-label", *GOOD, *QC_FAILS,
                "-w", mixed_run.work_dir, *FAST_REGISTRATION,
                env=run_env(mixed_run.root / "rerun"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 failed registration QC (sub-fovposterior)" in rerun.stderr


@pytest.mark.bad_input("image:empty (alone)")
@pytest.mark.slow
def test_a_run_of_one_bad_image_ends_with_its_own_sentence(mixed_run):
    done = cli(mixed_run.bids_dir, mixed_run.root / "alone", "participant",
               "--skip-bids-validation", "--participant-label", "empty",
               env=run_env(mixed_run.root / "alone-env"))
    assert done.returncode == 1
    error = one_error_line(done.stderr)
    path = mixed_run.bids_dir / "sub-empty" / "anat" / "sub-empty_T1w.nii.gz"
    assert error == f"bids_pcs: error: Image {path} is an empty file; fix or replace it and rerun."


@pytest.mark.slow
def test_no_nipype_traceback_reaches_the_console(mixed_run):
    # crashed nodes (NaN voxels, a registration without a head) are one line each;
    # Nipype's node chatter and tracebacks go to the run log (issue 18)
    console = mixed_run.stdout + mixed_run.stderr
    assert "Traceback" not in console
    assert "[Node]" not in console and "nipype.workflow" not in console
    assert "sub-nan: preprocessing failed: Image" in mixed_run.stderr
    assert "No schema path specified" not in console
    # one line per image that reached the workflow when it starts, one when it ends
    # (images refused on their header alone never start)
    started = [label for label in [*GOOD, *QC_FAILS, *mixed_run.expected]
               if f"sub-{label}: preprocessing started" in mixed_run.stderr]
    assert {*GOOD, *QC_FAILS, "nan", "fovinferior"} <= set(started)
    for label in started:
        assert mixed_run.stderr.count(f"sub-{label}: preprocessing started") == 1, label
        ends = (mixed_run.stderr.count(f"sub-{label}: preprocessing finished")
                + mixed_run.stderr.count(f"sub-{label}: preprocessing failed"))
        assert ends == 1, label
    log = _first_run_log(mixed_run)
    assert "[Node] Finished" in log and "Traceback" in log  # kept where they belong


# -------------------------------------------------------------- confinement
@pytest.mark.bad_input("dataset:read-only BIDS_DIR")
@pytest.mark.slow
def test_a_read_only_bids_dir_works_and_is_left_untouched(mixed_run):
    assert mixed_run.watched["bids"] == []
    assert (mixed_run.output_dir / "sub-oblique" / "anat").is_dir()


@pytest.mark.slow
def test_a_run_writes_only_into_output_work_and_temporary_dirs(mixed_run):
    assert mixed_run.watched["home"] == [], "the run wrote into HOME"
    assert mixed_run.watched["cwd"] == [], "the run wrote into its working directory"
    assert mixed_run.watched["root"] == []
    writes = [event for event in mixed_run.audit if event[0] == "write"]
    assert any(path.startswith(str(mixed_run.output_dir)) for _, path in writes), \
        "the audit hook saw no write at all"
    stray = outside(mixed_run.audit, mixed_run.allowed)
    assert stray == [], stray[:10]


@pytest.mark.slow
def test_a_run_opens_no_network_connection(mixed_run):
    assert network_events(mixed_run.audit) == []
    if mixed_run.no_network_namespace:  # and it worked without any network at all
        assert (mixed_run.output_dir / "sub-qform" / "anat").is_dir()


def test_the_audit_hook_sees_writes_and_connections(tmp_path):
    # the control of the two tests above: the hook does record what they look for
    import subprocess
    import sys

    site = audit_site(tmp_path / "site")
    log = tmp_path / "log"
    code = ("import socket\nopen('written.txt', 'w').close()\n"
            "try:\n    socket.create_connection(('192.0.2.1', 9), timeout=0.01)\n"
            "except OSError:\n    pass\n")
    env = run_env(tmp_path, PYTHONPATH=str(site), BIDS_PCS_AUDIT_LOG=str(log))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True)
    events = read_audit(log)
    assert ("write", str(tmp_path / "written.txt")) in events
    assert outside(events, [tmp_path / "out"]) == [("write", str(tmp_path / "written.txt"))]
    assert ("connect", "('192.0.2.1', 9)") in network_events(events)
