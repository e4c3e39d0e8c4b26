"""Bad datasets, output folders and label datasets: one sentence and exit 1, before any work.

Covered elsewhere, and counted in docs/reliability.md: a BIDS_DIR without
dataset_description.json, without T1w, an unknown participant or session,
``--participant-label ../x``, OUTPUT_DIR or the work dir inside BIDS_DIR
(tests/test_cli.py); label grids, values and class names at the level of
:mod:`bids_pcs.io.labels` (tests/test_labels.py). Here: the same refusals where
they still lacked a test, through the command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from reliability_helpers import (
    FAST_REGISTRATION,
    KMEANS,
    bids_dataset,
    can_unshare,
    cli,
    cli_command,
    one_error_line,
    run_env,
    small_t1w,
)

from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import check_bids_dir
from bids_pcs.io.labels import read_labels
from bids_pcs.io.validator import validate

pytestmark = pytest.mark.usefixtures("_no_stray_home_writes")


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Two participants with small valid images (every refusal here comes before registration)."""
    return bids_dataset(tmp_path_factory.mktemp("raw") / "bids",
                        {"01": small_t1w(), "02": small_t1w()})


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return run_env(tmp_path / "env")


@pytest.fixture
def _no_stray_home_writes(tmp_path):
    yield
    home = tmp_path / "env" / "home"
    assert not home.exists() or not any(home.iterdir()), "a refused run wrote into HOME"


# -------------------------------------------------------------- OUTPUT_DIR
@pytest.mark.bad_input("output:under a regular file")
def test_an_output_dir_nobody_can_create_is_one_clear_error(raw, tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = cli(raw, blocker / "out", "participant", "--skip-bids-validation", env=env)
    assert done.returncode == 1
    error = one_error_line(done.stderr)
    assert f"OUTPUT_DIR {blocker / 'out'} is not writable" in error
    assert "choose a directory you can write to" in error


@pytest.mark.bad_input("output:read-only mount")
def test_a_read_only_output_dir_is_one_clear_error(raw, tmp_path, env):
    if not can_unshare("-m"):
        pytest.skip("unshare -m (a private mount namespace) is not permitted here")
    out = tmp_path / "out"
    out.mkdir()
    # root ignores permission bits, so make the folder a read-only mount, seen only by the run
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    import subprocess

    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, str(out),
         *cli_command(raw, out, "participant", "--skip-bids-validation")],
        capture_output=True, text=True, timeout=120, check=False, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    error = one_error_line(done.stderr)
    assert f"OUTPUT_DIR {out} is not writable (Read-only file system)" in error
    assert list(out.iterdir()) == []


@pytest.mark.bad_input("output:symlink into BIDS_DIR")
def test_an_output_dir_reached_through_a_symlink_into_bids_dir_is_refused(raw, tmp_path, env):
    link = tmp_path / "link"
    link.symlink_to(raw, target_is_directory=True)
    done = cli(raw, link / "sub-01" / "pcs", "participant", "--skip-bids-validation",
               env=env)
    assert done.returncode == 1
    assert "is BIDS_DIR or inside it" in one_error_line(done.stderr)
    assert not (raw / "sub-01" / "pcs").exists()


@pytest.mark.bad_input("dataset:BIDS_DIR is a file")
def test_a_bids_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "bids"
    path.write_text("")
    with pytest.raises(InputDataError, match="is not a directory"):
        check_bids_dir(path)


