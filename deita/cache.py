"""Content-addressed cache for expensive per-row work: scores, embeddings, log-probs.

Entries are keyed by what determines them (data fingerprint, the scorer or embedder config, the model
identity), never by run directory, so a budget sweep over 2K/4K/6K scores and embeds once. Arrays are
stored as ``.npy`` and tables as ``.parquet`` (never pickle), written to a temp file then renamed.
Only the main process writes; every process may read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from deita.fingerprint import hash_json


class ContentCache:
    """A folder of cached arrays and tables; ``stats`` counts hits and misses for the manifest."""

    def __init__(self, root: str | os.PathLike, *, is_writer: bool = True, enabled: bool = True):
        self.root = Path(root)
        self.is_writer = is_writer
        self.enabled = enabled
        self.stats: dict[str, list[str]] = {"hits": [], "misses": []}

    def path_for(self, kind: str, key_parts: dict, suffix: str) -> Path:
        """Where the entry of ``kind`` keyed by ``key_parts`` lives."""
        return self.root / kind / f"{hash_json(key_parts)}{suffix}"

    def _atomic_write(self, path: Path, write: Callable[[str], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def array(self, kind: str, key_parts: dict, compute: Callable[[], Any]):
        """Return the cached numpy array for ``key_parts``, computing and storing it on a miss."""
        import numpy as np

        path = self.path_for(kind, key_parts, ".npy")
        if self.enabled and path.exists():
            self.stats["hits"].append(f"{kind}/{path.name}")
            return np.load(path, allow_pickle=False)
        self.stats["misses"].append(f"{kind}/{path.name}")
        value = np.asarray(compute())
        if self.enabled and self.is_writer:
            self._atomic_write(path, lambda tmp: np.save(open(tmp, "wb"), value, allow_pickle=False))
        return value

    def table(self, kind: str, key_parts: dict, compute: Callable[[], dict[str, list]]) -> dict[str, list]:
        """Return the cached column table (column → list) for ``key_parts``, computing it on a miss."""
        import pandas as pd

        path = self.path_for(kind, key_parts, ".parquet")
        if self.enabled and path.exists():
            self.stats["hits"].append(f"{kind}/{path.name}")
            frame = pd.read_parquet(path)
            return {c: [_plain(v) for v in frame[c].tolist()] for c in frame.columns}
        self.stats["misses"].append(f"{kind}/{path.name}")
        value = compute()
        if self.enabled and self.is_writer:
            self._atomic_write(path, lambda tmp: pd.DataFrame(value).to_parquet(tmp, index=False))
        return value


def _plain(v: Any) -> Any:
    """Parquet returns list cells as numpy arrays; give back plain lists."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
