"""DDP under torchrun: gloo on CPU, nccl on GPU. Without torchrun everything is a no-op."""

import os

import torch
import torch.distributed as dist
from torch import nn


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup() -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device."""
    if not launched_by_torchrun():
        return torch.device("cpu")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def teardown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module) -> nn.Module:
    """DDP around `model` when distributed; buffers (masks included) stay identical on every rank
    because every rank builds them from the same checkpoint and seeds."""
    if not dist.is_initialized():
        return model
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               broadcast_buffers=False)


def shard(x: torch.Tensor, y: torch.Tensor):
    """This rank's share of a global batch (strided, so shards differ by at most one row)."""
    n = world_size()
    return (x, y) if n == 1 else (x[rank()::n], y[rank()::n])
