"""Chunked, resumable store for per-row results of a pool: scores, embeddings, log-probs.

A pass over the pool (a scorer, an embedder, a log-prob pass) is cut into chunks of contiguous pool rows
(``chunk_rows``, default :data:`DEFAULT_CHUNK_ROWS`; ``selection.chunk_rows``). Each chunk is computed
from its own rows only and written as soon as it is done, atomically (:mod:`deita.io`), under the
entry's folder and named by its row range, never by rank::

    <cache>/selection/<kind>/<content key hash>/
        rows-000000000000-000000001024.npy      pool rows [0, 1024): an array (N_chunk, ...) ...
        rows-000000001024-000000002048.npy      ... or a table (.parquet), one row per pool row
        index.json                              written last: the entry is finished

A finished entry is its chunks plus ``index.json`` (format, rows, chunk list, dtype and shape). A killed
run leaves the chunks it finished; the next run, at any world size, computes only the missing ones
(split among the ranks in contiguous runs; a rank that finishes early takes unclaimed chunks of the
others), so its result is byte-identical to an uninterrupted run:
a chunk's values depend on its rows alone, not on who computed it or when. Every rank writes its own
chunks and no rank receives another's results over the process group; the results are read back from
disk, arrays through memory maps (:class:`ChunkedRows`). ``paths.cache_dir`` must therefore be a
folder every rank sees (on several nodes, a shared filesystem); a chunk one rank wrote that the main
process cannot see is an error that says so.

The public API is small: :func:`plan_chunks`, :func:`fill` (compute what is missing, then finish),
:func:`compute_in_memory` (the same chunking without a cache), :class:`ChunkedEntry` (one entry's
folder: its chunks, its index, reading it back) and :class:`ChunkedRows` (a read-only, memory-mapped
(N, D) view over array chunks). :class:`deita.cache.ContentCache` wraps them for the selection methods.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from deita.io import atomic_path, write_json_atomic

DEFAULT_CHUNK_ROWS = 1024
"""Pool rows per chunk: small enough that a crash loses minutes of a 7B model's work, large enough that
batching by length inside a chunk wastes little padding and one chunk file per 1,024 rows stays few."""

INDEX = "index.json"
CLAIMS = ".claims"
"""Folder of per-chunk claim files while an entry is being filled (who computes which chunk)."""
STALE_SECONDS = 600
"""A temp file or foreign-size chunk this old is a leftover of a dead run; younger ones are left alone."""
SUFFIX = {"array": ".npy", "table": ".parquet"}
"""Chunk format → file suffix: arrays as ``.npy`` (never pickled), tables (column → one value per row)
as ``.parquet``."""

_CHUNK_NAME = re.compile(r"^rows-(\d{12})-(\d{12})\.(npy|parquet)$")


@dataclass(frozen=True)
class Chunk:
    """Pool rows ``[start, end)``."""

    start: int
    end: int

    @property
    def rows(self) -> int:
        """Number of pool rows in the chunk."""
        return self.end - self.start

    def file_name(self, fmt: str) -> str:
        """The chunk's file name: its row range, zero-padded so names sort in pool order."""
        return f"rows-{self.start:012d}-{self.end:012d}{SUFFIX[fmt]}"


def plan_chunks(n_rows: int, chunk_rows: int) -> list[Chunk]:
    """Contiguous chunks of ``chunk_rows`` rows covering ``n_rows`` (the last may be shorter)."""
    if not isinstance(chunk_rows, (int, np.integer)) or chunk_rows < 1:
        raise ValueError(f"selection.chunk_rows: expected an integer >= 1, found {chunk_rows!r}")
    return [Chunk(s, min(n_rows, s + int(chunk_rows))) for s in range(0, n_rows, int(chunk_rows))]


