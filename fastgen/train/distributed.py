"""Multi-process data parallelism under torchrun (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

gloo on CPU, nccl on GPU. Every rank reads the same seeded epoch permutation and takes a strided
shard of each global minibatch; each rank's loss is its shard's sum scaled by world / global_batch,
so DDP's gradient average equals the gradient of the global minibatch mean even when the last
minibatch does not split evenly. Hence a 2-process run follows a 1-process run with the same
global batch (up to float summation order).
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def setup(device=None):
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); else a 1-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if world <= 1:
        return DistInfo(0, 1, device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, device)


def wrap(module, info):
    """DistributedDataParallel around `module` when world > 1, else the module itself."""
    if info.world <= 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def mean_over_ranks(values, info):
    """{name: float} averaged over ranks (for logging; identity with one process)."""
    if info.world <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t)}


def barrier(info):
    if info.world > 1:
        dist.barrier()


def cleanup(info):
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
