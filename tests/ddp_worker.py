"""One process of the two-process DDP test (run by torchrun from test_engine_ddp.py).

Each process starts from *different* weights on purpose: DDP must broadcast the
first process's weights and keep every process identical from then on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from training_helpers import TINY_OPTIONS, crop_set, tiny_cnn

from bids_pcs.models.tensor_file import write_tensors
from bids_pcs.pretraining import get_objective
from bids_pcs.training.distributed import init_distributed, shutdown_distributed
from bids_pcs.training.engine import Engine, TrainConfig


def main(out: Path) -> None:
    torch.set_num_threads(1)
    context, device = init_distributed("cpu")
    try:
        for method in ("reconstruction", "adversarial"):
            network = tiny_cnn(seed=10 + context.rank)
            objective = get_objective(method, TINY_OPTIONS[method])
            objective.setup(network)
            config = TrainConfig(epochs=2, batch_size=2, learning_rate=1e-3, progress=False,
                                 checkpoint_dir=out / f"ckpt-{method}")
            result = Engine(network, objective, config, device=device, context=context).fit(
                crop_set(8))
            state = {f"network.{k}": v for k, v in network.state_dict().items()}
            state.update({f"objective.{k}": v for k, v in objective.state_dict().items()})
            state["loss"] = torch.tensor([row["loss"] for row in result.history])
            write_tensors(out / f"rank{context.rank}-{method}.safetensors", state)
    finally:
        shutdown_distributed(context)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
