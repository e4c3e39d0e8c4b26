"""The command line: parsing, usage errors (exit 2) and input errors (exit 1)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import run_cli

from bids_pcs.cli import LEVELS, expand_multi_values, parse_overrides


def test_help_lists_the_five_levels():
    result = run_cli("--help")
    assert result.returncode == 0
    for level in LEVELS:
        assert level in result.stdout
    assert "--participant-label" in result.stdout


def test_version():
    from bids_pcs import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_help_imports_no_heavy_module():
    # --help must answer at once: the slow scientific stack stays unimported
    code = (
        "import sys; from bids_pcs import cli;\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'nipype', 'bids', 'ants', 'monai', 'nibabel', 'numpy')"
        " if m in sys.modules]\nprint('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "HEAVY []" in out


def test_method_and_strategy_names_come_from_the_registries():
    """The CLI holds no list of names: a plug-in registered in one file is accepted at once."""
    import click

    from bids_pcs.cli import RegisteredName, registered_names
    from bids_pcs.finetuning.strategies import available_strategies
    from bids_pcs.pretraining import available_methods
    from bids_pcs.pretraining.base import METHODS
    from bids_pcs.training.objective import Objective

    assert registered_names("method") == available_methods()
    assert registered_names("strategy") == available_strategies()
    methods = RegisteredName("method", extra=("scratch",))
    assert methods.convert("scratch", None, None) == "scratch"
    with pytest.raises(click.BadParameter, match="jigsaw.*use one of scratch, adversarial"):
        methods.convert("jigsaw", None, None)

    @METHODS.register
    class Jigsaw(Objective):  # what a fifth method's file would hold
        name = "jigsaw"

    try:
        assert methods.convert("jigsaw", None, None) == "jigsaw"
    finally:
        METHODS._classes.pop("jigsaw")


def test_an_unregistered_method_is_a_usage_error():
    result = run_cli("/nonexistent", "/tmp/out", "pretrain", "--method", "jigsaw")
    assert result.returncode == 2
    assert "'jigsaw' is not a pre-training method; use one of" in result.stderr
    assert "reconstruction" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--participant-label", "01", "02", "-v"],
         ["--participant-label", "01", "--participant-label", "02", "-v"]),
        (["--methods", "scratch", "contrastive"], ["--methods", "scratch", "--methods",
                                                    "contrastive"]),
        (["--participant-label", "--seed", "1"], ["--participant-label", "--seed", "1"]),
        (["--seed", "-1"], ["--seed", "-1"]),
    ],
)
def test_expand_multi_values(args, expected):
    assert expand_multi_values(args, ("--participant-label", "--methods")) == expected


def test_parse_overrides_reads_toml_values():
    assert parse_overrides(("pretrain.epochs=3", "crop.size_mm=[32, 32, 32]",
                            "pretrain.method=contrastive", "inference.flip_tta=true")) == {
        "pretrain": {"epochs": 3, "method": "contrastive"},
        "crop": {"size_mm": [32, 32, 32]},
        "inference": {"flip_tta": True},
    }


@pytest.mark.bad_input("dataset:missing BIDS_DIR")
def test_missing_bids_dir(tmp_path):
    result = run_cli(tmp_path / "nope", tmp_path / "out", "participant")
    assert result.returncode == 2  # a path argument that points nowhere: a usage error
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input("dataset:no dataset_description.json")
def test_bids_dir_without_description(tmp_path):
    (tmp_path / "raw").mkdir()
    result = run_cli(tmp_path / "raw", tmp_path / "out", "participant")
    assert result.returncode == 1
    assert "dataset_description.json" in result.stderr


@pytest.mark.bad_input("output:OUTPUT_DIR is BIDS_DIR", "output:OUTPUT_DIR inside BIDS_DIR",
                       "output:OUTPUT_DIR is BIDS_DIR/derivatives")
def test_output_inside_bids_dir(bids_examples):
    ds = bids_examples / "ds001"
    for out in (ds, ds / "sub-01" / "pcs", ds / "derivatives"):
        result = run_cli(ds, out, "participant", "--skip-bids-validation")
        assert result.returncode == 1
        assert "inside it" in result.stderr
        assert f"write derivatives to {ds / 'derivatives'}/<name>" in result.stderr


def test_output_in_bids_dir_derivatives_is_accepted_and_not_read_as_raw(tmp_path):
    # the BIDS-Apps layout (fMRIPrep accepts it too): BIDS_DIR/derivatives/<name>
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    (raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"")
    out = raw / "derivatives" / "bids_pcs"
    # a T1w-named file in the derivatives (crops are *_T1w.nii.gz) is not a raw image
    (out / "sub-02" / "anat").mkdir(parents=True)
    (out / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"")
    result = run_cli(raw, out, "participant", "--skip-bids-validation",
                     "--participant-label", "02")
    assert result.returncode == 1
    assert "Participant(s) 02 not found" in result.stderr and "available: 01" in result.stderr
    # the paths were accepted: the run started and wrote its log into OUTPUT_DIR
    assert list((out / "logs").glob("participant_*.log"))
    assert (out / "dataset_description.json").is_file()


@pytest.mark.bad_input("output:work dir inside BIDS_DIR")
def test_work_dir_inside_bids_dir(bids_examples, tmp_path):
    ds = bids_examples / "ds001"
    result = run_cli(ds, tmp_path / "out", "participant", "-w", ds / "work")
    assert result.returncode == 1
    assert "Work dir" in result.stderr and "inside BIDS_DIR" in result.stderr


@pytest.mark.bad_input("dataset:unknown participant")
def test_unknown_participant_lists_available(bids_examples, tmp_path):
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant",
                     "--skip-bids-validation", "--participant-label", "01", "99")
    assert result.returncode == 1
    assert "99 not found" in result.stderr
    assert "available: 01, 02" in result.stderr


@pytest.mark.bad_input("dataset:unknown session")
def test_unknown_session_lists_available(bids_examples, tmp_path):
    result = run_cli(bids_examples / "ds114", tmp_path / "out", "participant",
                     "--skip-bids-validation", "--session-label", "ses-followup")
    assert result.returncode == 1
    assert "followup not found" in result.stderr
    assert "retest, test" in result.stderr


@pytest.mark.bad_input("dataset:participant label ../x")
def test_label_that_tries_a_path(bids_examples, tmp_path):
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant",
                     "--skip-bids-validation", "--participant-label", "../x")
    assert result.returncode == 2  # a bad option value: a usage error
    assert "not a valid BIDS label" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.bad_input("dataset:no T1w")
def test_no_t1w_found(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub-01" / "func").mkdir(parents=True)
    (raw / "dataset_description.json").write_text(
        json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    (raw / "sub-01" / "func" / "sub-01_task-rest_bold.json").write_text("{}")
    result = run_cli(raw, tmp_path / "out", "participant", "--skip-bids-validation")
    assert result.returncode == 1
    assert "No T1w image found" in result.stderr


@pytest.mark.bad_input("image:empty placeholder (bids-examples)")
def test_unreadable_nifti_is_named(bids_examples, tmp_path):
    # the bids-examples images are empty placeholders: selection works, reading fails
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant",
                     "--skip-bids-validation", "--participant-label", "01")
    assert result.returncode == 1
    assert "sub-01_T1w.nii.gz" in result.stderr
    assert "empty file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.bad_input("dataset:invalid BIDS")
def test_bids_validation_errors_are_summarised(bids_examples, tmp_path):
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant")
    assert result.returncode == 1
    assert "failed BIDS validation" in result.stderr
    assert "EMPTY_FILE" in result.stderr
    assert "--skip-bids-validation" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["participant", "--method", "contrastive"], "--method applies only to the pretrain"),
        (["finetune", "--labels", "."], "finetune needs --init"),
        (["finetune", "--init", "scratch"], "finetune needs --labels"),
        (["study"], "study needs --labels"),
        (["pretrain", "--method", "magic"], "Invalid value for '--method'"),
        (["participant", "--device", "gpu"], "Invalid value for '--device'"),
        (["participant", "--set", "pretrain"], "expected SECTION.KEY=VALUE"),
        (["participant", "--pretrain-data", "."], "--pretrain-data applies only to the pretrain"),
        (["pretrain", "--pretrain-data", "/nowhere/cohort", "--skip-bids-validation"],
         "--pretrain-data /nowhere/cohort does not exist"),
        (["nonsense"], "Invalid value for '{participant|group|pretrain|finetune|study}'"),
    ],
)
def test_usage_errors_exit_2(bids_examples, tmp_path, args, message):
    result = run_cli(bids_examples / "ds001", tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.bad_input("usage:unknown --set key", "usage:--set value of the wrong type",
                       "usage:unknown recipe", "usage:session label not a BIDS label",
                       "usage:--labels folder that does not exist")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "crop.sizemm=[1,2,3]"], "Unknown setting(s) sizemm in [crop]"),
        (["--set", "pretrain.epochs=many"], "pretrain.epochs must be an integer"),
        (["--set", "nosuchsection.key=1"], "Unknown setting(s) nosuchsection in [settings]"),
        (["--recipe", "no-such-recipe"], "Recipe 'no-such-recipe' not found"),
        (["--session-label", "a/b"], "not a valid BIDS label"),
        (["--skull-stripped", "maybe"], "Invalid value for '--skull-stripped'"),
        (["--set", "registration.skull_stripped=maybe"], "must be auto, yes or no"),
    ],
)
def test_bad_settings_and_values_are_usage_errors_exit_2(bids_examples, tmp_path, args,
                                                         message):
    # the README's rule: 2 for every usage error, found before any work
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_labels_folder_that_does_not_exist_is_a_usage_error(bids_examples, tmp_path):
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "finetune", "--init",
                     "scratch", "--labels", tmp_path / "nope")
    assert result.returncode == 2, result.stderr
    assert "Label source" in result.stderr and "does not exist" in result.stderr


@pytest.mark.bad_input("dataset:selection matches no participant (while running)")
def test_errors_met_while_running_exit_1(bids_examples, tmp_path):
    # the command line is well-formed; the dataset does not have what it names
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant",
                     "--skip-bids-validation", "--participant-label", "99")
    assert result.returncode == 1
    assert "99 not found" in result.stderr


@pytest.mark.bad_input("device:cuda without a GPU")
def test_cuda_without_gpu(bids_examples, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli(bids_examples / "ds001", tmp_path / "out", "participant",
                     "--device", "cuda")
    assert result.returncode == 1
    assert "no CUDA GPU is available" in result.stderr


def test_run_leaves_log_and_config_dump(bids_examples, tmp_path):
    out = tmp_path / "out"
    run_cli(bids_examples / "ds001", out, "participant", "--skip-bids-validation",
            "--participant-label", "01", "--set", "pretrain.epochs=7")
    assert (out / "logs" / "CITATION.md").is_file()
    logs = sorted(p for p in (out / "logs").iterdir() if p.name != "CITATION.md")
    assert [p.suffix for p in logs] == [".log", ".toml"]
    dump = logs[1].read_text()
    assert "epochs = 7" in dump
    assert 'participant_label = [\n    "01",\n]' in dump or 'participant_label = ["01"]' in dump
    assert "sub-01_T1w.nii.gz" in logs[0].read_text()


def _options(tmp_path, **changes):
    """The option values click hands to build_settings (a finetune run by default)."""
    return {**dict(bids_dir=tmp_path, output_dir=tmp_path / "out", analysis_level="finetune",
                   work_dir=None, participant_label=(), session_label=(), nprocs=1,
                   omp_nthreads=1, device="cpu", seed=0, skip_bids_validation=True, verbose=0,
                   recipe="default", overrides=(), model=None, method=None, init="scratch",
                   strategy=None, labels=None, methods=(), strategies=(), model_name=None,
                   resume=False), **changes}


def test_seed_seeds_splits_and_training_and_registration_keeps_its_own(tmp_path):
    """What --help says about --seed is what happens (crops are reused across seeds)."""
    from click.testing import CliRunner

    from bids_pcs.cli import build_settings, cli

    help_text = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    assert "Random seed of splits and training (registration has its own" in help_text
    options = _options(tmp_path, seed=5)
    settings = build_settings(options)
    assert settings.run.seed == 5 and settings.registration.random_seed == 0
    options["overrides"] = ("registration.random_seed=3",)
    assert build_settings(options).registration.random_seed == 3


def test_skull_stripped_option_sets_the_registration_path(tmp_path):
    from bids_pcs.cli import build_settings

    assert build_settings(_options(tmp_path)).registration.skull_stripped == "auto"
    options = _options(tmp_path, skull_stripped="yes")
    assert build_settings(options).registration.skull_stripped == "yes"


def test_a_missing_model_folder_fails_first_and_without_the_scientific_stack(tmp_path):
    """Before BIDS_DIR is looked at (it does not exist here) and before torch is imported."""
    code = (
        "import sys; from bids_pcs import cli\n"
        f"try:\n    cli.main([{str(tmp_path / 'raw')!r}, {str(tmp_path / 'out')!r}, "
        f"'participant', '--model', {str(tmp_path / 'missing')!r}])\n"
        "except SystemExit as exc:\n    print('EXIT', exc.code)\n"
        "print('HEAVY', [m for m in ('torch', 'nipype', 'bids', 'ants') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert "EXIT 2" in done.stdout and "HEAVY []" in done.stdout  # a usage error
    assert f"Model directory {tmp_path / 'missing'} does not exist" in done.stderr
    assert "BIDS" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.bad_input("model:--recipe that contradicts the model")
def test_a_recipe_that_contradicts_the_model_is_one_sentence_with_both_values(tmp_path):
    from bids_pcs.config import load_settings
    from bids_pcs.models.model_io import model_card, save_model
    from bids_pcs.models.network import build_network

    settings = load_settings("tiny-cpu-2mm")
    network = build_network(settings.model, settings.crop.shape_vox, settings.labels.classes)
    model_dir = save_model(tmp_path / "m", network, model_card(
        settings, network, stage="finetune", method="scratch", strategy="full"))
    result = run_cli(tmp_path / "raw", tmp_path / "out", "participant", "--model", model_dir,
                     "--recipe", "default")
    assert result.returncode == 2  # a usage error: two options that contradict each other
    (line,) = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert line.startswith(f"bids_pcs: error: The model in {model_dir} was trained with [crop] ")
    assert "voxel_mm = 2 but --recipe default gives 1" in line
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    # told nothing else, the run takes the model's recipe and settings
    from bids_pcs.cli import build_settings
    from bids_pcs.errors import UsageError

    options = {**_options(tmp_path), "analysis_level": "participant", "model": model_dir,
               "init": None}
    assert build_settings(options).crop == settings.crop
    options["overrides"] = ("crop.voxel_mm=1.0",)
    with pytest.raises(UsageError, match=r"voxel_mm = 2 but --set crop.voxel_mm gives 1"):
        build_settings(options)
