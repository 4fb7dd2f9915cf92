"""Stable content fingerprints for files, configs and models: the keys of caching and stage skipping."""

from __future__ import annotations

import hashlib
import json
import os
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


def hash_rows(rows: list[dict]) -> str:
    """Fingerprint of canonical rows: their content, not where they came from."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def model_identity(path_or_name: str) -> dict:
    """What identifies a model for caching.

    A local folder is identified by its config, tokenizer files and the size plus head/tail bytes of
    each weight file (hashing 14 GB of weights on every run would cost minutes); a hub name by itself.
    """
    p = Path(path_or_name)
    if not p.is_dir():
        return {"name": str(path_or_name)}
    ident: dict[str, Any] = {"name": p.name}
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
