"""Score a whole pool with one DEITA scorer: sharded across processes, cached by content."""

from __future__ import annotations

import logging
import time
from typing import Any

from deita.selection.scorers.prompts import TEMPLATES

log = logging.getLogger(__name__)

SCORE_CACHE_VERSION = 2
"""Bumped when the scoring code changes what it computes, so stale cache entries are not reused (2: duplicate
prompts share one score)."""


def score_cache_key(kind: str, data_fingerprint: str, model_path: str, *, max_length: int, dtype: str,
                    on_error: str) -> dict:
    """What determines a pool's scores: data, prompt template, model identity, max_length, dtype, policy.

    Batch size and device are left out: batching cannot change a score beyond 1e-5 (tested).
    """
    from deita.fingerprint import hash_json, model_identity

    return {
        "version": SCORE_CACHE_VERSION,
        "data": data_fingerprint,
        "kind": kind,
        "template": hash_json(TEMPLATES[kind]),
        "model": model_identity(model_path),
        "max_length": int(max_length),
        "dtype": str(dtype),
        "on_error": on_error,
    }


def score_pool(rows: list[dict], kind: str, model_path: str, *, cache: Any = None, data_fingerprint: str = "",
               dist_info: Any = None, on_error: str = "raise", max_length: int = 2048,
               max_tokens_per_batch: int = 16384, dtype: str = "float32", device: str = "auto",
               trust_remote_code: bool = False) -> dict[str, list]:
    """Columns ``<kind>_turns``, ``<kind>_truncated``, ``<kind>_error`` for every row, in pool order.

    Each process scores its contiguous shard (:func:`deita.distributed.map_sharded`) and the shards are
    gathered in rank order. Turns are batched by length within a shard, so at another world size a turn
    may share its batch with other turns and its score moves by float rounding (within 1e-5, tested; the
    selection is unaffected unless two rows tie that closely): see :mod:`deita.distributed`. With
    ``cache`` (a :class:`deita.cache.ContentCache`) the result is reused for the same data, model and
    options, whatever world size computed it.
    """
    from deita.distributed import env_dist, map_sharded
    from deita.selection.scorers.deita_scorer import DeitaScorer, score_rows

    info = dist_info or env_dist()

    def shard(part: list[dict]) -> list[tuple]:
        scorer = DeitaScorer(kind, model_path, dtype=dtype, device=device, max_length=max_length,
                             max_tokens_per_batch=max_tokens_per_batch, trust_remote_code=trust_remote_code,
                             show_progress=info.is_main)
        cols = score_rows(part, scorer, on_error)
        del scorer
        return list(zip(cols[f"{kind}_turns"], cols[f"{kind}_truncated"], cols[f"{kind}_error"]))

    def compute() -> dict[str, list]:
        start = time.perf_counter()
        out = map_sharded(rows, shard, info)
        if info.is_main:
            log.info("%s scores for %d rows in %.1fs (world size %d)", kind, len(rows), time.perf_counter() - start,
                     info.world_size)
        return {f"{kind}_turns": [list(map(float, o[0])) for o in out],
                f"{kind}_truncated": [int(o[1]) for o in out],
                f"{kind}_error": [str(o[2]) for o in out]}

    if cache is None:
        return compute()
    key = score_cache_key(kind, data_fingerprint, model_path, max_length=max_length, dtype=dtype, on_error=on_error)
    return cache.table(f"deita_{kind}_scores", key, compute)