# ----------------------------------------------------------- label datasets
def _labels(root: Path, raw: Path, problem: str) -> Path:
    """A label dataset for the two participants of ``raw``, broken as ``problem`` says."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "labels", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "manual"}]}))
    rows = ["participant_id\tpcs_left\tpcs_right"]
    for subject in ("01", "02"):
        t1w = nib.load(raw / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
        data = np.zeros(t1w.shape, np.uint8)
        data[10:12, 5:30, 20:22] = 1
        data[25:27, 5:30, 20:22] = 2
        affine = t1w.affine.copy()
        if subject == "02" and problem == "wrong grid":
            affine[0, 3] += 4.0  # the label sits 4 mm away from its T1w
        if subject == "02" and problem == "value outside the label map":
            data[0, 0, 0] = 7
        anat = root / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, affine),
                 anat / f"sub-{subject}_space-T1w_desc-pcs_dseg.nii.gz")
        right = "huge" if subject == "02" and problem == "unknown class" else "present"
        rows.append(f"sub-{subject}\tpresent\t{right}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.bad_input("labels:wrong grid (finetune level)")
def test_bad_labels_stop_finetuning_before_any_preprocessing(raw, tmp_path):
    # values outside the label map and unknown class names take the same path; each is
    # refused by bids_pcs.io.labels, tested in tests/test_labels.py and below
    from bids_pcs.config import load_settings
    from bids_pcs.levels import finetune

    labels = _labels(tmp_path / "labels", raw, "wrong grid")
    out, work = tmp_path / "out", tmp_path / "work"
    settings = load_settings("tiny-cpu-2mm", overrides={"run": {
        "bids_dir": str(raw), "output_dir": str(out), "work_dir": str(work),
        "labels": str(labels), "init": "scratch", "device": "cpu"}})
    with pytest.raises(InputDataError) as info:
        finetune.run(settings)
    error = str(info.value)
    assert "has an affine that differs from its T1w's by up to 4 mm" in error
    assert "sub-02_space-T1w_desc-pcs_dseg.nii.gz" in error and "\n" not in error
    assert not list(out.glob("sub-*")) and not (work / "bids_pcs_preproc_wf").exists()


@pytest.mark.parametrize(("problem", "message"), [
    ("value outside the label map", "holds value(s) 7 outside the label map [0, 1, 2]"),
    ("unknown class", "Unknown PCS class 'huge' in"),
])
def test_other_bad_labels_are_refused_in_one_sentence(raw, tmp_path, problem, message,
                                                      bad_input):
    bad_input(f"labels:{problem}")
    from bids_pcs.io.bids_input import collect_t1w

    labels = _labels(tmp_path / "labels", raw, problem)
    with pytest.raises(InputDataError) as info:
        read_labels(labels, collect_t1w(raw), bids_dir=raw)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage\xff" * 50,
                                     b"subject\tpcs_left\n01\tx\n"])
def test_a_participants_tsv_that_is_not_a_bids_table_is_refused(raw, tmp_path, content,
                                                                bad_input):
    bad_input(f"labels:participants.tsv {content[:12]!r}")
    labels = _labels(tmp_path / "labels", raw, "none")
    (labels / "participants.tsv").write_bytes(content)
    from bids_pcs.io.bids_input import collect_t1w

    images = collect_t1w(raw)
    with pytest.raises(InputDataError, match="participants.tsv") as info:
        read_labels(labels, images, bids_dir=raw)
    assert "\n" not in str(info.value)


@pytest.mark.bad_input("labels:empty dseg file", "labels:NaN in dseg")
def test_an_empty_or_nan_dseg_is_refused(raw, tmp_path):
    from bids_pcs.io.bids_input import collect_t1w

    labels = _labels(tmp_path / "labels", raw, "none")
    images = collect_t1w(raw)
    dseg = labels / "sub-01" / "anat" / "sub-01_space-T1w_desc-pcs_dseg.nii.gz"
    original = dseg.read_bytes()
    dseg.write_bytes(b"")
    with pytest.raises(InputDataError, match="is not a readable NIfTI file"):
        read_labels(labels, images, bids_dir=raw)
    dseg.write_bytes(original)
    img = nib.load(dseg)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), dseg)
    with pytest.raises(InputDataError, match="nan outside the label map"):
        read_labels(labels, images, bids_dir=raw)
    shutil.rmtree(labels)


@pytest.mark.bad_input("confinement:no network for the BIDS validator")
def test_the_bids_validator_runs_without_any_network(raw, tmp_path, env):
    if not can_unshare("-n"):
        pytest.skip("unshare -n (a private network namespace) is not permitted here")
    # validation runs before the selection is checked: reaching the selection error means
    # bids-validator-deno validated the dataset with no network at all
    done = cli(raw, tmp_path / "out", "participant", "--participant-label", "99",
               env=env, prefix=("unshare", "-n"))
    assert done.returncode == 1, done.stderr[-2000:]
    error = one_error_line(done.stderr)
    assert "Participant(s) 99 not found" in error, error
    assert "Validating" in done.stderr


# ------------------------------------------------- images that differ by one entity
def _task_layout(root: Path, head: nib.Nifti1Image, names: list[str]) -> Path:
    bids_dir = bids_dataset(root, {})
    (bids_dir / "participants.tsv").write_text("participant_id\nsub-01\n")
    anat = bids_dir / "sub-01" / "anat"
    anat.mkdir(parents=True)
    for name in names:
        nib.save(head, str(anat / name))
    return bids_dir


@pytest.mark.slow
@pytest.mark.bad_input("dataset:T1w images that differ only by task-")
def test_images_that_differ_only_by_task_each_get_their_own_outputs(shared_data, tmp_path, env):
    # issue 18: three MPRAGEs told apart by task- alone all became sub-01_acq-..._rec-...,
    # two of them silently lost, and the run exited 0
    names = [f"sub-01_task-{task}_acq-mprage_rec-norm_T1w.nii.gz"
             for task in ("still", "nodding", "shaking")]
    head = nib.load(str(shared_data / KMEANS))
    bids_dir = _task_layout(tmp_path / "bids", head, names)
    out = tmp_path / "out"
    done = cli(bids_dir, out, "participant", "--nprocs", "2", "-w", tmp_path / "work",
               *FAST_REGISTRATION, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    anat = out / "sub-01" / "anat"
    for name in names:
        stem = name.removesuffix("_T1w.nii.gz")
        assert len(list(anat.glob(f"{stem}_space-*_desc-medialfrontal?_T1w.nii.gz"))) == 2
        assert len(list(anat.glob(f"{stem}_from-*_xfm.h5"))) == 2
        assert (anat / f"{stem}_space-MNI152NLin2009aSym_desc-registration_qc.json").is_file()
    report = validate(out)
    assert report.ok, report.summary()


@pytest.mark.bad_input("dataset:two T1w images with one derivative name (CLI)")
def test_two_images_with_one_derivative_name_stop_the_run_before_any_output(tmp_path, env):
    image = small_t1w()
    bids_dir = _task_layout(tmp_path / "bids", image, ["sub-01_T1w.nii", "sub-01_T1w.nii.gz"])
    out = tmp_path / "out"
    done = cli(bids_dir, out, "participant", "--skip-bids-validation", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    error = one_error_line(done.stderr)
    assert "would get the same derivative names (sub-01_...)" in error, error
    assert not (out / "sub-01").exists()
