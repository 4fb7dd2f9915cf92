"""The selection pool as a memory-mapped Arrow file: converted once, then read lazily by every process.

A pool of 1M short rows held as Python dicts takes ~2.1 GB on every rank. Here the sources are converted
once, streaming (one row at a time through :class:`deita.data.loading.RowStream`), into
``<cache_dir>/pools/<key>.arrow``, an Arrow IPC file of record batches with three columns:

* ``id`` (string): the row's id;
* ``row`` (string): the canonical row as ``json.dumps(row, ensure_ascii=False)``, keys in the row's own
  order. A JSON string, not Arrow structs: it round-trips exactly (``json.loads`` gives the same dict,
  key order included, so ``selected.jsonl`` is byte-identical), where Arrow's schema inference over
  heterogeneous rows would add null keys;
* ``response_chars`` (int64): the assistant messages' characters (:func:`deita.data.fields.response_chars`),
  so the report's length histogram reads no row text.

``<key>.json`` beside it is written after the ``.arrow`` is in place (so its presence says the pool is
complete) and holds the pool fingerprint, :func:`deita.fingerprint.hash_rows` of the rows computed while
they were written (identical to hashing the rows in a list, so caches keyed by it stay valid), and per
source its rows, skipped records, first skipped record's error and format.

The file is memory-mapped (``mmap``, read-only, shared) and read by pyarrow's IPC reader zero-copy
(:func:`map_pool`): every process on a node shares its pages through the page cache, and :class:`PoolRows`
builds a row dict only when one is asked for. (``datasets.Dataset.from_file`` maps Arrow files the same way;
plain pyarrow keeps the file, its atomic write, its key and the map's access advice in our hands, with no
``datasets`` cache files or fingerprints beside it.)

The key hashes what determines the rows: each source's options (:func:`deita.data.sources.source_options`)
and files (resolved path, size, mtime in ns and inode of every file under a folder; a hub dataset by the revision
the local cache resolves), the kind, the error policy, the id rule and the bytes of the modules that
turn records into rows. A hub source whose revision cannot be resolved is converted anew on every run, into
``<key>-<uuid>.arrow``. Only the main process converts; the others wait for its verdict (the path, or the same
DataError) and map the file.

The ``.json`` also names the pool's source set (the kind and each source's resolved path or hub name): once
the file is written or reused, the main process deletes the pool files of the same source set under other
keys (an edited source, a deita upgrade, an earlier ``<key>-<uuid>`` file) and leftovers of dead
conversions older than an hour (:mod:`deita.data.pool_cleanup`).
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from deita.data.errors import DataError
from deita.data.fields import response_chars
from deita.data.loading import RowStream, warn_skipped
from deita.data.pool_cleanup import collect_pools, source_set
from deita.data.readers import looks_local
from deita.data.sources import check_unique_ids, reader_args, source_options
from deita.fingerprint import RowHasher, file_stamp, hash_file, hash_json, hub_revision
from deita.io import atomic_path, write_json_atomic

FILE_VERSION = 1
"""Layout version of the pool file; part of its key."""
BATCH_ROWS = 4096
"""Rows per Arrow record batch (written one at a time; iteration decodes one batch at a time)."""
_CODE_MODULES = ("formats.py", "formats_reference.py", "fields.py", "readers.py", "loading.py", "sources.py",
                 "pool_file.py")
"""Modules of ``deita/data`` whose bytes are part of the key: a change to how records become rows converts anew."""


class MappedFile:
    """A pool file, memory-mapped (shared, read-only) for pyarrow, and open for ``pread``.

    Reads through a file map fault in whole page-cache folios (~1 MB each on this machine's kernel, whatever
    ``MADV_RANDOM`` says), which then count in the process's resident set: 10K scattered row reads mapped
    most of a 200 MB pool file. So single rows are read with ``pread`` at their file positions (the page
    cache serves them; nothing is mapped), and column passes drop the map's pages after each record batch
    (``MADV_DONTNEED``; they stay in the page cache)."""

    def __init__(self, path: Path):
        import mmap

        import pyarrow as pa

        self.file = open(path, "rb")
        self._map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
        self.buffer = pa.py_buffer(self._map)

    def position(self, buffer) -> int:
        """The file position of an Arrow buffer that lies in the map (-1 when it does not: a copy)."""
        pos = buffer.address - self.buffer.address
        return pos if 0 <= pos and pos + buffer.size <= self.buffer.size else -1

    def pread(self, size: int, position: int) -> bytes:
        """``size`` bytes of the file at ``position``, read without the map."""
        return os.pread(self.file.fileno(), size, position)

    def release(self) -> None:
        """Drop the map's pages from this process (they stay in the page cache for the next read)."""
        import mmap

        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)


