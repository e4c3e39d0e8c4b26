"""Untrusted model and checkpoint files: refused in one sentence, before any work, running no code.

Covered elsewhere (counted in docs/reliability.md): tampered weights at load
time and a renamed pickle by file format (tests/test_model_io.py), a model of
another architecture or crop geometry for fine-tuning (test_model_io.py,
test_finetune_api.py) and for inference (test_inference.py), ``--device cuda``
on the participant level without a GPU (test_cli.py).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reliability_helpers import bids_dataset, cli, one_error_line, run_env, small_t1w
from training_helpers import TINY_OPTIONS, crop_set, tiny_cnn

from bids_pcs.config import load_settings
from bids_pcs.errors import ModelFileError
from bids_pcs.finetuning import check_init
from bids_pcs.models.model_io import (
    CARD_NAME,
    WEIGHTS_NAME,
    load_model,
    load_pretrained,
    model_card,
    save_model,
    verify_weights,
)
from bids_pcs.models.network import build_network
from bids_pcs.models.tensor_file import sha256_file
from bids_pcs.pretraining import get_objective
from bids_pcs.training.checkpoint import INDEX_NAME
from bids_pcs.training.engine import Engine, TrainConfig

RECIPE = "tiny-cpu-2mm"


class _CreatesMarker:
    """Unpickling this creates ``marker``: what a hostile "weights" file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle(marker: Path, kind: str) -> bytes:
    """A pickle (plain, or torch.save's zip) whose loading creates ``marker``."""
    payload = {"encoder.weight": torch.zeros(2), "evil": _CreatesMarker(marker)}
    if kind == "plain":
        return pickle.dumps(payload)
    buffer = __import__("io").BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def settings():
    return load_settings(RECIPE, overrides={"run": {"device": "cpu"}})


@pytest.fixture
def model_dir(tmp_path, settings) -> Path:
    """A fine-tuned model of the tiny recipe (fits a participant run with --recipe tiny-cpu-2mm)."""
    torch.manual_seed(0)
    network = build_network(settings.model, settings.crop.shape_vox, settings.labels.classes)
    card = model_card(settings, network, stage="finetune", method="scratch", strategy="full")
    return save_model(tmp_path / "model", network, card)


def _replace_weights(model_dir: Path, content: bytes) -> None:
    """Put ``content`` in place of the weights, and fix the card's digest as an attacker would."""
    (model_dir / WEIGHTS_NAME).write_bytes(content)
    card = json.loads((model_dir / CARD_NAME).read_text())
    card["weights"]["sha256"] = sha256_file(model_dir / WEIGHTS_NAME)
    (model_dir / CARD_NAME).write_text(json.dumps(card))


@pytest.mark.parametrize("kind", ["plain", "torch.save"])
def test_the_hostile_pickle_really_runs_code_when_unpickled(tmp_path, kind):
    # the control: without it, a missing marker below would prove nothing
    marker = tmp_path / "marker"
    payload = tmp_path / "payload"
    payload.write_bytes(hostile_pickle(marker, kind))
    loader = ("import pickle,sys; pickle.load(open(sys.argv[1],'rb'))" if kind == "plain" else
              "import torch,sys; torch.load(sys.argv[1], weights_only=False)")
    subprocess.run([sys.executable, "-c", loader, str(payload)], check=True,
                   cwd=Path(__file__).parent, capture_output=True)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["plain", "torch.save"])
def test_a_pickle_renamed_as_safetensors_is_refused_and_runs_nothing(tmp_path, model_dir, kind,
                                                                     settings, bad_input):
    bad_input(f"model:{kind} pickle as model.safetensors")
    marker = tmp_path / "marker"
    _replace_weights(model_dir, hostile_pickle(marker, kind))
    loaders = {
        "load_model": lambda: load_model(model_dir),
        "load_pretrained": lambda: load_pretrained(
            build_network(settings.model, settings.crop.shape_vox), model_dir),
        "verify_weights": lambda: verify_weights(model_dir),
        "check_init": lambda: check_init(settings, model_dir),
    }
    for name, load in loaders.items():
        with pytest.raises(ModelFileError, match="is not a safetensors file") as info:
            load()
        assert "\n" not in str(info.value), name
        assert not marker.exists(), f"{name} ran code from the file"


