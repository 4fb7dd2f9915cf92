"""Deleting the pool files under ``<cache_dir>/pools/`` that no run will read again (see :mod:`deita.data.pool_file`).

A pool file's key covers its sources' bytes and the data code, so every edit of a source file and every
deita upgrade writes a new ``<key>.arrow`` (~1 GB per 1M rows), and a hub source whose revision cannot be
resolved writes a new ``<key>-<uuid>.arrow`` at every run. After the main process has written or reused
the pool file of a run, :func:`collect_pools` deletes, in the same folder:

* every other finished pool file (its ``.arrow`` and ``.json``) whose ``.json`` names the same source set
  (:func:`source_set`: the kind and, in order, each source's resolved local path or hub name) under another
  key. A pool file with the same paths but other options (``limit``, ``format``, ``split``, ``on_error``...)
  counts as superseded too: going back to those options converts again. A ``<key>-<uuid>`` file is thus
  kept for the run that wrote it (and its later stages, which convert anew) and deleted at the next
  conversion of the same sources;
* leftovers of conversions that died: temp files (``.<name>.<random>.tmp``, see :func:`deita.io.atomic_path`)
  and ``.arrow`` files with no ``.json``, once unmodified for :data:`STALE_SECONDS` (a live conversion
  writes its temp file at every record batch, so a fresh one is never touched).

Pool files of other source sets are kept whatever their age, and so are those written before the ``.json``
named its source set (delete them by hand). Each deletion logs one info line with the file's size; a file
that cannot be deleted is logged as a warning and the run goes on.

Two runs that share ``paths.cache_dir`` and the same source paths with different options delete each
other's pool file. A file another process has already mapped stays readable (Linux keeps a deleted file's
inode until its last map is closed); a rank that has not mapped it yet fails naming the missing file, so
give such runs separate cache folders.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from deita.data.readers import looks_local
from deita.data.sources import source_options

STALE_SECONDS = 3600.0
"""Age (seconds since the last write) after which a conversion's temp file or meta-less ``.arrow`` is deleted."""

logger = logging.getLogger(__name__)


def source_set(sources: Iterable[Any], kind: str) -> dict:
    """What a pool file was converted from, whatever the files' bytes and the source options: ``kind`` and,
    per source in order, ``{"path": resolved local path}`` or ``{"hub": dataset name}``."""
    where = []
    for source in sources:
        path = source_options(source)["path"]
        where.append({"path": str(Path(os.path.expanduser(path)).resolve())} if looks_local(path) else {"hub": path})
    return {"kind": kind, "sources": where}


def _meta_source_set(meta_path: Path) -> Optional[dict]:
    try:
        meta = json.loads(meta_path.read_text())
        return meta.get("source_set") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(paths: list[Path], why: str) -> bool:
    """Delete ``paths`` in order, logging one line with their total size; False when another process
    deleted the first one already, or one could not be deleted (a warning then)."""
    try:
        size = sum(_size(p) for p in paths)
        for p in paths:
            p.unlink(missing_ok=p is not paths[0])
    except FileNotFoundError:
        return False
    except OSError as e:
        logger.warning("could not delete %s: %s", paths[0], e)
        return False
    logger.info("deleted %s (%s): %s", paths[-1], f"{size / 1e6:.1f} MB", why)
    return True


def collect_pools(folder: str | os.PathLike, keep: str | os.PathLike, wanted: dict, *,
                  stale_seconds: float = STALE_SECONDS) -> list[Path]:
    """Delete the pool files in ``folder`` that ``keep`` (the ``.arrow`` in use by this run, never deleted)
    supersedes, those of the source set ``wanted`` (:func:`source_set`), and the stale leftovers of dead
    conversions (module docstring). Returns the deleted ``.arrow`` and temp files. Call it on the main
    process only."""
    folder, keep = Path(folder), Path(keep)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    deleted = []
    for meta_path in entries:
        arrow = meta_path.with_suffix(".arrow")
        if meta_path.suffix != ".json" or meta_path.name.startswith(".") or arrow == keep:
            continue
        if _meta_source_set(meta_path) == wanted:
            # the .json first: without it no run reuses the .arrow, and a crash in between leaves an orphan
            # .arrow that the rule below deletes later. Another process may have this file mapped: deleting
            # it is safe on Linux, the inode lives until the last map is closed.
            if _unlink([meta_path, arrow], f"superseded by {keep.name}"):
                deleted.append(arrow)
    now = time.time()
    for path in entries:
        temp = path.name.startswith(".") and path.suffix == ".tmp"
        orphan = path.suffix == ".arrow" and path != keep and not path.with_suffix(".json").exists()
        try:
            stale = (temp or orphan) and now - path.stat().st_mtime > stale_seconds
        except FileNotFoundError:
            continue
        if stale and _unlink([path], f"left by a conversion that did not finish (untouched for {stale_seconds:.0f} s)"):
            deleted.append(path)
    return deleted
