"""Atomic file writes: every artifact, manifest and cache entry is written to a temp file beside its
final path and renamed into place, so a reader never sees half a file and a crash leaves none behind.

:func:`atomic_path` is the one mechanism; :func:`write_text_atomic` and :func:`write_json_atomic` are
what most callers need. Arguments always come in the order (path, content).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temp path in ``path``'s folder (created if missing); rename it to ``path`` when the
    block ends without an error, delete it otherwise. Concurrent writers never share a temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Write ``obj`` as indented UTF-8 JSON (non-ASCII kept, values JSON cannot hold written with ``str``,
    a final newline) to ``path`` atomically; returns the path."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys, default=str) + "\n"
    return write_text_atomic(path, text)