class PoolRows(Sequence):
    """The pool's canonical rows, read-only and lazy: ``len``, ``rows[i]`` and ``rows[a:b]`` (dicts built
    on demand from the stored JSON), iteration (one record batch decoded at a time), and :attr:`ids` and
    :attr:`response_lengths` read from their own columns without touching the row text. With ``mapped``
    (the file under ``table``) single rows are read by ``pread`` and passes release the map's pages."""

    def __init__(self, table, mapped: Optional[MappedFile] = None):
        import numpy as np

        self._table, self._mapped = table, mapped
        self._text = table.column("row")
        self._starts = np.cumsum([0] + [len(c) for c in self._text.chunks])
        self._ids: Optional[list[str]] = None
        # per record batch: file positions of its string offsets (int32) and its text, or None (read via Arrow)
        self._where = [self._locate(c) for c in self._text.chunks]

    def _locate(self, chunk) -> Optional[tuple[int, int]]:
        if self._mapped is None:
            return None
        _, offsets, data = chunk.buffers()
        at_offsets, at_data = self._mapped.position(offsets), self._mapped.position(data)
        return None if min(at_offsets, at_data) < 0 else (at_offsets + 4 * chunk.offset, at_data)

    def _release(self) -> None:
        if self._mapped is not None:
            self._mapped.release()

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            texts = self._text.slice(start, max(0, stop - start)).to_pylist()
            self._release()
            return [json.loads(t) for t in texts]
        n = len(self)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"pool row {index} out of range for {n} rows")
        chunk = int(self._starts.searchsorted(i, side="right")) - 1
        j, where = i - int(self._starts[chunk]), self._where[chunk]
        if where is None:
            return json.loads(self._text.chunk(chunk)[j].as_py())
        first, end = struct.unpack("<ii", self._mapped.pread(8, where[0] + 4 * j))
        return json.loads(self._mapped.pread(end - first, where[1] + first).decode("utf-8"))

    def __iter__(self) -> Iterator[dict]:
        for chunk in self._text.chunks:
            texts = chunk.to_pylist()
            self._release()  # a full pass holds one batch of the file in this process, not the file
            for text in texts:
                yield json.loads(text)

    def _column(self, name: str) -> list:
        out: list = []
        for chunk in self._table.column(name).chunks:
            out += chunk.to_pylist()
            self._release()
        return out

    @property
    def ids(self) -> list[str]:
        """Every row's id, in pool order (read once from the ``id`` column)."""
        if self._ids is None:
            self._ids = self._column("id")
        return self._ids

    @property
    def response_lengths(self) -> list[int]:
        """Per row, its assistant messages' characters (the ``response_chars`` column)."""
        return self._column("response_chars")


class RowsAt(Sequence):
    """The rows of ``rows`` at ``positions``, in that order, read from ``rows`` when asked for (a subset of a
    :class:`PoolRows` that builds no dict in advance)."""

    def __init__(self, rows: Sequence, positions: list[int]):
        self._rows, self._positions = rows, positions

    def __len__(self) -> int:
        return len(self._positions)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._rows[p] for p in self._positions[index]]
        return self._rows[self._positions[index]]


def row_ids(rows: Sequence) -> list[str]:
    """The ids of ``rows`` as strings: from the id column of a :class:`PoolRows`, else from each row."""
    return list(rows.ids) if isinstance(rows, PoolRows) else [str(r["id"]) for r in rows]


