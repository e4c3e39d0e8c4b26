"""``bids_pcs-demo OUTPUT_DIR`` end to end at a reduced size (4 participants, short epochs).

The accuracy targets of the full demo are not checked here (too few
participants and epochs); the run must finish, print its figures, and leave a
valid derivative dataset with every step's outputs.
"""

from __future__ import annotations

import json
import re

import pytest
from inference_helpers import PARTICIPANTS, demo_run

from bids_pcs.io.validator import validate


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_run(tmp_path_factory)


@pytest.mark.slow
def test_demo_runs_every_step_and_prints_its_figures(demo):
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    for label in ("held-out Dice (native T1w grid, all hemispheres)",
                  "held-out presence accuracy", "wall time"):
        match = re.search(re.escape(label) + r": ([0-9.]+)", out)
        assert match, (label, out)
        value = float(match.group(1))
        assert 0.0 <= value <= 1.0 or label == "wall time"
    assert str(demo.output_dir) in out
    assert "[6/6] group level" in demo.stderr


@pytest.mark.slow
def test_demo_console_is_quiet_and_shows_each_epoch(demo):
    # issue 18: ~360 Nipype node lines, tracebacks, schema and fsspec chatter and
    # tqdm fragments buried the summary; each epoch is one plain line instead
    assert demo.returncode == 0, demo.stderr[-3000:]
    console = demo.stdout + demo.stderr
    assert "[Node]" not in console and "nipype.workflow" not in console
    assert "Traceback" not in console
    assert "No schema path specified" not in console and "fsspec" not in console
    assert "\r" not in console  # stderr is a pipe here: no progress bars
    epochs = re.findall(r"finetune full epoch (\d+)/3: loss [0-9.]+, (val_\w+) [0-9.]+",
                        demo.stderr)
    assert [int(e) for e, _ in epochs] == [1, 2, 3], demo.stderr[-3000:]
    assert re.search(r"reconstruction epoch 1/1: loss [0-9.]+, [0-9.]+ s", demo.stderr)
    assert demo.stderr.count(": preprocessing started") == PARTICIPANTS


@pytest.mark.slow
def test_demo_leaves_a_valid_derivative_dataset_with_every_output(demo):
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.output_dir
    raw = out / "sourcedata" / "synthetic"
    assert len(list(raw.glob("sub-*/anat/*_T1w.nii.gz"))) == PARTICIPANTS
    assert (out / "models" / "pretrain-reconstruction" / "model.safetensors").is_file()
    assert (out / "models" / "finetune-reconstruction-full" / "model.json").is_file()
    assert (out / "group_pcs.tsv").is_file() and (out / "group_pcs.html").is_file()
    assert (out / "review.tsv").is_file() and (out / "review.json").is_file()
    inferred = sorted(p.name for p in out.glob("sub-*/anat/*_desc-pcs_dseg.nii.gz"))
    assert len(inferred) == 1  # one of four participants held out
    subject = inferred[0].split("_")[0]
    assert (out / f"{subject}.html").is_file()

    (results_file,) = (out / "logs").glob("demo_*_results.json")
    results = json.loads(results_file.read_text())
    assert results["held_out"] == [subject.removeprefix("sub-")]
    assert len(results["train"]) == PARTICIPANTS - 1
    assert len(results["per_hemisphere"]) == 2
    assert {"cohort", "preprocessing", "pretraining", "finetuning", "inference",
            "group"} <= set(results["seconds"])
    assert list((out / "logs").glob("demo_*_config.toml"))
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"

    report = validate(out)
    assert report.ok, report.summary()


def test_demo_refuses_an_unrelated_output_dir(tmp_path):
    from click.testing import CliRunner

    from bids_pcs.demo import main

    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, [str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 1
    assert "not empty" in result.output
