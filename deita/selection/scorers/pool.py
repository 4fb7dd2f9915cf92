"""Score a whole pool with one DEITA scorer: in chunks shared out across processes, cached by content."""

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

    Batch size, chunk size, device and the prefix cache are left out: none of them can change a score
    beyond 1e-5 (tested).
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
               trust_remote_code: bool = False, prefix_cache: bool = True) -> dict[str, list]:
    """Columns ``<kind>_turns``, ``<kind>_truncated``, ``<kind>_error`` for every row, in pool order.

    The pool is scored in chunks of contiguous rows (:mod:`deita.store`), each chunk batched by length
    on its own, so a row's score depends on its chunk alone: the same, bitwise, at every world size and
    after any resume. With ``cache`` (a :class:`deita.cache.ContentCache`) each chunk is written as soon
    as it is scored, a killed run resumes from the chunks on disk, and the result is reused for the same
    data, model and options. Without one the chunks are gathered over the process group.
    """
    from deita.distributed import env_dist
    from deita.selection.scorers.deita_scorer import DeitaScorer, score_rows
    from deita.store import DEFAULT_CHUNK_ROWS, compute_in_memory

    info = dist_info or env_dist()
    if not rows:
        return {f"{kind}_turns": [], f"{kind}_truncated": [], f"{kind}_error": []}
    loaded: list[DeitaScorer] = []
    started = time.perf_counter()

    def chunk(start: int, end: int) -> dict[str, list]:
        if not loaded:  # load on the first chunk this rank computes (none when everything is cached)
            loaded.append(DeitaScorer(kind, model_path, dtype=dtype, device=device, max_length=max_length,
                                      max_tokens_per_batch=max_tokens_per_batch,
                                      trust_remote_code=trust_remote_code, show_progress=False,
                                      prefix_cache=prefix_cache))
        cols = score_rows(rows[start:end], loaded[0], on_error)
        return {f"{kind}_turns": [list(map(float, t)) for t in cols[f"{kind}_turns"]],
                f"{kind}_truncated": [int(c) for c in cols[f"{kind}_truncated"]],
                f"{kind}_error": [str(e) for e in cols[f"{kind}_error"]]}

    if cache is None:
        out = compute_in_memory("table", len(rows), chunk, info, chunk_rows=DEFAULT_CHUNK_ROWS)
    else:
        key = score_cache_key(kind, data_fingerprint, model_path, max_length=max_length, dtype=dtype,
                              on_error=on_error)
        out = cache.rows_table(f"deita_{kind}_scores", key, len(rows), chunk, info, desc=f"{kind} scores")
    if loaded and info.is_main:
        log.info("%s scores for %d rows in %.1fs (world size %d)", kind, len(rows), time.perf_counter() - started,
                 info.world_size)
        if loaded[0].prefix is not None:
            stats = loaded[0].prefix_stats
            log.info("%s scorer (this rank): %d prompts ran from the %d-token template prefix, %d whole (their "
                     "tokens differ at the boundary)", kind, stats["rows"], stats["tokens"], stats["fallback_rows"])
    return out