@dataclass
class ArrowPool:
    """A pool read through its Arrow file: what the select stage needs of it, none of it as Python rows."""

    path: Path
    """The ``.arrow`` file."""
    rows: PoolRows
    """The canonical rows, lazily."""
    fingerprint: str
    """:func:`deita.fingerprint.hash_rows` of the rows."""
    sources: list[dict]
    """Per source, in order: ``source`` (as given), ``rows``, ``skipped``, ``first_error`` (text or None), ``format``."""

    @property
    def ids(self) -> list[str]:
        """Every row's id, in pool order."""
        return self.rows.ids

    @property
    def response_lengths(self) -> list[int]:
        """Per row, its assistant messages' characters."""
        return self.rows.response_lengths

    @property
    def rows_per_source(self) -> dict[str, int]:
        """Source (as given) → rows it gave."""
        return {s["source"]: s["rows"] for s in self.sources}

    @property
    def source_counts(self) -> list[tuple[str, int]]:
        """(source as given, rows it gave), one per source in order."""
        return [(s["source"], s["rows"]) for s in self.sources]

    @property
    def skipped(self) -> int:
        """Bad records skipped across all sources (only with ``on_error: skip``)."""
        return sum(s["skipped"] for s in self.sources)


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("row", pa.string()), ("response_chars", pa.int64())])


def _files_identity(path: str, revision: Optional[str]) -> Any:
    """What identifies a source's bytes cheaply: the :func:`deita.fingerprint.file_stamp` of each file (every
    file under a folder); a hub dataset's resolved revision; None when unknown (missing, unreadable, unresolved)."""
    if not looks_local(path):
        rev = hub_revision(path, "dataset", revision)
        return {"hub": path, "revision": rev} if rev else None
    p = Path(os.path.expanduser(path))
    try:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        return [file_stamp(f) for f in files] or None
    except OSError:
        return None


def pool_key(sources: Iterable[Any], kind: str, *, on_error: Optional[str] = None,
             unique_ids: bool = False) -> tuple[str, bool]:
    """The pool file's key, and whether it may be reused (False when a source's bytes cannot be
    identified: the file is then written anew, under a fresh name)."""
    here = Path(__file__).parent
    entries, reusable = [], True
    for source in sources:
        opts = source_options(source)
        files = _files_identity(opts["path"], opts["revision"])
        reusable = reusable and files is not None
        entries.append({**opts, "files": files})
    key = hash_json({"version": FILE_VERSION, "code": [hash_file(here / m) for m in _CODE_MODULES], "kind": kind,
                     "on_error": on_error, "unique_ids": unique_ids, "sources": entries})
    return key, reusable