@pytest.mark.bad_input("checkpoint:pickle as checkpoint tensors")
def test_a_pickle_in_place_of_a_checkpoint_is_refused_on_resume(tmp_path):
    objective = get_objective("reconstruction", TINY_OPTIONS["reconstruction"])
    network = tiny_cnn()
    objective.setup(network)
    config = TrainConfig(epochs=2, batch_size=2, progress=False, checkpoint_dir=tmp_path / "ckpt")
    Engine(network, objective, config).fit(crop_set(2))
    index = json.loads((tmp_path / "ckpt" / INDEX_NAME).read_text())
    marker = tmp_path / "marker"
    tensors = tmp_path / "ckpt" / index["tensors"]
    tensors.write_bytes(hostile_pickle(marker, "torch.save"))
    index["sha256"] = sha256_file(tensors)
    (tmp_path / "ckpt" / INDEX_NAME).write_text(json.dumps(index))
    resumed = TrainConfig(epochs=3, batch_size=2, progress=False,
                          checkpoint_dir=tmp_path / "ckpt", resume=True)
    fresh = tiny_cnn()
    objective.setup(fresh)
    with pytest.raises(ModelFileError, match="is not a safetensors file"):
        Engine(fresh, objective, resumed).fit(crop_set(2))
    assert not marker.exists()


@pytest.mark.parametrize("missing", [WEIGHTS_NAME, CARD_NAME, "everything"])
def test_a_model_directory_with_missing_files_is_refused(model_dir, settings, missing,
                                                         bad_input):
    bad_input(f"model:missing {missing}")
    if missing == "everything":
        for path in model_dir.iterdir():
            path.unlink()
    else:
        (model_dir / missing).unlink()
    with pytest.raises(ModelFileError, match="is missing; the model or checkpoint is incomplete"):
        check_init(settings, model_dir)
    with pytest.raises(ModelFileError, match="is missing"):
        load_model(model_dir)


@pytest.mark.bad_input("model:weights changed after their digest was recorded (finetune init)")
def test_tampered_weights_are_refused_by_the_finetune_check_before_any_work(model_dir,
                                                                           settings):
    weights = model_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256 recorded beside it"):
        check_init(settings, model_dir)


@pytest.mark.bad_input("model:card describes another architecture than its weights")
def test_weights_that_do_not_fit_the_card_architecture_are_refused(model_dir):
    card = json.loads((model_dir / CARD_NAME).read_text())
    card["architecture"]["feature_size"] = 16  # the weights were made with 8
    (model_dir / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not fit the architecture in its model.json"):
        load_model(model_dir)


# ------------------------------------------------ the same through the command line
@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return bids_dataset(tmp_path_factory.mktemp("raw") / "bids", {"01": small_t1w()})


@pytest.mark.bad_input("model:pickle as model.safetensors (participant --model)")
def test_participant_refuses_a_hostile_model_before_any_work(raw, tmp_path, model_dir):
    marker = tmp_path / "marker"
    _replace_weights(model_dir, hostile_pickle(marker, "plain"))
    out, work = tmp_path / "out", tmp_path / "work"
    done = cli(raw, out, "participant", "--model", model_dir, "--recipe", RECIPE,
               "--skip-bids-validation", "--device", "cpu", "-w", work,
               env=run_env(tmp_path / "env"))
    assert done.returncode == 1, done.stderr[-2000:]
    error = one_error_line(done.stderr)
    assert f"{model_dir / WEIGHTS_NAME} is not a safetensors file" in error
    assert not marker.exists()
    assert not work.exists() and not list(out.glob("sub-*"))  # no preprocessing started


@pytest.mark.bad_input("device:cuda:N for training without that GPU")
def test_training_on_a_missing_gpu_is_refused_before_any_work(raw, tmp_path):
    out = tmp_path / "out"
    done = cli(raw, out, "pretrain", "--device", "cuda:1", "--skip-bids-validation",
               env=run_env(tmp_path / "env"))
    assert done.returncode == 1, done.stderr[-2000:]
    error = one_error_line(done.stderr)
    if torch.cuda.is_available():
        expected = "does not exist" if torch.cuda.device_count() < 2 else None
        if expected is None:
            pytest.skip("this machine has a second GPU")
    else:
        expected = "no CUDA GPU is available here; use --device cpu or auto"
    assert expected in error
    assert not list(out.glob("sub-*")) and not (out / "models").exists()
