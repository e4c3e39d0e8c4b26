"""The one training engine, for every pre-training method and for fine-tuning.

What varies between methods lives in an :class:`~bids_pcs.training.objective.Objective`
(a loss and what it needs per batch) and in a *trainable-parameter rule* (which
network parameters learn; the fine-tuning strategies are such rules).  Everything
else is here, once:

- batches sliced from crops cached in memory (on the GPU when they fit), a
  seeded permutation per epoch, sharded across processes under ``torchrun``
  so that ``W`` processes compute what one process accumulating ``W`` times
  as many micro-batches computes (same crops, same random draws);
- bf16 autocast on CUDA, gradient accumulation, ``zero_grad`` after every
  optimiser step (the source paper's training loop never called it);
- DistributedDataParallel (NCCL on CUDA, gloo on CPU) with ``no_sync`` while
  accumulating;
- a learning-rate schedule (constant, or cosine with linear warm-up,
  :mod:`bids_pcs.training.schedule`) set before every optimiser step;
- one log line per epoch (loss, validation figures, time), a tqdm bar with
  loss and crops per second while an epoch runs (on a terminal only: written
  to a file or a SLURM log a bar is thousands of carriage-return fragments),
  a per-epoch TSV log;
- a checkpoint per epoch (safetensors + JSON, no pickles), ``resume`` from the
  last one, and SIGTERM/SIGUSR1 (HPC pre-emption) saving a checkpoint at the
  next step boundary and returning with ``interrupted=True``;
- an optional per-epoch ``evaluate`` hook and best-epoch tracking (fine-tuning).

Usage::

    engine = Engine(network, objective, TrainConfig(epochs=20, checkpoint_dir=work / "ckpt"),
                    device=device, context=context, trainable=strategy_rule)
    result = engine.fit(crops)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from bids_pcs.errors import BidsPcsError, ModelFileError
from bids_pcs.io.atomic import write_text
from bids_pcs.models.tensor_file import write_tensors
from bids_pcs.training.checkpoint import (
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
    save_checkpoint,
)
from bids_pcs.training.data import CropSet
from bids_pcs.training.distributed import DistContext, any_true, mean_over_processes
from bids_pcs.training.memory import peak_memory_mb
from bids_pcs.training.objective import Objective, count_parameters
from bids_pcs.training.schedule import LearningRateSchedule

LOGGER = logging.getLogger("bids_pcs.training")
TrainableRule = Callable[[nn.Module], Iterable[str]]
Evaluate = Callable[[nn.Module], dict[str, float]]
# torch >= 2.13 renamed broadcast_buffers; both keep the initial broadcast
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(
                       DistributedDataParallel.__init__).parameters
                   else {"broadcast_buffers": False})
_STOP_CHECK_EVERY = 10  # optimiser steps between stop checks under DDP
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1")
                      if hasattr(signal, name))


class TrainingInterruptedError(BidsPcsError):
    """Training stopped on SIGTERM/SIGUSR1 after saving a checkpoint (rerun with --resume)."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a pre-empted job


