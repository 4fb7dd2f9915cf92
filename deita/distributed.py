"""Process-group helpers: who am I, which items are mine, sharing small decisions, gathering in order.

Two ways to spread work over processes:

* Pool passes (scores, embeddings, log-probs) go through the chunked store (:mod:`deita.store`): the
  pool is cut into world-size-independent chunks of contiguous rows, each computed from its own rows
  only, written to disk by the rank that computed it and read back from disk (arrays through memory
  maps). Nothing large crosses the process group, and the values are bitwise the same at every world
  size and after any resume (``tests/test_resume_scoring.py``). The price: rows are batched by length
  within a chunk (1,024 rows by default) rather than within a whole shard.
* Small per-item work (evaluation generations, held-out losses) uses :func:`map_sharded`: contiguous
  shards in rank order, gathered back in that order with ``all_gather_object``, so every item lands where
  world size 1 puts it. The values are bitwise the world-size-1 values when an item's result does not
  depend on which other items share its shard.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


DEFAULT_TIMEOUT_MINUTES = 60.0
"""Process-group timeout when none is configured (``launch.timeout_minutes``)."""
_timeout_minutes = DEFAULT_TIMEOUT_MINUTES


class RankStalled(RuntimeError):
    """A rank did not reach a barrier within the process-group timeout."""


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


def init_distributed(timeout_minutes: float | None = None) -> DistInfo:
    """Join the process group when launched with several processes (gloo on CPU, nccl on GPU).

    ``timeout_minutes`` (``launch.timeout_minutes``, default :data:`DEFAULT_TIMEOUT_MINUTES`) bounds how long
    any collective waits for a rank: it is the group's timeout, which the Trainer reuses, and the time
    :func:`barrier` gives each rank before it names the ones missing.
    """
    global _timeout_minutes
    _timeout_minutes = float(timeout_minutes or DEFAULT_TIMEOUT_MINUTES)
    info = env_dist()
    if info.world_size > 1:
        from datetime import timedelta

        import torch
        from accelerate import PartialState

        # On CPU accelerate finds no backend and silently reports a world of one: ask for gloo. Under
        # DeepSpeed keep the DeepSpeed path (cpu=True would silently drop it) with a gloo backend.
        timeout = timedelta(minutes=_timeout_minutes)
        if torch.cuda.is_available():
            state = PartialState(timeout=timeout)
        elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            state = PartialState(backend="gloo", timeout=timeout)
        else:
            state = PartialState(cpu=True, timeout=timeout)
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


def barrier(where: str = "") -> None:
    """Wait for every process (no-op in a single process). On a gloo group a rank that does not arrive
    within the timeout ends the job with :class:`RankStalled` naming it (``where`` says at which point); on
    NCCL the group's own timeout applies (NCCL has no monitored barrier)."""
    from datetime import timedelta

    dist = _active_group()
    if dist is None:
        return
    if dist.get_backend() != "gloo":
        dist.barrier()
        return
    try:
        dist.monitored_barrier(timeout=timedelta(minutes=_timeout_minutes), wait_all_ranks=True)
    except RuntimeError as err:
        import re

        text = str(err).splitlines()[0] if str(err) else repr(err)
        missing = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", text)
        who = (f"rank {missing.group(1).strip()}" if missing else
               f"a rank (rank {dist.get_rank()} saw: {text})")
        raise RankStalled(
            f"{who} did not reach the barrier{f' {where}' if where else ''} within launch.timeout_minutes="
            f"{_timeout_minutes:g}; stopping the job — raise launch.timeout_minutes if that step is legitimately slow"
        ) from None


def broadcast_from_main(obj: Any) -> Any:
    """The main process's ``obj`` on every rank (a small picklable value, e.g. a decision or a list of
    chunk numbers); ``obj`` is ignored on the other ranks."""
    dist = _active_group()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
