"""Content-addressed cache for expensive per-row work: scores, embeddings, log-probs.

Entries are keyed by what determines them (data fingerprint, the scorer or embedder config, the model
identity), never by run directory, so a budget sweep over 2K/4K/6K scores and embeds once. Arrays are
stored as ``.npy`` and tables as ``.parquet`` (never pickle), written atomically (:mod:`deita.io`).

Per-row results of a pass over the pool (:meth:`ContentCache.rows_array`, :meth:`ContentCache.rows_table`)
are chunked stores (:mod:`deita.store`): written chunk by chunk by every rank, resumable at any world
size. Small whole entries (:meth:`ContentCache.array`, :meth:`ContentCache.table`) are written by the
main process only; every process may read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from deita.fingerprint import hash_json
from deita.io import atomic_path
from deita.store import DEFAULT_CHUNK_ROWS, ChunkedEntry, FillStats, fill


class ContentCache:
    """A folder of cached arrays and tables; ``stats`` lists hits and misses (entry names) and, per chunked
    entry, its chunk counts (``chunks``: name → chunks, resumed, computed) for the manifest.

    ``chunk_rows``: pool rows per chunk of the chunked entries (``selection.chunk_rows``)."""

    def __init__(self, root: str | os.PathLike, *, is_writer: bool = True, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.root = Path(root)
        self.is_writer = is_writer
        self.chunk_rows = int(chunk_rows)
        self.stats: dict[str, Any] = {"hits": [], "misses": [], "chunks": {}}

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


    def rows_array(self, kind: str, key_parts: dict, n_rows: int, compute: Callable[[int, int], Any], dist, *,
                   desc: str = ""):
        """Per-row array of the pool (row i = pool row i), as a memory-mapped :class:`deita.store.ChunkedRows`.

        ``compute(start, end)`` returns the rows ``[start, end)`` from those pool rows alone; chunks on disk
        from an unfinished run are reused. Every rank must call it (see :func:`deita.store.fill`)."""
        return self._rows("array", kind, key_parts, n_rows, compute, dist, desc)

    def rows_table(self, kind: str, key_parts: dict, n_rows: int, compute: Callable[[int, int], dict[str, list]],
                   dist, *, desc: str = "") -> dict[str, list]:
        """Per-row column table of the pool (``{column: list}``, one value per pool row), chunked as
        :meth:`rows_array`."""
        return self._rows("table", kind, key_parts, n_rows, compute, dist, desc)

    def _rows(self, fmt: str, kind: str, key_parts: dict, n_rows: int, compute, dist, desc: str):
        entry = ChunkedEntry(self.root / kind / hash_json(key_parts), fmt)
        done: FillStats = fill(entry, n_rows, compute, dist, chunk_rows=self.chunk_rows, desc=desc or kind)
        name = f"{kind}/{entry.folder.name}"
        self.stats["hits" if done.hit else "misses"].append(name)
        self.stats["chunks"][name] = {"chunks": done.chunks, "resumed": done.resumed, "computed": done.computed}
        return entry.read()


def _plain(v: Any) -> Any:
    """Parquet returns list cells as numpy arrays; give back plain lists."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
