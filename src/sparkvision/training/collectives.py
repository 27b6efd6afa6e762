"""The collectives a training rank uses, as no-ops on a single rank.

One :class:`Collective` per rank wraps ``torch.distributed`` (gloo on CPU, nccl on GPU)
so the epoch loop and the tasks read the same with 1 rank or K: a sum of counts, the
max of a number, every rank's picklable object, rank 0's object.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class Collective:
    """Sums, maxima, gathers and broadcasts across the ranks of the process group."""

    def __init__(self, world: int, device: torch.device) -> None:
        self.world = world
        self.device = device
        self.on = world > 1

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over the ranks (on the CPU)."""
        if not self.on:
            return values
        t = values.to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def max(self, value: int) -> int:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (on every rank)."""
        if not self.on:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
