"""The training engine: checkpoints, resume, SIGTERM, accumulation, trainable rules, devices."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from training_helpers import TINY_OPTIONS, PlainRestoration, crop_set, tiny_cnn

from bids_pcs.devices import (
    available_cpus,
    check_device,
    default_omp_threads,
    resolve_device,
    set_threads,
)
from bids_pcs.errors import DeviceError, ModelFileError
from bids_pcs.pretraining import get_objective
from bids_pcs.training.checkpoint import load_checkpoint
from bids_pcs.training.engine import Engine, TrainConfig

pytestmark = pytest.mark.usefixtures("two_torch_threads")


def _engine(tmp_path, epochs, *, method="reconstruction", resume=False, seed=0, **config):
    network = tiny_cnn(seed=seed)
    objective = get_objective(method, TINY_OPTIONS[method]) if method else PlainRestoration()
    objective.setup(network)
    options = {"batch_size": 2, "learning_rate": 1e-3, "progress": False, "seed": 7,
               "checkpoint_dir": tmp_path / "ckpt", "log_tsv": tmp_path / "log.tsv", **config}
    return Engine(network, objective, TrainConfig(epochs=epochs, resume=resume, **options))


def _state(engine):
    return {k: v.clone() for k, v in engine.network.state_dict().items()}


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(tmp_path):
    crops = crop_set(4)
    straight = _engine(tmp_path / "a", 3)
    straight.fit(crops)

    first = _engine(tmp_path / "b", 2)
    first.fit(crops)
    checkpoint = load_checkpoint(tmp_path / "b" / "ckpt")
    assert checkpoint.state["epoch"] == 2
    resumed = _engine(tmp_path / "b", 3, resume=True, seed=99)  # other init: must be overwritten
    result = resumed.fit(crops)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert (tmp_path / "b" / "log.tsv").read_text().count("\n") == 4  # header + 3 epochs
    for key, value in _state(straight).items():
        assert torch.allclose(resumed.network.state_dict()[key], value, atol=1e-6), key
    # only safetensors and JSON in a checkpoint: nothing that unpickles
    assert {p.suffix for p in (tmp_path / "b" / "ckpt").iterdir()} == {".safetensors", ".json"}


@pytest.mark.bad_input("checkpoint:of another method")
def test_resume_refuses_a_checkpoint_of_another_method(tmp_path):
    crops = crop_set(2)
    _engine(tmp_path, 1).fit(crops)
    with pytest.raises(ModelFileError, match="reconstruction"):
        _engine(tmp_path, 2, method="diffusion", resume=True).fit(crops)


@pytest.mark.bad_input("crash:SIGTERM inside the engine")
def test_sigterm_saves_a_checkpoint_and_returns_then_resume_finishes(tmp_path):
    crops = crop_set(8)
    engine = _engine(tmp_path, 2, batch_size=1)
    objective = engine.objective
    original = objective.losses
    calls = {"n": 0}

    def losses_then_signal(batch, network, phase):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-epoch, as a scheduler would
            os.kill(os.getpid(), signal.SIGTERM)
        return original(batch, network, phase)

    objective.losses = losses_then_signal
    result = engine.fit(crops)
    assert result.interrupted
    state = load_checkpoint(tmp_path / "ckpt").state
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 3, 3)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored

    resumed = _engine(tmp_path, 2, batch_size=1, resume=True)
    done = resumed.fit(crops)
    assert not done.interrupted
    assert done.global_step == 16 and len(done.history) == 2


def test_gradient_accumulation_equals_a_larger_batch(tmp_path):
    crops = crop_set(2)
    big = _engine(tmp_path / "a", 1, method=None, batch_size=2, checkpoint_dir=None)
    accumulated = _engine(tmp_path / "b", 1, method=None, batch_size=1, accumulate_steps=2,
                          checkpoint_dir=None)
    grads = {}
    for name, engine in (("big", big), ("accumulated", accumulated)):
        optimizer = engine.optimizers["main"]
        step = optimizer.step

        def recording_step(*args, _name=name, _engine=engine, _step=step, **kwargs):
            grads[_name] = {n: p.grad.clone() for n, p in _engine.network.named_parameters()
                            if p.grad is not None}
            return _step(*args, **kwargs)

        optimizer.step = recording_step
        engine.fit(crops)  # one optimiser step on the same two crops
    assert grads["big"].keys() == grads["accumulated"].keys()
    for key, value in grads["big"].items():
        assert torch.allclose(grads["accumulated"][key], value, rtol=1e-3, atol=1e-5), key
    # and zero_grad ran after the step: nothing left over for the next one
    assert all(p.grad is None for p in big.network.parameters())


def test_a_trainable_rule_freezes_everything_else_bit_for_bit(tmp_path):
    network = tiny_cnn()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    objective = PlainRestoration()
    objective.setup(network)

    def decoder_only(net):
        return [n for n, _ in net.named_parameters() if n.startswith("decoder.")]

    engine = Engine(network, objective, TrainConfig(epochs=2, progress=False,
                                                    learning_rate=1e-2), trainable=decoder_only)
    engine.fit(crop_set(2))
    for key, value in network.state_dict().items():
        changed = not torch.equal(value, before[key])
        if key.startswith("decoder.") and key.endswith("weight"):
            assert changed, key
        elif not key.startswith("decoder."):
            assert not changed, key
    assert engine.trainable_parameters == sum(
        p.numel() for n, p in network.named_parameters() if n.startswith("decoder."))


def test_evaluate_hook_selects_the_best_epoch(tmp_path):
    scores = iter([0.2, 0.9, 0.5])
    engine = _engine(tmp_path, 3, monitor="val_score")
    result = engine.fit(crop_set(2), evaluate=lambda net: {"val_score": next(scores)})
    assert result.best_epoch == 1 and result.best_score == 0.9
    assert [row["val_score"] for row in result.history] == [0.2, 0.9, 0.5]
    assert (tmp_path / "ckpt" / "best.safetensors").is_file()


def test_without_a_terminal_each_epoch_is_one_plain_line_with_its_validation(
        tmp_path, capfd, caplog):
    # written to a file or a SLURM log, a tqdm bar is thousands of "\r" fragments
    # (issue 18): there, and on a terminal too, one line per epoch says how it went
    scores = iter([0.2, 0.9, 0.5])
    engine = _engine(tmp_path, 3, monitor="val_score", progress=True)
    with caplog.at_level("INFO", logger="bids_pcs.training"):
        engine.fit(crop_set(2), evaluate=lambda net: {"val_score": next(scores)})
    assert "\r" not in capfd.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.name == "bids_pcs.training"]
    assert len(lines) == 3
    assert lines[1].startswith("train epoch 2/3: loss ")
    assert "val_score 0.9000" in lines[1] and lines[1].endswith(" s (best so far)")
    assert "val_score 0.5000" in lines[2] and "best" not in lines[2]


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(DeviceError, match="not understood"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            resolve_device("cuda:1")
        with pytest.raises(DeviceError, match="no CUDA GPU"):
            check_device("cuda")
    check_device("auto")  # never an error: falls back to the CPU
    with pytest.raises(DeviceError, match="not understood"):
        check_device("gpu0")


def test_one_thread_setting_reaches_openmp_and_torch(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    set_threads(1)
    assert torch.get_num_threads() == 1
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert default_omp_threads(32) == 8 and default_omp_threads(3) == 3
    assert available_cpus() >= 1


def test_peak_memory_is_this_process_s_own_even_after_exec_from_a_big_parent():
    """``ru_maxrss`` survives exec; the engine's (and the study's) figure must not."""
    import subprocess
    import sys

    child = ("import resource; from training_helpers import tiny_cnn; "
             "from training_helpers import PlainRestoration; "
             "from bids_pcs.training.engine import Engine, TrainConfig; "
             "network = tiny_cnn(); objective = PlainRestoration(); objective.setup(network); "
             "engine = Engine(network, objective, TrainConfig(epochs=1, progress=False)); "
             "print(engine.peak_memory_mb(), "
             "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    parent = ("import os, sys, numpy; big = numpy.ones(1200 * 2**20 // 8); "
              f"os.execv(sys.executable, [sys.executable, '-c', {child!r}])")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True,
                          check=True, timeout=120, cwd=os.path.dirname(__file__))
    engine_peak, inherited = map(float, done.stdout.split()[-2:])
    assert inherited > 1200  # the parent's 1.2 GB array, reported by ru_maxrss
    assert engine_peak < 1000  # the child's own peak: torch and a tiny network
