"""Collectives shared by the training loop, validation and checkpoints (the process group itself is started by
`train.engine_setup.init_distributed`)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def comm_device() -> torch.device:
    """Where the tensors of a collective must be: this process's GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """`t` reduced over every rank, on `comm_device()` (reduced in place when `t` is already there)."""
    t = t.to(comm_device())
    dist.all_reduce(t, op=op)
    return t
