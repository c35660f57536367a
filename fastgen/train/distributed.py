"""Multi-process data parallelism under torchrun (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

gloo on CPU, nccl on GPU. Every rank reads the same seeded epoch permutation and takes a strided
shard of each global minibatch; each rank's loss is its shard's sum scaled by world / global_batch,
so DDP's gradient average equals the gradient of the global minibatch mean even when the last
minibatch does not split evenly. Hence a 2-process run follows a 1-process run with the same
global batch (up to float summation order).
"""
import gc
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


class RankFailed(RuntimeError):
    """Another rank failed; it (or rank 0) reports why."""


def parse_device(name):
    """--device text -> torch.device, refusing names this machine cannot train on."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device {name!r}: training runs on cpu or cuda devices only")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"--device {name!r}: no CUDA device is available on this machine")
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {name!r}: this machine has {count} CUDA device(s)")
    return device


def setup(device=None):
    """Join the process group if launched by torchrun (WORLD_SIZE > 1); else a 1-process DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = parse_device(device)
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


def all_ok(ok, info):
    """True on every rank iff `ok` is true on every rank (a collective: all ranks must call it)."""
    if info.world <= 1:
        return bool(ok)
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        flag = flag.to(info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def collective(fn, info):
    """Run fn() on every rank; if it raises on any rank, raise on all of them (the failing rank
    its own error, the others RankFailed), so no rank is left waiting in a collective."""
    try:
        result, error = fn(), None
    except Exception as exc:  # noqa: BLE001  (re-raised below, on this rank and the others)
        result, error = None, exc
    if all_ok(error is None, info):
        return result
    if info.world > 1:  # rank 0 reports: its own error, else the first other rank's
        messages = [None] * info.world
        dist.all_gather_object(messages, None if error is None else _one_line(error))
        if info.rank == 0 and error is None:
            rank, msg = next((r, m) for r, m in enumerate(messages) if m is not None)
            raise RankFailed(f"(rank {rank}) {msg}")
        if info.rank != 0:
            raise RankFailed("reported by rank 0")
    raise error


def _one_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def barrier(info):
    if info.world > 1:
        dist.barrier()


def cleanup(info):
    """Leave the process group. A collection first, so that no DDP wrapper of the finished run
    (its reducer holds the group) outlives it into the interpreter's exit."""
    if info.world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
