"""Embed a whole pool: rendered rows, sharded across processes, cached by content as float32 ``.npy``."""

from __future__ import annotations

from typing import Any

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
               padding_side: str = "right", trust_remote_code: bool = False):
    """L2-normalised float32 ``[N, D]`` embeddings of every row, in pool order.

    A row that cannot be rendered raises (naming its id), or under ``on_error='nan'`` gets an all-zero
    row (the caller keeps such rows out of the filter; their scores are NaN for the same reason). Each
    process embeds its contiguous shard in length-sorted batches, so another world size can move a value
    by float rounding (within 1e-5, tested; see :mod:`deita.distributed`).
    """
    import numpy as np

    from deita.distributed import env_dist, map_sharded
    from deita.selection.embedders import EMBEDDERS
    from deita.selection.embedders.render import render_rows
    from deita.selection.scorers.turns import ConversationError

    info = dist_info or env_dist()

    def texts_of(part: list[dict]) -> list[str | None]:
        out: list[str | None] = []
        for row in part:
            try:
                out.append(render_rows([row], template)[0])
            except ConversationError:
                if on_error == "raise":
                    raise
                out.append(None)
        return out

    def shard(part: list[dict]) -> list:
        texts = texts_of(part)
        ok = [i for i, t in enumerate(texts) if t is not None]
        options = dict(max_length=max_length, batch_size=batch_size, device=device,
                       trust_remote_code=trust_remote_code, show_progress=info.is_main)
        if kind != "sentence_transformers":
            options.update(dtype=dtype, padding_side=padding_side)
        embedder = EMBEDDERS.get(kind)(model_path, **options)
        vecs = embedder.embed_texts([texts[i] for i in ok]) if ok else None
        dim = vecs.shape[1] if vecs is not None else 0
        out = [None] * len(part)
        for j, i in enumerate(ok):
            out[i] = vecs[j]
        return [v if v is not None else np.zeros(dim, dtype=np.float32) for v in out]

    def compute():
        parts = map_sharded(rows, shard, info)
        dim = max((len(p) for p in parts), default=0)
        return np.stack([p if len(p) == dim else np.zeros(dim, np.float32) for p in parts]).astype(np.float32)

    if cache is None:
        return compute()
    key = embed_cache_key(kind, data_fingerprint, model_path, max_length=max_length, dtype=dtype, template=template,
                          on_error=on_error)
    return cache.array("deita_embeddings", key, compute)