@dataclass(frozen=True)
class TrainConfig:
    """How to train, independent of what is trained.

    Args:
        epochs: passes over the crops (a resumed run stops at the same total).
        batch_size: crops per process per forward pass.
        accumulate_steps: forward passes per optimiser step.
        learning_rate: AdamW base learning rate (every phase).
        lr_schedule: ``"constant"`` or ``"cosine"`` (with warm-up; see
            :mod:`bids_pcs.training.schedule`), over all optimiser steps of the run.
        warmup_fraction: share of the optimiser steps with a linear warm-up.
        weight_decay: AdamW weight decay.
        seed: seeds the epoch order and per-epoch randomness (masks, noise, views).
        mixed_precision: bf16 autocast on CUDA (ignored on CPU).
        max_grad_norm: clip gradients to this norm when set.
        checkpoint_dir: where the per-epoch checkpoint goes; ``None``: no checkpoints.
        resume: continue from the checkpoint in ``checkpoint_dir`` when there is one.
        log_tsv: per-epoch log file; ``None``: no log file.
        progress: show a progress bar while an epoch runs (main process, and only
            when stderr is a terminal); every epoch logs one line regardless.
        description: label of the progress bar and the epoch lines.
        steps_per_epoch: cap on batches per epoch (benchmarks, smoke tests).
        monitor: key of ``evaluate``'s output that selects the best epoch.
        monitor_mode: ``"max"`` or ``"min"``.
        cache_on_device: keep all crops on the GPU; ``None``: when they take
            under a quarter of its free memory.

    Example::

        TrainConfig(epochs=2, batch_size=2, checkpoint_dir=Path("work/ckpt"), resume=True)
    """

    epochs: int
    batch_size: int = 2
    accumulate_steps: int = 1
    learning_rate: float = 2e-4
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    weight_decay: float = 1e-5
    seed: int = 0
    mixed_precision: bool = True
    max_grad_norm: float | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    log_tsv: Path | None = None
    progress: bool = True
    description: str = "train"
    steps_per_epoch: int | None = None
    monitor: str | None = None
    monitor_mode: str = "max"
    cache_on_device: bool | None = None