@dataclass
class FillStats:
    """What :func:`fill` did for one entry (recorded in the select manifest under ``cache.chunks``)."""

    chunks: int
    """Chunks in the entry."""
    resumed: int
    """Chunks found on disk from an earlier, unfinished run and reused."""
    computed: int
    """Chunks computed by this run (all ranks together)."""
    hit: bool
    """The entry was already finished: nothing computed, nothing resumed."""


def _check_value(fmt: str, value: Any, chunk: Chunk) -> Any:
    """``value`` as stored for ``chunk``: an array with one leading row per pool row, or a table whose
    columns hold one value per pool row."""
    if fmt == "array":
        arr = np.asarray(value)
        if arr.ndim == 0 or arr.shape[0] != chunk.rows:
            raise RuntimeError(f"chunk rows {chunk.start}-{chunk.end}: computed shape {arr.shape}, expected "
                               f"{chunk.rows} rows")
        return arr
    for column, values in value.items():
        if len(values) != chunk.rows:
            raise RuntimeError(f"chunk rows {chunk.start}-{chunk.end}: column {column!r} has {len(values)} values, "
                               f"expected {chunk.rows}")
    return value


class ChunkedEntry:
    """One store entry: the folder named by its content key, its chunk files and its ``index.json``."""

    def __init__(self, folder: str | os.PathLike, fmt: str):
        if fmt not in SUFFIX:
            raise ValueError(f"chunk format must be one of {sorted(SUFFIX)}, got {fmt!r}")
        self.folder, self.fmt = Path(folder), fmt

    def index(self) -> dict | None:
        """The finished entry's index, or None while it is unfinished."""
        path = self.folder / INDEX
        return json.loads(path.read_text()) if path.is_file() else None

    def path_of(self, chunk: Chunk) -> Path:
        """Where ``chunk``'s file lives."""
        return self.folder / chunk.file_name(self.fmt)

    def present(self, chunks: list[Chunk]) -> list[bool]:
        """Which of ``chunks`` are on disk (a chunk file exists only once it is complete: atomic writes)."""
        names = set(os.listdir(self.folder)) if self.folder.is_dir() else set()
        return [c.file_name(self.fmt) in names for c in chunks]

    def write(self, chunk: Chunk, value: Any) -> None:
        """Store ``value`` (see :func:`fill`) for ``chunk``, atomically."""
        value = _check_value(self.fmt, value, chunk)
        with atomic_path(self.path_of(chunk)) as tmp:
            if self.fmt == "array":
                with open(tmp, "wb") as f:
                    np.save(f, value, allow_pickle=False)
            else:
                import pandas as pd

                pd.DataFrame(value).to_parquet(tmp, index=False)

    def finish(self, chunks: list[Chunk], chunk_rows: int) -> dict:
        """Check every chunk is on disk, write ``index.json``, delete leftovers older than
        :data:`STALE_SECONDS` (temp files of killed writers, chunks of another chunk size; a younger one
        may belong to another job filling the same entry). Main process only, after every rank wrote."""
        missing = [c for c, ok in zip(chunks, self.present(chunks)) if not ok]
        if missing:
            c = missing[0]
            raise RuntimeError(
                f"{len(missing)} chunk(s) of {self.folder} are missing after every rank finished, first rows "
                f"{c.start}-{c.end}: every rank must see paths.cache_dir (on several nodes, a shared filesystem)")
        index: dict[str, Any] = {"format": self.fmt, "rows": chunks[-1].end if chunks else 0,
                                 "chunk_rows": int(chunk_rows), "chunks": [[c.start, c.end] for c in chunks]}
        if self.fmt == "array" and chunks:
            head = np.load(self.path_of(chunks[0]), mmap_mode="r")
            index.update(dtype=str(head.dtype), shape=[index["rows"], *head.shape[1:]])
        keep, now = {c.file_name(self.fmt) for c in chunks}, time.time()
        for name in os.listdir(self.folder):
            if name.endswith(".tmp") or (_CHUNK_NAME.match(name) and name not in keep):
                try:
                    if now - (self.folder / name).stat().st_mtime > STALE_SECONDS:
                        (self.folder / name).unlink()
                except FileNotFoundError:  # its writer renamed or removed it meanwhile
                    pass
        shutil.rmtree(self.folder / CLAIMS, ignore_errors=True)
        write_json_atomic(self.folder / INDEX, index)
        return index

    def chunks(self) -> list[Chunk]:
        """The finished entry's chunks, in pool order."""
        index = self.index()
        if index is None:
            raise RuntimeError(f"store entry {self.folder} is unfinished (no {INDEX})")
        return [Chunk(int(a), int(b)) for a, b in index["chunks"]]

    def read(self):
        """The finished entry: a :class:`ChunkedRows` (arrays) or a column table ``{name: list}``."""
        chunks = self.chunks()
        if self.fmt == "array":
            return ChunkedRows([self.path_of(c) for c in chunks])
        return concat_tables([read_table(self.path_of(c)) for c in chunks])


