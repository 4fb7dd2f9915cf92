"""Process-group helpers: who am I, which rows are mine, and gathering results in a fixed order.

Work is split into contiguous shards in rank order and gathered back in that order, so every item is
computed once and lands where world size 1 puts it. The values are bitwise the world-size-1 values when
an item's result does not depend on which other items share its shard (per-item work, or groups fixed
before sharding, as Nuggets and IFD do). A pass that batches its shard by length does depend on it: a
row meets other batch companions (padded width, matmul shapes) at each world size and float sums round
differently. DEITA scores and embeddings therefore agree with world size 1 within rounding, not bitwise
(measured: 3e-8 at world size 2 on tiny:llama; other batch companions move SmolLM2-135M fp32 scores by up
to 5e-6). ``tests/test_sharded_scoring.py`` holds them to 1e-5 and proves batch composition is the only
cause: each rank's values equal, bitwise, world size 1 run on that rank's shard alone. Making them bitwise equal needs one batch plan for the whole pool, i.e. every
turn's token length on every rank before scoring; cutting the pool into world-size-independent chunks
instead was measured and padded 15% more tokens on GPU-sized batches.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes artifacts and logs."""
        return self.rank == 0


def env_dist() -> DistInfo:
    """Rank and world size as the launcher (accelerate, torchrun, SLURM via accelerate) set them."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed() -> DistInfo:
    """Join the process group when launched with several processes (gloo on CPU, nccl on GPU)."""
    info = env_dist()
    if info.world_size > 1:
        import torch
        from accelerate import PartialState

        # On CPU accelerate finds no backend and silently reports a world of one: ask for gloo. Under
        # DeepSpeed keep the DeepSpeed path (cpu=True would silently drop it) with a gloo backend.
        if torch.cuda.is_available():
            state = PartialState()
        elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            state = PartialState(backend="gloo")
        else:
            state = PartialState(cpu=True)
        info = DistInfo(state.process_index, state.num_processes, state.local_process_index)
        if info.world_size != int(os.environ["WORLD_SIZE"]):
            raise RuntimeError(
                f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']} but the process group has "
                f"{info.world_size} process(es); on CPU launch with ACCELERATE_USE_CPU=1 and --multi_gpu"
            )
    return info


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of ``rank``'s contiguous share of ``n`` items; shares differ by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shutdown() -> None:
    """Wait for every process, then tear the process group down (no-op in a single process).

    Exiting with the group alive can abort a process at interpreter exit ("terminate called without an
    active exception") and fail a run that finished its work.
    """
    dist = _active_group()
    if dist is not None:
        dist.barrier()
        dist.destroy_process_group()


def _active_group():
    """``torch.distributed`` when a process group is up, else None. Where nothing imported it, no group
    can exist: answer without importing torch (seconds), so an early error exits fast."""
    if "torch.distributed" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    dist = _active_group()
    if dist is not None:
        dist.barrier()


def gather_concat(part: list[Any]) -> list[Any]:
    """Concatenate every rank's list in rank order; every rank gets the whole list."""
    dist = _active_group()
    if dist is None or dist.get_world_size() == 1:
        return list(part)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(part))
    return [x for p in parts for x in p]




def map_sharded(items: list[Any], fn, dist_info: DistInfo | None = None) -> list[Any]:
    """Apply ``fn`` (list → list of equal length) to this rank's shard and gather the full result (equal
    to world size 1 bitwise only if ``fn`` treats items independently of their shard: module doc)."""
    info = dist_info or env_dist()
    start, end = shard_bounds(len(items), info.rank, info.world_size)
    mine = fn(items[start:end]) if end > start else []
    if len(mine) != end - start:
        raise RuntimeError(f"sharded function returned {len(mine)} results for {end - start} items")
    return gather_concat(mine)