@dataclass
class TrainResult:
    """What a training run did.

    ``history`` holds one row per epoch (losses, evaluation metrics, seconds,
    crops per second, peak memory); ``best_state`` is a CPU copy of the network
    weights at the best monitored epoch (when ``monitor`` was set).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    epochs_completed: int = 0
    global_step: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    crops_per_second: float = 0.0
    peak_memory_mb: float = 0.0
    trainable_parameters: int = 0
    total_parameters: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None
    schedule: dict[str, Any] = field(default_factory=dict)


class _StepModule(nn.Module):
    """Network and objective as one module, so DDP sees every trained parameter."""

    def __init__(self, network: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.network = network
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor], phase: str) -> dict[str, torch.Tensor]:
        return self.objective.losses(batch, self.network, phase)


class _StopRequests:
    """Turns SIGTERM/SIGUSR1 into a flag checked at step boundaries (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True


class Engine:
    """Train ``network`` with ``objective``.

    Args:
        network: the model (a :class:`~bids_pcs.models.network.PcsNetwork`, possibly
            with LoRA adapters injected); trained in place.
        objective: the loss and its own modules; ``objective.setup(network)`` must
            have been called.
        config: the :class:`TrainConfig`.
        device: where to train.
        context: this process's place in a DDP run (default: single process).
        trainable: rule returning the names of the network parameters to train;
            default ``objective.trainable_names``. Every other network parameter
            is frozen (``requires_grad=False``) and left bit-identical.

    Example::

        engine = Engine(network, objective, TrainConfig(epochs=1), device=torch.device("cpu"))
        result = engine.fit(crops)
        result.history[-1]["loss"]
    """

    def __init__(self, network: nn.Module, objective: Objective, config: TrainConfig, *,
                 device: torch.device | None = None, context: DistContext | None = None,
                 trainable: TrainableRule | None = None) -> None:
        self.network = network
        self.objective = objective
        self.config = config
        self.device = device or torch.device("cpu")
        self.context = context or DistContext()
        self._apply_trainable(trainable or objective.trainable_names)
        if self.device.type == "cuda":
            # crops have one fixed shape: let cuDNN pick the fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.network.to(self.device)
        self.objective.to(self.device)
        self.phases = tuple(objective.phases)
        self.optimizers = self._build_optimizers()
        self._module = _StepModule(network, objective)
        self._model: nn.Module = self._module
        if self.context.enabled:
            self._model = DistributedDataParallel(
                self._module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # several phases (or a partial forward) leave some parameters unused per pass
                find_unused_parameters=len(self.phases) > 1
                or bool(getattr(objective, "find_unused_parameters", False)),
                # buffers are constants or updated alike on every process from
                # gathered values (the contrastive queue): synchronised at start only
                **_NO_BUFFER_SYNC,
            )

    # ------------------------------------------------------------------ set-up
    def _apply_trainable(self, rule: TrainableRule) -> None:
        names = set(rule(self.network))
        known = {n for n, _ in self.network.named_parameters()}
        unknown = sorted(names - known)
        if unknown:
            raise ValueError(f"trainable rule names unknown parameters: {unknown[:5]}")
        for name, param in self.network.named_parameters():
            param.requires_grad_(name in names)
        self.trainable_parameters = count_parameters(
            p for p in self.network.parameters() if p.requires_grad)
        self.total_parameters = count_parameters(self.network.parameters())

    def _build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {}
        network_params = [p for p in self.network.parameters() if p.requires_grad]
        for i, phase in enumerate(self.phases):
            params = (network_params if i == 0 else []) + self.objective.phase_parameters(phase)
            if not params:
                raise ValueError(f"phase {phase!r} of {self.objective.name!r} has nothing to train")
            fused = self.device.type == "cuda"
            optimizers[phase] = torch.optim.AdamW(
                params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay,
                fused=fused or None)
        return optimizers

    def _prepare_data(self, crops: CropSet) -> CropSet:
        if self.device.type != "cuda":
            return crops
        keep = self.config.cache_on_device
        if keep is None:
            free, _ = torch.cuda.mem_get_info(self.device)
            keep = crops.nbytes < free // 4
        # on the GPU, batches are index_select on device: no host copies per step
        return crops.to(self.device) if keep else crops.pin_memory()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.config.mixed_precision:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ epochs
    def _epoch_batches(self, n_crops: int, epoch: int) -> list[tuple[int, torch.Tensor]]:
        """This process's micro-batches of ``epoch``: (index in the epoch, crop indices).

        The epoch's crops are cut into micro-batches once, whatever the number of
        processes; process ``r`` of ``W`` takes micro-batches ``r``, ``r + W``,
        ``r + 2W``... So an optimiser step of ``W`` processes with
        ``accumulate_steps = A`` sees exactly the ``A x W`` micro-batches that one
        process with ``accumulate_steps = A x W`` sees, each with the same random
        draws (see :meth:`_seed_batch`): data-parallel training computes what
        gradient accumulation computes.
        """
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(n_crops, generator=generator)
        world = self.context.world_size
        size = self.config.batch_size
        if n_crops // size < world:
            # fewer crops than one batch per process: one smaller batch each
            size = n_crops // world
            if size == 0:
                return []
        micro = list(order[: n_crops - n_crops % size].split(size))
        # equal shares so that every process runs the same number of steps
        micro = micro[: len(micro) - len(micro) % world]
        batches = [(m, micro[m]) for m in range(self.context.rank, len(micro), world)]
        if self.config.steps_per_epoch is not None:
            batches = batches[: self.config.steps_per_epoch]
        return batches

    def _seed_batch(self, epoch: int, micro_batch: int) -> None:
        """Seed the random draws of one micro-batch (masks, noise, views, timesteps).

        The seed depends on the run's seed, the epoch and the micro-batch's index
        in the epoch, not on the process: a micro-batch gets the same draws in a
        data-parallel run as in a single process, and a resumed run the same
        draws as an uninterrupted one.
        """
        seed = ((self.config.seed * 1_000_003 + epoch) * 1_000_033 + micro_batch) % 2**31
        torch.manual_seed(seed)
        self.objective.reseed(seed)

    def fit(self, crops: CropSet, evaluate: Evaluate | None = None) -> TrainResult:
        """Train on ``crops`` until ``config.epochs`` or a stop signal.

        Args:
            crops: the training crops (and targets for supervised objectives).
            evaluate: called after every epoch with the network in eval mode and
                gradients off; its metrics join the log and select the best epoch.

        Returns:
            The :class:`TrainResult`; ``interrupted`` is true when a signal stopped
            training after saving a checkpoint.
        """
        cfg = self.config
        data = self._prepare_data(crops)
        state = self._resume_state()
        result = TrainResult(history=list(state["history"]),
                             trainable_parameters=self.trainable_parameters,
                             total_parameters=self.total_parameters,
                             best_epoch=state.get("best_epoch"),
                             best_score=state.get("best_score"))
        global_step = int(state["global_step"])
        start_epoch = int(state["epoch"])
        skip = int(state["batch_in_epoch"])
        partial = state.get("partial", {})
        started = time.perf_counter()
        crops_seen = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        steps_per_epoch = math.ceil(len(self._epoch_batches(len(data), 0))
                                    / cfg.accumulate_steps)
        self.schedule = LearningRateSchedule(cfg.lr_schedule, cfg.epochs * steps_per_epoch,
                                             cfg.warmup_fraction)
        self._zero_grad()
        self._model.train()
        with _StopRequests() as stop:
            for epoch in range(start_epoch, cfg.epochs):
                batches = self._epoch_batches(len(data), epoch)
                sums = {k: torch.tensor(v, device=self.device) for k, v in
                        partial.get("sums", {}).items()}
                count = int(partial.get("count", 0))
                epoch_started = time.perf_counter()
                epoch_crops = 0
                bar = self._progress(epoch, len(batches), skip)
                for b_index in range(skip, len(batches)):
                    micro_batch, indices = batches[b_index]
                    self._seed_batch(epoch, micro_batch)
                    batch = data.batch(indices, self.device)
                    boundary = ((b_index + 1) % cfg.accumulate_steps == 0
                                or b_index + 1 == len(batches))
                    # the step's place in the run, not a counter: resuming needs no state
                    self._set_learning_rate(epoch * steps_per_epoch
                                            + b_index // cfg.accumulate_steps)
                    losses = self._step(batch, boundary)
                    for key, value in losses.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
                    global_step += 1
                    n = len(indices) * self.context.world_size
                    epoch_crops += n
                    crops_seen += n
                    self._update_progress(bar, sums, count, epoch_crops, epoch_started)
                    if boundary and self._should_stop(stop, global_step, b_index,
                                                      len(batches)):
                        partial = {"sums": {k: float(v) for k, v in sums.items()},
                                   "count": count}
                        self._save(epoch, b_index + 1, global_step, result, partial)
                        bar.close()
                        result.interrupted = True
                        return self._finish(result, global_step, epoch, started, crops_seen)
                bar.close()
                row = self._epoch_row(epoch, sums, count, epoch_crops, epoch_started)
                validation: dict[str, float] = {}
                if evaluate is not None:
                    evaluation_started = time.perf_counter()
                    validation = self._evaluate(evaluate)
                    row.update(validation)
                    row["validation_seconds"] = time.perf_counter() - evaluation_started
                    self._track_best(row, epoch, result)
                result.history.append(row)
                self._log_epoch(row, validation, best=result.best_epoch == epoch)
                skip, partial = 0, {}
                self._write_log(result.history)
                self._save(epoch + 1, 0, global_step, result, {})
        return self._finish(result, global_step, cfg.epochs, started, crops_seen)

    def _step(self, batch: dict[str, torch.Tensor], boundary: bool) -> dict[str, torch.Tensor]:
        logged: dict[str, torch.Tensor] = {}
        for phase in self.phases:
            sync = (contextlib.nullcontext() if boundary or not self.context.enabled
                    else self._model.no_sync())  # type: ignore[operator]
            with sync:
                with self._autocast():
                    losses = self._model(batch, phase)
                # finiteness is checked where losses are read anyway (progress bar,
                # epoch end): a check here would synchronise with the GPU every step
                (losses["loss"] / self.config.accumulate_steps).backward()
            if boundary:
                optimizer = self.optimizers[phase]
                if self.config.max_grad_norm:
                    params = [p for g in optimizer.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
                optimizer.step()
                # every step starts from fresh gradients
                optimizer.zero_grad(set_to_none=True)
            prefix = "" if len(self.phases) == 1 else f"{phase}_"
            for key, value in losses.items():
                name = key if (key == "loss" and phase == self.phases[0]) else f"{prefix}{key}"
                logged[name] = value.detach().float()
        return logged

    def _set_learning_rate(self, optimizer_step: int) -> None:
        factor = self.schedule.factor(optimizer_step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = self.config.learning_rate * factor

    def _should_stop(self, stop: _StopRequests, global_step: int, b_index: int,
                     n_batches: int) -> bool:
        if not self.context.enabled:
            return stop.requested
        # agreeing on a stop is a collective: every few steps (at the same steps on
        # every process), not at each one
        if (global_step // self.config.accumulate_steps) % _STOP_CHECK_EVERY and \
                b_index + 1 < n_batches:
            return False
        return any_true(stop.requested, self.context, self.device)

    def _zero_grad(self) -> None:
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------- evaluation
    def _evaluate(self, evaluate: Evaluate) -> dict[str, float]:
        self._model.eval()
        try:
            with torch.no_grad(), self._autocast():
                metrics = evaluate(self.network)
        finally:
            self._model.train()
        return {k: float(v) for k, v in metrics.items()}

    def _track_best(self, row: dict[str, float], epoch: int, result: TrainResult) -> None:
        key = self.config.monitor
        if key is None:
            return
        if key not in row:
            raise KeyError(f"monitor {key!r} is not among the evaluation metrics {sorted(row)}")
        score = row[key]
        better = (result.best_score is None or math.isnan(result.best_score)
                  or (score > result.best_score if self.config.monitor_mode == "max"
                      else score < result.best_score))
        if better and not math.isnan(score):
            result.best_score, result.best_epoch = score, epoch
            result.best_state = {k: v.detach().to("cpu", copy=True)
                                 for k, v in self.network.state_dict().items()}
            if self.config.checkpoint_dir is not None and self.context.is_main:
                write_tensors(Path(self.config.checkpoint_dir) / "best.safetensors",
                              result.best_state)

    # ---------------------------------------------------------- logging
    def _progress(self, epoch: int, total: int, initial: int) -> tqdm:
        shown = self.config.progress and self.context.is_main and sys.stderr.isatty()
        return tqdm(total=total, initial=initial, unit="batch", leave=False, dynamic_ncols=True,
                    desc=f"{self.config.description} {epoch + 1}/{self.config.epochs}",
                    file=sys.stderr, disable=not shown)

    def _log_epoch(self, row: dict[str, float], validation: dict[str, float],
                   best: bool) -> None:
        """One plain line per epoch: the loss, the validation figures, the time."""
        if not self.context.is_main:
            return
        figures = [f"loss {row['loss']:.4f}"]
        # the counts a score rests on (``_n``) stay in the TSV log; the line shows the scores
        figures += [f"{key} {value:.4f}" for key, value in validation.items()
                    if not key.endswith("_n")]
        mark = " (best so far)" if best and self.config.monitor else ""
        LOGGER.info("%s epoch %d/%d: %s, %.1f s%s", self.config.description, row["epoch"],
                    self.config.epochs, ", ".join(figures), row["seconds"], mark)

    def _update_progress(self, bar: tqdm, sums: dict[str, torch.Tensor], count: int,
                         epoch_crops: int, epoch_started: float) -> None:
        bar.update(1)
        # reading the loss synchronises with the GPU: only a few times per second
        if not bar.disable and (count % 5 == 1 or bar.n == bar.total):
            elapsed = max(time.perf_counter() - epoch_started, 1e-9)
            loss = self._checked(float(sums["loss"]) / count)
            bar.set_postfix(loss=f"{loss:.4f}", crops_s=f"{epoch_crops / elapsed:.2f}")

    def _checked(self, loss: float) -> float:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"The {self.objective.name} loss became {loss}; lower the learning rate or "
                "check the crops' intensities.")
        return loss

    def _epoch_row(self, epoch: int, sums: dict[str, torch.Tensor], count: int,
                   epoch_crops: int, epoch_started: float) -> dict[str, float]:
        means = {k: float(v) / max(count, 1) for k, v in sums.items()}
        means = mean_over_processes(means, self.context, self.device)
        self._checked(means.get("loss", 0.0))
        seconds = time.perf_counter() - epoch_started
        losses = {"loss": means.pop("loss", float("nan")), **dict(sorted(means.items()))}
        return {"epoch": epoch + 1, **losses, "seconds": seconds,
                "crops_per_second": epoch_crops / max(seconds, 1e-9),
                "peak_memory_mb": self.peak_memory_mb(),
                "learning_rate": self.optimizers[self.phases[0]].param_groups[0]["lr"]}

    def _write_log(self, history: list[dict[str, float]]) -> None:
        if self.config.log_tsv is None or not self.context.is_main:
            return
        write_text(self.config.log_tsv, history_to_tsv(history))

    def peak_memory_mb(self) -> float:
        """Peak memory: allocated GPU memory on CUDA, the process's resident peak on CPU.

        :func:`bids_pcs.training.memory.peak_memory_mb`, which reads ``VmHWM`` on
        Linux (``ru_maxrss`` survives ``exec`` and would report a parent's peak).
        """
        return peak_memory_mb(self.device)

    # ---------------------------------------------------------- checkpoints
    def _save(self, epoch: int, batch_in_epoch: int, global_step: int, result: TrainResult,
              partial: dict[str, Any]) -> None:
        if self.config.checkpoint_dir is None or not self.context.is_main:
            return
        tensors = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        tensors.update({f"objective.{k}": v for k, v in self.objective.state_dict().items()})
        optim_meta = {}
        for phase, optimizer in self.optimizers.items():
            flat, meta = optimizer_to_flat(optimizer, f"optimizer.{phase}")
            tensors.update(flat)
            optim_meta[phase] = meta
        save_checkpoint(self.config.checkpoint_dir, _unshare(tensors), {
            "objective": self.objective.name,
            "network_spec": _spec_dict(self.network),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "global_step": global_step,
            "history": result.history,
            "partial": partial,
            "optimizers": optim_meta,
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "world_size": self.context.world_size,
            "batch_size": self.config.batch_size,
            "seed": self.config.seed,
        })

    def _resume_state(self) -> dict[str, Any]:
        fresh = {"epoch": 0, "batch_in_epoch": 0, "global_step": 0, "history": [], "partial": {}}
        if not self.config.resume or self.config.checkpoint_dir is None:
            return fresh
        checkpoint = load_checkpoint(self.config.checkpoint_dir)
        if checkpoint is None:
            return fresh
        state = checkpoint.state
        where = Path(self.config.checkpoint_dir)
        if state.get("objective") != self.objective.name:
            raise ModelFileError(
                f"The checkpoint in {where} was written by {state.get('objective')!r}, not "
                f"{self.objective.name!r}; use another work directory or drop --resume.")
        if state.get("network_spec") != _spec_dict(self.network):
            raise ModelFileError(
                f"The checkpoint in {where} belongs to another network configuration; use "
                "another work directory or drop --resume.")
        tensors = checkpoint.tensors
        self.network.load_state_dict(_strip(tensors, "network."), strict=True)
        self.objective.load_state_dict(_strip(tensors, "objective."), strict=True)
        for phase, optimizer in self.optimizers.items():
            optimizer_from_flat(optimizer, tensors, state["optimizers"][phase],
                                f"optimizer.{phase}")
        return state

    def _finish(self, result: TrainResult, global_step: int, epochs: int, started: float,
                crops_seen: int) -> TrainResult:
        result.seconds = time.perf_counter() - started
        result.global_step = global_step
        result.epochs_completed = epochs
        result.crops_per_second = crops_seen / max(result.seconds, 1e-9)
        result.peak_memory_mb = self.peak_memory_mb()
        result.schedule = self.schedule.describe()
        return result


def history_to_tsv(history: list[dict[str, float]]) -> str:
    """The per-epoch log as TSV text (columns in first-seen order)."""
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    lines = ["\t".join(columns)]
    for row in history:
        lines.append("\t".join(_format(row.get(c)) for c in columns))
    return "\n".join(lines) + "\n"


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage; copy any repeat
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, value in tensors.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        out[key] = value.clone() if ident in seen else value
        seen.add(ident)
    return out


def _spec_dict(network: nn.Module) -> dict[str, Any] | None:
    spec = getattr(network, "spec", None)
    return spec.to_dict() if spec is not None else None
