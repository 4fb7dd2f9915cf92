"""The one atomic writer: all or nothing, no temp files left, JSON in one format."""

from __future__ import annotations

import json

import pytest

from deita.io import atomic_path, write_json_atomic, write_text_atomic


def test_json_round_trip_and_format(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "m.json", {"b": 1, "a": "é", "p": tmp_path}, sort_keys=True)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": "é", "b": 1, "p": str(tmp_path)}
    assert text.endswith("}\n") and "é" in text and text.index('"a"') < text.index('"b"')
    assert list(path.parent.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = write_text_atomic(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
    with pytest.raises(TypeError):
        write_json_atomic(path, {1j: 2})  # a complex number cannot be a JSON key, even with default=str
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]
