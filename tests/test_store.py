"""The chunked store (deita/store.py): chunks by row range, resume, index, memory-mapped reads, the filter
over chunks. Processes and kills are in tests/test_resume_scoring.py."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from deita.distributed import DistInfo
from deita.store import STALE_SECONDS, Chunk, ChunkedEntry, ChunkedRows, _claim, _work_order, compute_in_memory, fill, plan_chunks

ONE = DistInfo()


def _rows_value(start: int, end: int) -> np.ndarray:
    """A deterministic per-row result: row i -> [i, i^2 / 7, -i]."""
    i = np.arange(start, end, dtype=np.float64)
    return np.stack([i, i * i / 7.0, -i], axis=1).astype(np.float32)


def _table_value(start: int, end: int) -> dict[str, list]:
    return {"turns": [[float(i), i / 3.0] for i in range(start, end)], "error": [f"e{i}" if i % 4 == 0 else "" for i in range(start, end)]}


def test_plan_chunks_cover_the_pool_in_order():
    assert plan_chunks(10, 4) == [Chunk(0, 4), Chunk(4, 8), Chunk(8, 10)]
    assert plan_chunks(8, 4) == [Chunk(0, 4), Chunk(4, 8)]
    assert plan_chunks(0, 4) == []
    with pytest.raises(ValueError, match="selection.chunk_rows"):
        plan_chunks(10, 0)


def test_missing_chunks_are_shared_out_in_contiguous_runs_then_taken_from_the_far_end():
    missing = [0, 2, 3, 5, 7]
    orders = [_work_order(missing, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert orders == [[0, 2, 7, 5, 3], [3, 5, 2, 0, 7], [7, 5, 3, 2, 0]]


def test_a_chunk_is_claimed_once(tmp_path):
    assert _claim(tmp_path, Chunk(0, 4)) and not _claim(tmp_path, Chunk(0, 4)) and _claim(tmp_path, Chunk(4, 8))


def test_fill_resumes_only_the_missing_chunks_and_finishes(tmp_path):
    entry = ChunkedEntry(tmp_path / "e", "array")
    chunks = plan_chunks(23, 5)
    for c in (chunks[0], chunks[3]):  # what a killed run left: two finished chunks ...
        entry.write(c, _rows_value(c.start, c.end))
    torn = tmp_path / "e" / ".rows-000000000005-000000000010.npy.abc.tmp"
    torn.write_bytes(b"half")  # ... and a torn write
    ChunkedEntry(tmp_path / "e", "array").write(Chunk(0, 7), _rows_value(0, 7))  # a chunk of another chunk size
    live = tmp_path / "e" / ".rows-000000000010-000000000015.npy.xyz.tmp"
    for path in (torn, entry.path_of(Chunk(0, 7))):
        os.utime(path, (time.time() - STALE_SECONDS - 5,) * 2)  # left by a run that died long ago
    calls = []

    def compute(start, end):
        calls.append((start, end))
        return _rows_value(start, end)

    live.write_bytes(b"being written")  # by another job filling the same entry right now: left alone
    stats = fill(entry, 23, compute, ONE, chunk_rows=5)
    assert calls == [(5, 10), (10, 15), (20, 23)]
    assert (stats.chunks, stats.resumed, stats.computed, stats.hit) == (5, 2, 3, False)
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [live.name, "index.json"] + [c.file_name("array") for c in chunks]
    index = json.loads((tmp_path / "e" / "index.json").read_text())
    assert index["rows"] == 23 and index["chunk_rows"] == 5 and index["shape"] == [23, 3] and index["dtype"] == "float32"
    got = entry.read()
    assert isinstance(got, ChunkedRows) and got.shape == (23, 3)
    assert np.array_equal(np.asarray(got), _rows_value(0, 23))
    again = fill(entry, 23, compute, ONE, chunk_rows=8)  # finished: reused whatever chunk size is asked now
    assert again.hit and again.chunks == 5 and len(calls) == 3


def test_a_table_entry_and_the_in_memory_path_agree(tmp_path):
    entry = ChunkedEntry(tmp_path / "t", "table")
    fill(entry, 11, _table_value, ONE, chunk_rows=4)
    got = entry.read()
    assert got == _table_value(0, 11)
    assert compute_in_memory("table", 11, _table_value, ONE, chunk_rows=4) == got
    assert np.array_equal(compute_in_memory("array", 11, _rows_value, ONE, chunk_rows=4), _rows_value(0, 11))


def test_a_chunk_of_the_wrong_length_is_refused(tmp_path):
    entry = ChunkedEntry(tmp_path / "e", "array")
    with pytest.raises(RuntimeError, match="rows 0-5: computed shape"):
        fill(entry, 5, lambda s, e: _rows_value(s, e - 1), ONE, chunk_rows=5)
    assert not any((tmp_path / "e").glob("rows-*"))


def test_finishing_with_a_chunk_another_rank_wrote_out_of_sight_says_so(tmp_path):
    entry = ChunkedEntry(tmp_path / "e", "array")
    chunks = plan_chunks(6, 3)
    entry.write(chunks[0], _rows_value(0, 3))
    with pytest.raises(RuntimeError, match="1 chunk.*rows 3-6.*every rank must see paths.cache_dir"):
        entry.finish(chunks, 3)
    assert entry.index() is None


def test_chunked_rows_index_like_the_matrix(tmp_path):
    entry = ChunkedEntry(tmp_path / "e", "array")
    fill(entry, 17, _rows_value, ONE, chunk_rows=4)
    rows, full = entry.read(), _rows_value(0, 17)
    assert len(rows) == 17 and rows.dtype == np.float32
    assert np.array_equal(rows[5], full[5]) and np.array_equal(rows[-1], full[-1])
    assert np.array_equal(rows[3:14:2], full[3:14:2])
    idx = np.array([16, 0, 7, 4, 3, 12])
    assert np.array_equal(rows[idx], full[idx]) and np.array_equal(rows[full[:, 0] > 10], full[full[:, 0] > 10])
    assert np.array_equal(rows.starts, [0, 4, 8, 12, 16, 17])


def test_the_streamed_filter_over_chunks_selects_what_it_selects_over_the_matrix(tmp_path):
    from deita.selection.filters import greedy_diverse, greedy_diverse_naive

    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    full = (base[rng.integers(0, 40, size=300)] + 0.3 * rng.normal(size=(300, 16))).astype(np.float32)
    entry = ChunkedEntry(tmp_path / "e", "array")
    fill(entry, 300, lambda s, e: full[s:e], ONE, chunk_rows=3)  # 100 chunks: more than the reader keeps open
    order = rng.permutation(300)
    want = greedy_diverse_naive(full, order, tau=0.8, budget=40)
    got = greedy_diverse(entry.read(), order, tau=0.8, budget=40, block_size=32)
    assert want.size == 40 and np.array_equal(got.kept, want)
    assert np.array_equal(greedy_diverse(full, order, tau=0.8, budget=-1).kept,
                          greedy_diverse(entry.read(), order, tau=0.8, budget=-1, block_size=7).kept)


def test_content_cache_counts_hits_misses_and_resumed_chunks(tmp_path):
    from deita.cache import ContentCache
    from deita.selection.stage import cache_report

    cache = ContentCache(tmp_path, chunk_rows=4)
    key = {"data": "fp", "model": "m"}
    folder = tmp_path / "scores" / __import__("deita.fingerprint", fromlist=["hash_json"]).hash_json(key)
    ChunkedEntry(folder, "table").write(Chunk(4, 8), _table_value(4, 8))  # left by a killed run
    assert cache.rows_table("scores", key, 10, _table_value, ONE) == _table_value(0, 10)
    name = f"scores/{folder.name}"
    assert cache.stats["misses"] == [name] and cache.stats["chunks"][name] == {"chunks": 3, "resumed": 1, "computed": 2}
    second = ContentCache(tmp_path, chunk_rows=4)
    assert second.rows_table("scores", key, 10, lambda s, e: pytest.fail("recomputed"), ONE) == _table_value(0, 10)
    assert second.stats["hits"] == [name]
    assert cache_report(cache.stats)["resumed_chunks"] == 1 and cache_report(second.stats)["resumed_chunks"] == 0