def read_table(path: Path) -> dict[str, list]:
    """A parquet table as ``{column: list}`` (list cells as plain lists, not numpy arrays)."""
    import pandas as pd

    frame = pd.read_parquet(path)
    return {c: [v.tolist() if hasattr(v, "tolist") else v for v in frame[c].tolist()] for c in frame.columns}


def concat_tables(tables: list[dict[str, list]]) -> dict[str, list]:
    """Column tables stacked in order (all with the same columns)."""
    if not tables:
        return {}
    return {c: [v for t in tables for v in t[c]] for c in tables[0]}


def concat_values(fmt: str, values: list[Any]):
    """Chunk values stacked in pool order: one array, or one column table."""
    if fmt == "table":
        return concat_tables(values)
    return np.concatenate([np.asarray(v) for v in values]) if values else np.empty((0,))


class ChunkedRows:
    """A read-only (N, D...) matrix stored as row chunks, each opened as a memory map on first use.

    Nothing is read until asked: ``rows[i]``, ``rows[a:b]`` and ``rows[index_array]`` read those rows;
    ``np.asarray(rows)`` reads everything. ``starts`` holds each chunk's first pool row plus the total;
    ``part(i)`` is chunk i's memory map. The streamed greedy filter (:mod:`deita.selection.filters`) reads
    the chunks' files directly (explicit reads), so a scan never holds the matrix in memory.
    """

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self._parts: list[np.memmap | None] = [None] * len(self.paths)
        heads = [self.part(0)] if self.paths else []
        sizes = [self._rows_in(p) for p in self.paths]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.dtype = heads[0].dtype if heads else np.dtype(np.float32)
        self.shape = (int(self.starts[-1]), *(heads[0].shape[1:] if heads else (0,)))
        self.ndim = len(self.shape)

    @staticmethod
    def _rows_in(path: Path) -> int:
        """Leading dimension of a ``.npy`` file, from its header alone."""
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
        return int(shape[0])

    def part(self, i: int) -> np.memmap:
        """Chunk ``i`` as a read-only memory map (opened on first use)."""
        if self._parts[i] is None:
            self._parts[i] = np.load(self.paths[i], mmap_mode="r")
        return self._parts[i]

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: Any) -> np.ndarray:
        """Rows ``idx`` (pool indices) as an in-memory array, in ``idx`` order."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        out = np.empty((idx.size, *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for p in np.unique(part).tolist():
            sel = np.flatnonzero(part == p)
            out[sel] = self.part(p)[idx[sel] - self.starts[p]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self.take([key if key >= 0 else key + self.shape[0]])[0]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(self.shape[0])))
        key = np.asarray(key)
        if key.dtype == bool:
            key = np.flatnonzero(key)
        return self.take(key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.take(np.arange(self.shape[0]))
        return whole if dtype is None else whole.astype(dtype, copy=False)


def _work_order(missing: list[int], dist) -> list[int]:
    """The missing chunk numbers in the order this rank tries them: its own contiguous share first (what
    it computes when every rank keeps pace), then the other ranks' shares from their ends backwards, so
    a rank that finishes early takes the chunks their owners would reach last."""
    from deita.distributed import shard_bounds

    lo, hi = shard_bounds(len(missing), dist.rank, dist.world_size)
    return missing[lo:hi] + (missing[hi:] + missing[:lo])[::-1]


def _claim(claims: Path, chunk: Chunk) -> bool:
    """Take ``chunk`` for this process (an exclusive create in the entry's claims folder); False when another
    process took it first."""
    try:
        os.close(os.open(claims / f"{chunk.start:012d}-{chunk.end:012d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def fill(entry: ChunkedEntry, n_rows: int, compute: Callable[[int, int], Any], dist, *,
         chunk_rows: int = DEFAULT_CHUNK_ROWS, desc: str = "chunks") -> FillStats:
    """Make ``entry`` finished: compute the chunks not on disk, write each as it is done, write the index.

    ``compute(start, end)`` returns the result for pool rows ``[start, end)`` from those rows alone: an
    array with one leading row per pool row, or a table ``{column: list}`` (``entry.fmt``). Every rank
    calls ``fill`` with the same arguments; the main process decides what is missing, the missing chunks
    are split among the ranks in contiguous shares, each rank writes its own and then takes unclaimed chunks
    of slower ranks (an exclusive-create claim file per chunk, so none is computed twice). A progress bar on the main process counts chunks
    done (every rank's, from the folder) of the total, resumed ones included. Returns what was done.
    """
    from deita.distributed import barrier, broadcast_from_main

    chunks = plan_chunks(n_rows, chunk_rows)
    claims = entry.folder / CLAIMS
    state = None
    if dist.is_main:
        finished = entry.index() is not None
        state = (finished, [] if finished else [i for i, ok in enumerate(entry.present(chunks)) if not ok])
        if not finished:  # claims of a killed run are void
            shutil.rmtree(claims, ignore_errors=True)
            claims.mkdir(parents=True, exist_ok=True)
    finished, missing = broadcast_from_main(state)
    if finished:
        return FillStats(chunks=len(entry.chunks()), resumed=0, computed=0, hit=True)
    resumed = len(chunks) - len(missing)
    bar = _progress(dist, len(chunks), resumed, desc)
    for i in _work_order(missing, dist):
        if not _claim(claims, chunks[i]):
            continue
        entry.write(chunks[i], compute(chunks[i].start, chunks[i].end))
        if bar is not None:
            bar.n = sum(entry.present(chunks))
            bar.refresh()
    barrier()
    if dist.is_main:
        entry.finish(chunks, chunk_rows)
    if bar is not None:
        bar.n = len(chunks)
        bar.close()
    barrier()
    return FillStats(chunks=len(chunks), resumed=resumed, computed=len(missing), hit=False)


def _progress(dist, total: int, resumed: int, desc: str):
    """A tqdm bar of chunks on the main process (None elsewhere), starting at the resumed count."""
    if not dist.is_main or total == 0:
        return None
    from tqdm.auto import tqdm

    label = f"{desc} ({resumed} resumed)" if resumed else desc
    return tqdm(total=total, initial=resumed, desc=label, unit="chunk")


def compute_in_memory(fmt: str, n_rows: int, compute: Callable[[int, int], Any], dist, *,
                      chunk_rows: int = DEFAULT_CHUNK_ROWS):
    """The same chunks as :func:`fill`, without a store: every chunk computed by one rank, the results
    gathered to every rank (all of them, over the process group: use a store for large pools). Values are
    identical to :func:`fill`'s for the same ``chunk_rows``."""
    from deita.distributed import map_sharded

    chunks = plan_chunks(n_rows, chunk_rows)
    values = map_sharded(chunks, lambda part: [_check_value(fmt, compute(c.start, c.end), c) for c in part], dist)
    return concat_values(fmt, values)
