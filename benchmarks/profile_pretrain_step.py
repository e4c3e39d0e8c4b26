"""torch.profiler top 10 operators of one pre-training step of a method (what its step costs).

Builds the network and the objective as ``bench_pretrain.py`` does (SwinUNETR
f24, crop 32x96x64, batch 2, random smooth crops), runs one warm-up step, then
profiles one engine step and prints the operators by self CPU time, plus the
number of network forward passes the step made (counted with a hook).

Usage::

    python benchmarks/profile_pretrain_step.py contrastive [--threads 2] [--rows 10]
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 96, 64))
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from bids_pcs.config import ModelSettings
    from bids_pcs.models.network import build_network
    from bids_pcs.pretraining import get_objective
    from bids_pcs.training.data import CropSet
    from bids_pcs.training.engine import Engine, TrainConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = build_network(ModelSettings(feature_size=args.feature_size), args.crop)
    objective = get_objective(args.method, {})
    objective.setup(network)
    crops = torch.nn.functional.avg_pool3d(torch.rand((2, 1, *args.crop)), 5, stride=1,
                                           padding=2)
    data = CropSet((crops - crops.min()) / (crops.max() - crops.min()))
    engine = Engine(network, objective, TrainConfig(epochs=1, batch_size=2, steps_per_epoch=1,
                                                    progress=False), device=torch.device("cpu"))
    engine.fit(data)  # warm-up
    # passes of the encoder or a copy of it (contrastive's key encoder) and of the decoder
    passes = {"encoder": 0, "decoder": 0}
    hooks = []
    for module in [*network.modules(), *objective.modules()]:
        for part in passes:
            if type(module) is type(getattr(network, part)):
                def count(*_, part=part):
                    passes[part] += 1
                hooks.append(module.register_forward_hook(count))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.fit(data)
    for hook in hooks:
        hook.remove()
    print(f"{args.method}: one step (batch 2): {passes['encoder']} encoder pass(es), "
          f"{passes['decoder']} decoder pass(es); load average {os.getloadavg()[0]:.2f}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
