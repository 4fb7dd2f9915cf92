"""Stable content fingerprints for files, configs and models: the keys of caching and stage skipping.

Hub references carry their revision when it is given or resolvable offline: the commit a name (or a
branch or tag) points to in the local Hugging Face cache (``refs/<revision>``), or the commit in a local
snapshot path (``.../models--org--name/snapshots/<commit>``). A hub model or dataset updated upstream
and downloaded again is therefore a new fingerprint, not a cache hit on the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any


def hash_json(obj: Any) -> str:
    """sha256 (hex, 16 chars) of ``obj`` serialised as canonical JSON (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex, 16 chars) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


REMEMBER_MIN_BYTES = 64 << 20
"""Files at least this large have their hash remembered by :func:`hash_file_remembered` (smaller ones are
hashed again: at ~380 MB/s, 64 MiB costs under 0.2 s)."""
RACY_SECONDS = 2.0
"""A file modified less than this long before it was hashed is not remembered: a write within the same
timestamp tick could change it without changing its size or modification time."""


def file_stamp(path: str | os.PathLike, st: os.stat_result | None = None) -> dict[str, Any]:
    """What identifies a file's bytes without reading them: its resolved path, size, modification time (ns)
    and inode (``st``: its ``stat``, when already taken). A rewrite, a copy over it or a replacement by
    rename changes at least one of them."""
    st = st or os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def hash_file_remembered(path: str | os.PathLike, memo_dir: str | os.PathLike | None) -> str:
    """:func:`hash_file`, remembered in ``memo_dir`` for large files, keyed by the file's
    :func:`file_stamp` (resolved path, size, modification time in ns, inode): a 164 GB embeddings file is read once, not at every run and
    every skip check. Any change to those four hashes the file again; so does a file modified within
    :data:`RACY_SECONDS` of its hashing. ``memo_dir`` None, or a file under :data:`REMEMBER_MIN_BYTES`,
    hashes every time. An unreadable or damaged memo entry is ignored and rewritten.
    """
    path = Path(path)
    st = path.stat()
    if memo_dir is None or st.st_size < REMEMBER_MIN_BYTES:
        return hash_file(path)
    stamp = file_stamp(path, st)
    entry = Path(memo_dir) / f"{hashlib.sha256(stamp['path'].encode()).hexdigest()[:24]}.json"
    try:
        memo = json.loads(entry.read_text())
        if {k: memo.get(k) for k in stamp} == stamp and isinstance(memo.get("sha256"), str):
            return memo["sha256"]
    except (OSError, ValueError):
        pass
    import time

    started = time.time()
    digest = hash_file(path)
    if path.stat().st_mtime_ns == st.st_mtime_ns and started - st.st_mtime_ns / 1e9 >= RACY_SECONDS:
        from deita.io import write_json_atomic

        try:
            write_json_atomic(entry, {**stamp, "sha256": digest})
        except OSError:  # a read-only cache only costs the next run a re-hash
            pass
    return digest


class RowHasher:
    """:func:`hash_rows` fed one row at a time: ``update(row)`` for each, then ``hexdigest()``. Rows that
    arrive as a stream (a pool converted to a file) get the fingerprint of the same rows in a list."""

    def __init__(self):
        self._h = hashlib.sha256()

    def update(self, row: dict) -> None:
        """Add the next row: its canonical JSON (sorted keys, non-ASCII kept) and a newline."""
        self._h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        self._h.update(b"\n")

    def hexdigest(self) -> str:
        """The fingerprint of the rows added so far (sha256, hex, 16 chars)."""
        return self._h.hexdigest()[:16]


def hash_rows(rows: list[dict]) -> str:
    """Fingerprint of canonical rows: their content, not where they came from."""
    h = RowHasher()
    for row in rows:
        h.update(row)
    return h.hexdigest()


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hub_revision(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str | None:
    """The revision a hub reference stands for: a full commit hash as given; else the commit that
    ``revision`` (default ``main``) points to in the local Hugging Face cache; else ``revision`` as given
    (a branch or tag not downloaded yet); None when nothing is known. Never touches the network."""
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub.constants import HF_HUB_CACHE

    folder = Path(HF_HUB_CACHE) / f"{repo_type}s--{str(repo_id).replace('/', '--')}"
    try:
        commit = (folder / "refs" / (revision or "main")).read_text().strip()
    except (OSError, ValueError):
        commit = ""
    return commit or revision or None


def snapshot_revision(path: str | os.PathLike) -> str | None:
    """The commit of a folder inside a Hugging Face cache snapshot (``.../snapshots/<commit>/...``), else None."""
    parts = Path(path).parts
    for i in range(1, len(parts) - 1):
        if parts[i] == "snapshots" and _COMMIT.match(parts[i + 1]) and parts[i - 1].startswith(("models--", "datasets--")):
            return parts[i + 1]
    return None


def model_identity(path_or_name: str, revision: str | None = None) -> dict:
    """What identifies a model for caching.

    A local folder is identified by its config, tokenizer files and the size plus head/tail bytes of
    each weight file (hashing 14 GB of weights on every run would cost minutes), plus its commit when it
    is a Hugging Face cache snapshot; a hub name by itself plus its revision (:func:`hub_revision`:
    ``revision`` if given, else what the local cache resolves ``main`` to) when one is known.
    """
    p = Path(path_or_name)
    if not p.is_dir():
        ident_hub: dict[str, Any] = {"name": str(path_or_name)}
        rev = hub_revision(str(path_or_name), "model", revision)
        if rev:
            ident_hub["revision"] = rev
        return ident_hub
    ident: dict[str, Any] = {"name": p.name}
    rev = snapshot_revision(p.resolve()) or snapshot_revision(p)
    if rev:
        ident["revision"] = rev
    for f in sorted(p.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in {".json", ".jinja", ".model", ".txt"}:
            ident[f.name] = hash_file(f)
        elif f.suffix in {".safetensors", ".bin", ".gguf"}:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                head = fh.read(1 << 20)
                fh.seek(max(0, size - (1 << 20)))
                tail = fh.read(1 << 20)
            ident[f.name] = [size, hashlib.sha256(head + tail).hexdigest()[:16]]
    return ident
