"""Embed a whole pool: rendered rows, in chunks shared out across processes, cached by content as float32
``.npy`` chunks."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

EMBED_CACHE_VERSION = 1
"""Bumped when the embedding code changes what it computes."""


def embed_cache_key(kind: str, data_fingerprint: str, model_path: str, *, max_length: int, dtype: str,
                    template: str, on_error: str) -> dict:
    """What determines a pool's embeddings (batch size, padding side and device cannot change them)."""
    from deita.fingerprint import model_identity

    return {"version": EMBED_CACHE_VERSION, "data": data_fingerprint, "kind": kind, "model": model_identity(model_path),
            "max_length": int(max_length), "dtype": str(dtype), "template": template, "on_error": on_error}


def embed_pool(rows: list[dict], kind: str, model_path: str, *, cache: Any = None, data_fingerprint: str = "",
               dist_info: Any = None, on_error: str = "raise", template: str = "vicuna_v1.1",
               max_length: int = 2048, batch_size: int = 8, dtype: str = "float32", device: str = "auto",
               padding_side: str = "right", trust_remote_code: bool = False, prefix_cache: bool = True):
    """L2-normalised float32 ``[N, D]`` embeddings of every row, in pool order.

    A row that cannot be rendered raises (naming its id), or under ``on_error='nan'`` gets an all-zero
    row (the caller keeps such rows out of the filter; their scores are NaN for the same reason). The pool
    is embedded in chunks of contiguous rows (:mod:`deita.store`), each batched by length on its own, so
    the vectors are the same, bitwise, at every world size and after any resume. With ``cache`` the
    result is a memory-mapped :class:`deita.store.ChunkedRows` (each rank writes its own chunks; none
    receives another's vectors); without one, an in-memory array gathered over the process group.
    """
    import numpy as np

    from deita.distributed import env_dist
    from deita.selection.embedders import EMBEDDERS
    from deita.selection.embedders.render import render_rows, template_head
    from deita.selection.scorers.turns import ConversationError
    from deita.store import DEFAULT_CHUNK_ROWS, compute_in_memory

    info = dist_info or env_dist()
    loaded: list[Any] = []

    def text_of(row: dict) -> str | None:
        try:
            return render_rows([row], template)[0]
        except ConversationError:
            if on_error == "raise":
                raise
            return None

    def chunk(start: int, end: int):
        texts = [text_of(row) for row in rows[start:end]]
        if not loaded:  # load on the first chunk this rank computes (none when everything is cached)
            options = dict(max_length=max_length, batch_size=batch_size, device=device,
                           trust_remote_code=trust_remote_code, show_progress=False)
            if kind != "sentence_transformers":
                options.update(dtype=dtype, padding_side=padding_side,
                               prefix_text=template_head(template) if prefix_cache else None)
            loaded.append(EMBEDDERS.get(kind)(model_path, **options))
        ok = [i for i, t in enumerate(texts) if t is not None]
        out = np.zeros((len(texts), embedding_dim(loaded[0])), dtype=np.float32)
        if ok:
            out[ok] = loaded[0].embed_texts([texts[i] for i in ok])
        return out

    if cache is None:
        out = compute_in_memory("array", len(rows), chunk, info, chunk_rows=DEFAULT_CHUNK_ROWS).astype(np.float32)
    else:
        key = embed_cache_key(kind, data_fingerprint, model_path, max_length=max_length, dtype=dtype,
                              template=template, on_error=on_error)
        out = cache.rows_array("deita_embeddings", key, len(rows), chunk, info, desc="embeddings")
    stats = getattr(loaded[0], "prefix_stats", None) if loaded else None
    if stats and stats["tokens"] and info.is_main:
        log.info("embedder (this rank): %d conversations ran from the %d-token template head, %d whole (their "
                 "tokens differ at the boundary or end inside it)", stats["rows"], stats["tokens"],
                 stats["fallback_rows"])
    return out


def embedding_dim(embedder: Any) -> int:
    """Width of an embedder's vectors (a chunk whose rows all failed still gets zero rows of that width)."""
    model = embedder.model
    # sentence-transformers 6 renamed get_sentence_embedding_dimension (now a FutureWarning) to this
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        if hasattr(model, name):
            dim = getattr(model, name)()
            if dim is not None:
                return int(dim)
            break
    return int(model.config.hidden_size)