def write_pool_file(sources: Iterable[Any], kind: str, path: Path, *, on_error: Optional[str] = None,
                    unique_ids: bool = False) -> dict:
    """Convert ``sources`` into the pool file ``path`` (``.arrow``, then its ``.json``), both atomically;
    returns the ``.json`` content. Rows, errors, skipped records and warnings are exactly those of
    :func:`deita.data.sources.load_sources` with the same arguments; a DataError leaves no file."""
    import pyarrow as pa

    sources = list(sources)
    schema, hasher = _schema(), RowHasher()
    first_source: dict[str, int] = {}
    done: list[dict] = []
    with atomic_path(path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for n, source in enumerate(sources):
                source_path, args = reader_args(source, on_error)
                stream = RowStream(source_path, kind, **args)
                ids: list[str] = []
                batch: tuple[list, list, list] = ([], [], [])
                for row in stream:
                    hasher.update(row)
                    ids.append(row["id"])
                    for column, value in zip(batch, (row["id"], json.dumps(row, ensure_ascii=False), response_chars(row))):
                        column.append(value)
                    if len(batch[0]) >= BATCH_ROWS:
                        writer.write_batch(pa.record_batch(list(batch), schema=schema))
                        batch = ([], [], [])
                if batch[0]:
                    writer.write_batch(pa.record_batch(list(batch), schema=schema))
                if unique_ids:
                    check_unique_ids(ids, n, first_source, [s["source"] for s in done] + [source_path])
                done.append({"source": source_path, "rows": len(ids), "skipped": stream.skipped,
                             "first_error": None if stream.first_error is None else str(stream.first_error),
                             "format": stream.format})
    meta = {"version": FILE_VERSION, "fingerprint": hasher.hexdigest(), "rows": sum(s["rows"] for s in done),
            "bytes": path.stat().st_size, "sources": done, "source_set": source_set(sources, kind)}
    write_json_atomic(path.with_suffix(".json"), meta)
    return meta


def _read_meta(path: Path) -> Optional[dict]:
    """The finished pool file's ``.json``, or None when it is absent, unreadable or does not match the ``.arrow``."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        return meta if meta.get("version") == FILE_VERSION and path.stat().st_size == meta["bytes"] else None
    except (OSError, ValueError, KeyError):
        return None


def map_pool(path: Path, meta: dict) -> ArrowPool:
    """Memory-map a finished pool file (zero-copy: the rows stay in the page cache; see :class:`MappedFile`)."""
    import pyarrow as pa

    mapped = MappedFile(path)
    table = pa.ipc.open_file(pa.BufferReader(mapped.buffer)).read_all()
    return ArrowPool(path, PoolRows(table, mapped), meta["fingerprint"], meta["sources"])


def load_pool(sources: Iterable[Any], store: str, cache_dir: str | os.PathLike, *, is_main: bool = True):
    """The selection pool (``sft`` rows, ids unique across sources) as ``data.pool_store`` says: ``arrow``, an
    :class:`ArrowPool` (:func:`open_pool`; call it on every process); ``memory``, a
    :class:`deita.data.sources.LoadedSources` (Python rows). Both give ``rows``, ``ids``, ``fingerprint``,
    ``response_lengths``, ``source_counts``, ``rows_per_source`` and ``skipped``."""
    from deita.data.sources import load_sources

    if store == "memory":
        return load_sources(sources, "sft", unique_ids=True)
    return open_pool(sources, "sft", cache_dir, unique_ids=True, is_main=is_main)


def open_pool(sources: Iterable[Any], kind: str, cache_dir: str | os.PathLike, *, on_error: Optional[str] = None,
              unique_ids: bool = False, is_main: bool = True) -> ArrowPool:
    """The pool of ``sources`` through its Arrow file under ``<cache_dir>/pools``, converted first when it is
    not there (by the main process; the others wait for its verdict, then map the file).

    Same rows, errors, warnings and counts as :func:`deita.data.sources.load_sources` with these arguments:
    a conversion's DataError is raised on every process; reusing a finished file logs its skipped-records
    warnings again. Then the main process deletes the pool files this one supersedes
    (:func:`deita.data.pool_cleanup.collect_pools`)."""
    from deita.distributed import broadcast_from_main

    sources = list(sources)
    verdict: Any = None
    if is_main:
        try:
            key, reusable = pool_key(sources, kind, on_error=on_error, unique_ids=unique_ids)
            path = Path(cache_dir) / "pools" / f"{key if reusable else f'{key}-{uuid.uuid4().hex[:8]}'}.arrow"
            meta = _read_meta(path) if reusable else None
            if meta is None:
                write_pool_file(sources, kind, path, on_error=on_error, unique_ids=unique_ids)
            else:
                for s in meta["sources"]:
                    if s["skipped"]:
                        warn_skipped(s["source"], s["skipped"], s["first_error"])
            verdict = str(path)
        except DataError as e:
            verdict = e
        except Exception as e:  # noqa: BLE001 - the others must not wait for a verdict that never comes
            broadcast_from_main(RuntimeError(f"the main process could not convert the pool: {e!r}"))
            raise
    verdict = broadcast_from_main(verdict)
    if isinstance(verdict, BaseException):
        raise verdict
    path = Path(verdict)
    if is_main:
        collect_pools(path.parent, path, source_set(sources, kind))
    meta = _read_meta(path)
    if meta is None:
        raise RuntimeError(f"pool file {path} is missing or incomplete (is paths.cache_dir shared by every process?)")
    return map_pool(path, meta)
