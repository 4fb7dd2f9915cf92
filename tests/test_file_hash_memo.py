"""Large input files are hashed once, not at every run: the hash is remembered by path, size, mtime and inode."""

from __future__ import annotations

import os

import pytest

import deita.fingerprint as fp


@pytest.fixture
def small_threshold(monkeypatch):
    """Remember files from 1 KiB, so the tests need no 64 MiB file; count the real hashing passes."""
    monkeypatch.setattr(fp, "REMEMBER_MIN_BYTES", 1024)
    calls = []
    real = fp.hash_file
    monkeypatch.setattr(fp, "hash_file", lambda path, *a, **k: calls.append(str(path)) or real(path, *a, **k))
    return calls


def _old_file(path, data: bytes, age_s: float = 60.0):
    """Write ``data`` and date it ``age_s`` in the past (past the racy window)."""
    path.write_bytes(data)
    t = os.stat(path).st_mtime - age_s
    os.utime(path, (t, t))
    return path


def test_a_large_file_is_read_once_and_then_remembered(tmp_path, small_threshold):
    f = _old_file(tmp_path / "emb.npy", os.urandom(4096))
    memo = tmp_path / "memo"
    first = fp.hash_file_remembered(f, memo)
    assert first == fp.hash_file(f)  # the real digest
    small_threshold.clear()
    assert fp.hash_file_remembered(f, memo) == first
    assert small_threshold == []  # no second read


@pytest.mark.parametrize("change", ["content_same_size", "size", "replaced"])
def test_any_change_to_the_file_is_hashed_again(tmp_path, small_threshold, change):
    f = _old_file(tmp_path / "emb.npy", b"a" * 4096)
    memo = tmp_path / "memo"
    before = fp.hash_file_remembered(f, memo)
    if change == "content_same_size":
        _old_file(f, b"b" * 4096, age_s=30.0)  # same size, another mtime
    elif change == "size":
        _old_file(f, b"a" * 4097)
    else:  # a new file renamed over the old one: new inode (mtime set back to the old one's)
        st = os.stat(f)
        other = _old_file(tmp_path / "other", b"c" * 4096)
        os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(other, f)
    assert fp.hash_file_remembered(f, memo) == fp.hash_file(f) != before


def test_a_file_written_just_now_is_not_remembered(tmp_path, small_threshold):
    f = tmp_path / "fresh.npy"
    f.write_bytes(os.urandom(4096))
    memo = tmp_path / "memo"
    fp.hash_file_remembered(f, memo)
    assert not memo.exists() or not any(memo.iterdir())


def test_small_files_and_no_memo_dir_hash_every_time(tmp_path, small_threshold):
    small = _old_file(tmp_path / "small.json", b"{}")
    large = _old_file(tmp_path / "large.bin", os.urandom(4096))
    for _ in range(2):
        fp.hash_file_remembered(small, tmp_path / "memo")
        fp.hash_file_remembered(large, None)
    assert len(small_threshold) == 4


def test_a_damaged_memo_entry_is_ignored_and_rewritten(tmp_path, small_threshold):
    f = _old_file(tmp_path / "emb.npy", os.urandom(4096))
    memo = tmp_path / "memo"
    digest = fp.hash_file_remembered(f, memo)
    (entry,) = memo.iterdir()
    entry.write_text("{not json")
    assert fp.hash_file_remembered(f, memo) == digest
    entry.write_text('{"sha256": "forged"}')  # no stamp: not trusted
    assert fp.hash_file_remembered(f, memo) == digest


def test_the_select_stage_fingerprint_reads_a_large_pool_and_precomputed_file_once(tmp_path, small_threshold):
    """Through ``stage_inputs`` (what every run and skip check computes): the second fingerprint of the
    select stage reads no byte of its large inputs, and equals the first."""
    from deita import pipeline, stages
    from tests.test_pipeline import _cfg

    pool = _old_file(tmp_path / "pool.jsonl", b'{"instruction": "q", "output": "a"}\n' * 100)
    scores = _old_file(tmp_path / "scores.jsonl", b'{"id": "a", "complexity": 1.0, "quality": 1.0}\n' * 100)
    cfg = _cfg(tmp_path, pool, "selection=deita", f"selection.precomputed.scores={scores}")
    first = pipeline.stage_inputs(cfg, stages.get("select"), {})
    assert sorted(small_threshold) == sorted([str(pool), str(scores)])
    small_threshold.clear()
    assert pipeline.stage_inputs(cfg, stages.get("select"), {}) == first
    assert small_threshold == []
    assert len(list(pipeline.file_hash_memo(cfg).iterdir())) == 2
