"""The pool as a memory-mapped Arrow file (deita/data/pool_file.py): the same rows (key order included), ids,
fingerprint, counts, errors and warnings as the Python-row pool of ``load_sources``; reused while its
sources are unchanged; and, through ``train.py``, byte-identical select outputs."""

from __future__ import annotations

import gzip
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deita.data.errors import DataError
from deita.data.pool_file import PoolRows, open_pool, row_ids
from deita.data.sources import load_sources
from deita.fingerprint import hash_rows
from tests.helpers import run_train


def _sources(tmp_path: Path) -> list:
    """Five sources of different formats and containers: Alpaca (keys in non-sorted order, an input, non-ASCII,
    a bad record), ShareGPT in a .json.gz, OpenAI messages in a parquet file, self-instruct, a folder."""
    alpaca = [{"output": f"réponse {i} ✓", "instruction": f"question {i}", "input": "ctx" if i % 2 else ""}
              for i in range(30)]
    alpaca.insert(7, {"instruction": "no output"})
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in alpaca))
    share = [{"id": f"s{i}", "conversations": [{"from": "human", "value": f"hi {i}"}, {"from": "gpt", "value": "x" * i},
                                                {"from": "human", "value": "more"}, {"from": "gpt", "value": "ok"}]}
             for i in range(12)]
    with gzip.open(tmp_path / "share.json.gz", "wt") as f:
        json.dump(share, f)
    msgs = [{"id": f"m{i}", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"u{i}"},
                                          {"role": "assistant", "content": f"a{i}"}]} for i in range(9)]
    pd.DataFrame(msgs).to_parquet(tmp_path / "msgs.parquet", index=False)
    (tmp_path / "self.jsonl").write_text(json.dumps({"id": "si", "instruction": "do", "instances": [
        {"input": "", "output": "one"}, {"input": "x", "output": "two"}]}) + "\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.jsonl").write_text(json.dumps({"id": "f1", "instruction": "q", "output": "a"}) + "\n")
    return [{"path": str(tmp_path / "alpaca.jsonl"), "on_error": "skip"}, str(tmp_path / "share.json.gz"),
            str(tmp_path / "msgs.parquet"), {"path": str(tmp_path / "self.jsonl"), "limit": 1}, str(folder)]


def test_arrow_pool_gives_the_python_pool_rows_ids_fingerprint_and_counts(tmp_path):
    sources = _sources(tmp_path)
    want = load_sources(sources, "sft", unique_ids=True)
    rows = want.rows
    pool = open_pool(sources, "sft", tmp_path / "cache", unique_ids=True)
    got = list(pool.rows)
    assert got == rows and [list(r) for r in got] == [list(r) for r in rows]  # key order too: selected.jsonl bytes
    assert [json.dumps(r, ensure_ascii=False) for r in got] == [json.dumps(r, ensure_ascii=False) for r in rows]
    assert pool.fingerprint == hash_rows(rows) == want.fingerprint
    assert pool.ids == want.ids == [r["id"] for r in rows] == row_ids(pool.rows) == row_ids(rows)
    assert pool.response_lengths == want.response_lengths
    assert pool.source_counts == want.source_counts and pool.rows_per_source == want.rows_per_source
    assert pool.skipped == want.skipped == 1
    assert sorted(p.suffix for p in (tmp_path / "cache" / "pools").iterdir()) == [".arrow", ".json"]


def test_pool_rows_index_slice_and_iterate_like_a_list(tmp_path, monkeypatch):
    import deita.data.pool_file as pf

    monkeypatch.setattr(pf, "BATCH_ROWS", 7)  # several record batches, so lookups cross batch boundaries
    sources = _sources(tmp_path)
    rows = load_sources(sources, "sft", unique_ids=True).rows
    lazy = open_pool(sources, "sft", tmp_path / "cache", unique_ids=True).rows
    assert isinstance(lazy, PoolRows) and len(lazy) == len(rows) == 53
    assert len(lazy._text.chunks) > 5 and all(w is not None for w in lazy._where)  # rows read by pread from the file
    for i in [0, 6, 7, 8, 20, 52, -1, -53]:
        assert lazy[i] == rows[i]
    for s in [slice(0, 7), slice(5, 30), slice(50, 99), slice(-3, None), slice(10, 5), slice(None, None, 4),
              slice(None, None, -5)]:
        assert lazy[s] == rows[s]
    for bad in (53, -54):
        with pytest.raises(IndexError):
            lazy[bad]
    assert list(lazy) == rows and lazy.index(rows[9]) == 9


