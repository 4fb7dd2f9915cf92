"""Content-addressed cache for expensive per-row work: scores, embeddings, log-probs.

Entries are keyed by what determines them (data fingerprint, the scorer or embedder config, the model
identity), never by run directory, so a budget sweep over 2K/4K/6K scores and embeds once. Arrays are
stored as ``.npy`` and tables as ``.parquet`` (never pickle), written atomically (:mod:`deita.io`).
Only the main process writes; every process may read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from deita.fingerprint import hash_json
from deita.io import atomic_path


class ContentCache:
    """A folder of cached arrays and tables; ``stats`` counts hits and misses for the manifest."""

    def __init__(self, root: str | os.PathLike, *, is_writer: bool = True):
        self.root = Path(root)
        self.is_writer = is_writer
        self.stats: dict[str, list[str]] = {"hits": [], "misses": []}

    def path_for(self, kind: str, key_parts: dict, suffix: str) -> Path:
        """Where the entry of ``kind`` keyed by ``key_parts`` lives."""
        return self.root / kind / f"{hash_json(key_parts)}{suffix}"

    def array(self, kind: str, key_parts: dict, compute: Callable[[], Any]):
        """Return the cached numpy array for ``key_parts``, computing and storing it on a miss."""
        import numpy as np

        path = self.path_for(kind, key_parts, ".npy")
        if path.exists():
            self.stats["hits"].append(f"{kind}/{path.name}")
            return np.load(path, allow_pickle=False)
        self.stats["misses"].append(f"{kind}/{path.name}")
        value = np.asarray(compute())
        if self.is_writer:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, value, allow_pickle=False)
        return value

    def table(self, kind: str, key_parts: dict, compute: Callable[[], dict[str, list]]) -> dict[str, list]:
        """Return the cached column table (column → list) for ``key_parts``, computing it on a miss."""
        import pandas as pd

        path = self.path_for(kind, key_parts, ".parquet")
        if path.exists():
            self.stats["hits"].append(f"{kind}/{path.name}")
            frame = pd.read_parquet(path)
            return {c: [_plain(v) for v in frame[c].tolist()] for c in frame.columns}
        self.stats["misses"].append(f"{kind}/{path.name}")
        value = compute()
        if self.is_writer:
            with atomic_path(path) as tmp:
                pd.DataFrame(value).to_parquet(tmp, index=False)
        return value


def _plain(v: Any) -> Any:
    """Parquet returns list cells as numpy arrays; give back plain lists."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
