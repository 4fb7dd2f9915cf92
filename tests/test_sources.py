"""The one loop that loads a list of data sources: config nodes, dicts or paths; counts; unique ids."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from deita.config import DataSource
from deita.data.errors import DataError
from deita.data.sources import load_sources, source_options


def _alpaca(path, n, stem="r"):
    path.write_text(json.dumps([{"id": f"{stem}{i}", "instruction": f"q{i}", "output": f"a{i}"} for i in range(n)]))
    return path


def test_sources_of_every_spelling_concatenate_in_order(tmp_path):
    a, b, c = _alpaca(tmp_path / "a.json", 3, "a"), _alpaca(tmp_path / "b.json", 4, "b"), _alpaca(tmp_path / "c.json", 2, "c")
    node = OmegaConf.structured(DataSource(path=str(a), limit=2))
    loaded = load_sources([node, {"path": str(b)}, str(c)], "sft", unique_ids=True)
    assert [r["id"] for r in loaded.rows] == ["a0", "a1", "b0", "b1", "b2", "b3", "c0", "c1"]
    assert loaded.rows_per_source == {str(a): 2, str(b): 4, str(c): 2} and loaded.skipped == 0
    assert source_options({"path": str(a)}) == {"path": str(a), "format": "auto", "split": "train",
                                                 "revision": None, "on_error": "raise", "limit": None}


def test_on_error_override_skips_and_counts(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q", "output": "a"}, {"instruction": "q2"}]))
    with pytest.raises(DataError, match="record 1"):
        load_sources([str(bad)], "sft")
    assert load_sources([str(bad)], "sft", on_error="skip").skipped == 1


def test_an_id_in_two_sources_is_an_error_naming_both(tmp_path):
    a, b = _alpaca(tmp_path / "a.json", 2), _alpaca(tmp_path / "b.json", 2)
    assert len(load_sources([str(a), str(b)], "sft").rows) == 4  # preference/prompt sets may repeat ids
    with pytest.raises(DataError, match=r"b.json: expected row ids unique across data sources, found 'r0', "
                                        r"which source 0 \(.*a.json\) also holds"):
        load_sources([str(a), str(b)], "sft", unique_ids=True)
    with pytest.raises(DataError, match="source 0"):
        load_sources([str(a), str(a)], "sft", unique_ids=True)  # the same file twice