def _error(fn) -> str:
    with pytest.raises(DataError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("case", ["bad record", "duplicate across sources", "duplicate in a source", "missing",
                                  "nothing usable"])
def test_arrow_pool_raises_the_python_pool_error_and_leaves_no_file(tmp_path, case):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": f"r{i}", "instruction": "q", "output": "a"}) + "\n" for i in range(5)))
    other = tmp_path / "other.jsonl"
    sources = {
        "bad record": ([str(good), str(other)], ['{"id": "x", "instruction": "q", "output": "a"}', '{"id": "y", "instruction": 3}']),
        "duplicate across sources": ([str(good), str(other)], ['{"id": "x", "instruction": "q", "output": "a"}',
                                                              '{"id": "r3", "instruction": "q", "output": "a"}',
                                                              '{"id": "z", "instruction": 3}']),
        "duplicate in a source": ([str(other)], ['{"id": "x", "instruction": "q", "output": "a"}'] * 2),
        "missing": ([str(good), str(tmp_path / "nope.jsonl")], []),
        "nothing usable": ([{"path": str(other), "on_error": "skip"}], ['{"id": "y", "instruction": 3}']),
    }[case]
    other.write_text("".join(line + "\n" for line in sources[1]))
    want = _error(lambda: load_sources(sources[0], "sft", unique_ids=True))
    cache = tmp_path / "cache"
    assert _error(lambda: open_pool(sources[0], "sft", cache, unique_ids=True)) == want
    assert not (cache / "pools").exists() or not list((cache / "pools").iterdir())


def test_a_finished_pool_file_is_reused_and_a_changed_source_converts_anew(tmp_path, caplog):
    sources = _sources(tmp_path)
    cache = tmp_path / "cache"
    first = open_pool(sources, "sft", cache, unique_ids=True)
    written = first.path.stat().st_mtime_ns
    with caplog.at_level(logging.WARNING, logger="deita.data.loading"):
        again = open_pool(sources, "sft", cache, unique_ids=True)
    assert again.path == first.path and again.path.stat().st_mtime_ns == written
    # the skipped record is reported on every run, as loading the sources reports it
    assert f"{sources[0]['path']}: skipped 1 bad record(s); the first: {sources[0]['path']}: record 7 (line 8)" in caplog.text
    assert list(again.rows) == list(first.rows) and again.fingerprint == first.fingerprint
    other_options = open_pool([*sources[:3], str(tmp_path / "self.jsonl"), sources[4]], "sft", cache, unique_ids=True)
    assert other_options.path != first.path and len(other_options.rows) == len(first.rows) + 1  # limit is in the key
    folder_file = tmp_path / "folder" / "b.jsonl"
    folder_file.write_text(json.dumps({"id": "f1", "instruction": "q", "output": "changed"}) + "\n")
    os.utime(folder_file, ns=(written + 10**9, written + 10**9))
    changed = open_pool(sources, "sft", cache, unique_ids=True)
    assert changed.path != first.path and changed.rows[-1]["messages"][-1]["content"] == "changed"
    assert changed.fingerprint == hash_rows(load_sources(sources, "sft", unique_ids=True).rows) != first.fingerprint


def test_an_unfinished_pool_file_is_converted_again(tmp_path):
    sources = _sources(tmp_path)
    cache = tmp_path / "cache"
    first = open_pool(sources, "sft", cache, unique_ids=True)
    first.path.with_suffix(".json").unlink()  # killed between the .arrow and its .json
    first.path.write_bytes(first.path.read_bytes()[:100])
    again = open_pool(sources, "sft", cache, unique_ids=True)
    assert again.path == first.path and list(again.rows) == load_sources(sources, "sft", unique_ids=True).rows


N, DIM = 60, 8


def test_train_py_select_outputs_are_byte_identical_with_the_arrow_and_the_python_pool(tmp_path):
    """DEITA on precomputed scores and embeddings over two sources (Alpaca rows whose keys are not sorted, and
    OpenAI messages), one run per ``data.pool_store``: scores.parquet and selected.jsonl byte for byte."""
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"output": f"antwort {i} é", "instruction": f"frage {i % 17}", "input": str(i % 3)},
                                    ensure_ascii=False) + "\n" for i in range(40)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"id": f"m{i}", "messages": [{"role": "user", "content": f"u{i}"},
                                                                 {"role": "assistant", "content": "y" * i}]}) + "\n"
                         for i in range(N - 40)))
    ids = [f"a:{i}" for i in range(40)] + [f"m{i}" for i in range(N - 40)]
    rng = np.random.default_rng(0)
    pd.DataFrame({"id": ids, "complexity": rng.integers(1, 6, N).astype(float),
                  "quality": rng.integers(1, 6, N).astype(float)}).to_parquet(tmp_path / "scores.parquet", index=False)
    centres = rng.normal(size=(30, DIM))
    np.save(tmp_path / "emb.npy", (centres[rng.integers(0, 30, N)] + 0.3 * rng.normal(size=(N, DIM))).astype(np.float32))
    (tmp_path / "emb.ids.json").write_text(json.dumps(ids))
    outputs = {}
    for store in ("memory", "arrow"):
        runs = tmp_path / f"runs_{store}"
        proc = run_train(["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", "selection.budget=15",
                          "selection.tau=0.8", f"data.pool=[{{path: {a}}}, {{path: {b}}}]", f"data.pool_store={store}",
                          f"selection.precomputed.scores={tmp_path / 'scores.parquet'}",
                          f"selection.precomputed.embeddings={tmp_path / 'emb.npy'}",
                          f"paths.runs_dir={runs}", f"paths.cache_dir={tmp_path / f'cache_{store}'}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        [select_dir] = [p for p in runs.rglob("select") if (p / "selected.jsonl").is_file()]
        outputs[store] = {name: (select_dir / name).read_bytes() for name in ("scores.parquet", "selected.jsonl")}
        manifest = json.loads((select_dir / "manifest.json").read_text())
        outputs[store]["counts"] = (manifest["pool_rows"], manifest["selected_rows"], manifest["rows_per_source"],
                                    manifest["skipped_records"])
    assert outputs["arrow"] == outputs["memory"]
    assert outputs["arrow"]["counts"][:2] == (N, 15)
    selected = [json.loads(line) for line in outputs["arrow"]["selected.jsonl"].decode().splitlines()]
    assert any(list(r) == ["id", "messages", "instruction", "input"] for r in selected)
    assert list((tmp_path / "cache_arrow" / "pools").glob("*.arrow")) and not (tmp_path / "cache_memory" / "pools").exists()


def test_heldout_rows_from_the_arrow_pool_equal_those_from_python_rows(tmp_path):
    from deita.evaluation.heldout import pick_heldout

    sources = _sources(tmp_path)
    rows = load_sources(sources, "sft", unique_ids=True).rows
    lazy = open_pool(sources, "sft", tmp_path / "cache", unique_ids=True).rows
    selected = {r["id"]: i % 3 == 0 for i, r in enumerate(rows)}
    for cap in (5, 100):
        assert pick_heldout(lazy, selected, cap=cap) == pick_heldout(rows, selected, cap=cap)
    with pytest.raises(ValueError, match="1 pool row id"):
        pick_heldout(lazy, {k: v for k, v in list(selected.items())[1:]}, cap=5)


@pytest.mark.slow  # ~10 s; the default suite proves the fingerprint equal to hash_rows in test_arrow_pool_gives_the_python_pool_rows_ids_fingerprint_and_counts
def test_caches_written_with_python_rows_are_hits_for_the_arrow_pool(tmp_path, shared_data):
    """Scores and embeddings cached by a run that held the pool as Python rows are reused, all of them, by a
    run with the Arrow pool (same data fingerprint), and the selection is byte-identical."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"output": f"antwort {i} é", "instruction": f"frage {i}", "input": str(i % 3)},
                                       ensure_ascii=False) + "\n" for i in range(24)))
    outputs, caches = {}, {}
    for store in ("memory", "arrow"):
        runs = tmp_path / f"runs_{store}"
        proc = run_train(["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", "selection.budget=6",
                          f"data.pool=[{{path: {pool}}}]", f"data.pool_store={store}", f"paths.runs_dir={runs}",
                          f"paths.cache_dir={tmp_path / 'cache'}", f"paths.shared_data={shared_data}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        [select_dir] = [p for p in runs.rglob("select") if (p / "selected.jsonl").is_file()]
        outputs[store] = [(select_dir / name).read_bytes() for name in ("scores.parquet", "selected.jsonl")]
        caches[store] = json.loads((select_dir / "manifest.json").read_text())["cache"]
    assert len(caches["memory"]["misses"]) >= 3 and caches["memory"]["hits"] == []  # complexity, quality, embeddings
    assert caches["arrow"]["misses"] == [] and sorted(caches["arrow"]["hits"]) == sorted(caches["memory"]["misses"])
    assert outputs["arrow"] == outputs["memory"]


def test_a_source_replaced_with_the_same_size_and_mtime_converts_anew(tmp_path):
    src = tmp_path / "pool.jsonl"
    src.write_text(json.dumps({"id": "a", "instruction": "q", "output": "one"}) + "\n")
    stamp, size = src.stat().st_mtime_ns, src.stat().st_size
    first = open_pool([str(src)], "sft", tmp_path / "cache")
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"id": "a", "instruction": "q", "output": "two"}) + "\n")  # same size
    os.utime(new, ns=(stamp, stamp))
    os.replace(new, src)  # what an editor's save or a copy-then-rename does: a new inode
    again = open_pool([str(src)], "sft", tmp_path / "cache")
    assert (src.stat().st_mtime_ns, src.stat().st_size) == (stamp, size)
    assert again.path != first.path and again.rows[0]["messages"][-1]["content"] == "two"


def _pool_files(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "pools").iterdir())


def test_an_edited_source_leaves_one_pool_file_for_its_source_set_and_others_survive(tmp_path, caplog, monkeypatch):
    """The pool file an edit supersedes is deleted (and logged with its size) once the new one is written;
    another source set's file in the same cache dir, and the file this run maps, stay."""
    src, other = tmp_path / "pool.jsonl", tmp_path / "other.jsonl"
    for path in (src, other):
        path.write_text(json.dumps({"id": "a", "instruction": "q", "output": "one"}) + "\n")
    cache = tmp_path / "cache"
    kept = open_pool([str(other)], "sft", cache)
    first = open_pool([str(src)], "sft", cache)
    assert len(_pool_files(cache)) == 4
    src.write_text(json.dumps({"id": "a", "instruction": "q", "output": "edited"}) + "\n")
    os.utime(src, ns=(first.path.stat().st_mtime_ns + 10**9,) * 2)
    with caplog.at_level(logging.INFO, logger="deita.data.pool_cleanup"):
        edited = open_pool([str(src)], "sft", cache)
    assert edited.path != first.path and edited.rows[0]["messages"][-1]["content"] == "edited"
    assert _pool_files(cache) == sorted([kept.path.name, kept.path.with_suffix(".json").name,
                                         edited.path.name, edited.path.with_suffix(".json").name])
    assert f"deleted {first.path} (0.0 MB): superseded by {edited.path.name}" in caplog.text
    assert first.rows[0]["messages"][-1]["content"] == "one"  # still mapped: a deleted file's inode lives on
    # the same file by a relative path: another key (the path as given is an option), the same source set
    monkeypatch.chdir(tmp_path)
    relative = open_pool(["./pool.jsonl"], "sft", cache)
    assert _pool_files(cache) == sorted([kept.path.name, kept.path.with_suffix(".json").name,
                                         relative.path.name, relative.path.with_suffix(".json").name])


def test_a_run_that_cannot_reuse_its_pool_file_deletes_the_previous_runs_one(tmp_path, monkeypatch):
    """A source whose bytes cannot be identified (an unresolved hub revision) gets a <key>-<uuid> file at every
    run; the next run's conversion deletes the earlier one, so one stays."""
    import deita.data.pool_file as pf

    src = tmp_path / "pool.jsonl"
    src.write_text(json.dumps({"id": "a", "instruction": "q", "output": "one"}) + "\n")
    monkeypatch.setattr(pf, "_files_identity", lambda path, revision: None)
    cache = tmp_path / "cache"
    first = open_pool([str(src)], "sft", cache)
    second = open_pool([str(src)], "sft", cache)
    assert first.path != second.path and first.path.stem.startswith(second.path.stem.split("-")[0])
    assert _pool_files(cache) == sorted([second.path.name, second.path.with_suffix(".json").name])


def test_leftovers_of_dead_conversions_are_deleted_after_an_hour_fresh_ones_are_not(tmp_path):
    """Temp files (named as deita.io.atomic_path names them) and .arrow files with no .json go once untouched
    for STALE_SECONDS; fresh ones (a conversion may be writing them) and an old finished pool file stay."""
    from deita.data.pool_cleanup import STALE_SECONDS

    src, other = tmp_path / "pool.jsonl", tmp_path / "other.jsonl"
    for path in (src, other):
        path.write_text(json.dumps({"id": "a", "instruction": "q", "output": "one"}) + "\n")
    cache = tmp_path / "cache"
    old_pool = open_pool([str(other)], "sft", cache).path
    pools, old = cache / "pools", time.time() - STALE_SECONDS - 60
    names = {"old_temp": ".abc.arrow.x1y2.tmp", "old_json_temp": ".abc.json.x3y4.tmp",
             "fresh_temp": ".def.arrow.z5.tmp", "old_orphan": "0123.arrow", "fresh_orphan": "4567.arrow"}
    for kind, name in names.items():
        (pools / name).write_bytes(b"x" * 10)
    for path in [pools / names[k] for k in names if k.startswith("old")] + [old_pool, old_pool.with_suffix(".json")]:
        os.utime(path, (old, old))
    pool = open_pool([str(src)], "sft", cache)
    assert _pool_files(cache) == sorted([names["fresh_temp"], names["fresh_orphan"], pool.path.name,
                                         pool.path.with_suffix(".json").name, old_pool.name,
                                         old_pool.with_suffix(".json").name])
