"""One process of the two-process DDP tests (run by torchrun from test_engine_ddp.py).

``python ddp_worker.py OUT MODE [DEVICE]`` (DEVICE ``cpu``, gloo, by default;
``cuda``: NCCL, one GPU per process, in ``tests/test_cuda.py``):

- ``identical``: each process starts from *different* weights on purpose; DDP
  must broadcast the first process's weights and keep every process identical.
- ``equivalent``: masked reconstruction (random masks) at 2 crops per process;
  the weights are compared with one process accumulating 2 micro-batches.
- ``fail``: the second process raises in its fourth step; every process must
  end at once, not wait at a barrier for the process group's timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from training_helpers import TINY_OPTIONS, crop_set, tiny_cnn

from bids_pcs.models.tensor_file import write_tensors
from bids_pcs.pretraining import get_objective
from bids_pcs.training.distributed import distributed_run
from bids_pcs.training.engine import Engine, TrainConfig

EQUIVALENCE = {"crops": 12, "epochs": 2, "batch_size": 2, "learning_rate": 1e-3}
# contrastive: its keys are gathered across processes into one queue
METHODS = ("reconstruction", "adversarial", "contrastive")


class RankFailureError(RuntimeError):
    """The error the ``fail`` mode raises on the second process."""


def train_equivalent(context=None, device=None, accumulate_steps: int = 1):
    """The equivalence run: the same for the DDP processes and the single-process reference."""
    network = tiny_cnn(seed=4)
    objective = get_objective("reconstruction", TINY_OPTIONS["reconstruction"])
    objective.setup(network)
    config = TrainConfig(epochs=EQUIVALENCE["epochs"], batch_size=EQUIVALENCE["batch_size"],
                         accumulate_steps=accumulate_steps,
                         learning_rate=EQUIVALENCE["learning_rate"], progress=False, seed=5)
    result = Engine(network, objective, config, device=device, context=context).fit(
        crop_set(EQUIVALENCE["crops"], seed=6))
    return network, result


def main(out: Path, mode: str, device_spec: str = "cpu") -> None:
    torch.set_num_threads(1)
    with distributed_run(device_spec) as (context, device):
        if mode == "equivalent":
            network, result = train_equivalent(context, device)
            state = dict(network.state_dict())
            state["loss"] = torch.tensor([row["loss"] for row in result.history])
            write_tensors(out / f"equivalent-rank{context.rank}.safetensors", state)
            return
        for method in METHODS:
            network = tiny_cnn(seed=10 + context.rank)
            objective = get_objective(method, TINY_OPTIONS[method])
            objective.setup(network)
            if mode == "fail" and context.rank == 1:
                original, calls = objective.losses, []

                def failing(batch, net, phase, original=original, calls=calls):
                    calls.append(1)
                    if len(calls) == 4:
                        raise RankFailureError("rank 1 gave up in its fourth step")
                    return original(batch, net, phase)

                objective.losses = failing
            config = TrainConfig(epochs=2 if mode == "identical" else 200, batch_size=2,
                                 learning_rate=1e-3, progress=False,
                                 checkpoint_dir=out / f"ckpt-{method}")
            result = Engine(network, objective, config, device=device, context=context).fit(
                crop_set(8))
            state = {f"network.{k}": v for k, v in network.state_dict().items()}
            state.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
            state["loss"] = torch.tensor([row["loss"] for row in result.history])
            write_tensors(out / f"rank{context.rank}-{method}.safetensors", state)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "identical",
         sys.argv[3] if len(sys.argv) > 3 else "cpu")
