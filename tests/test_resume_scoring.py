"""Scoring and embedding a pool in chunks over real processes (gloo), killed with SIGKILL and resumed.

Each chunk of contiguous pool rows is batched on its own and written as soon as it is done
(deita/store.py), so the values depend on the chunk alone: a run killed midway (one process, or one rank
of two) and resumed at another world size gives scores and embeddings byte-identical to an uninterrupted
run, and the cache records how many chunks it resumed. Workers run at one CPU thread (another thread
count rounds differently), and so does the in-process reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.helpers import free_port

CHUNK_ROWS = 4
N_ROWS = 30  # 8 chunks per pass: 2 scorers + 1 embedder = 24 chunks
SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    import deita.store as store
    from deita.cache import ContentCache
    from deita.distributed import init_distributed, shutdown
    from deita.selection.embedders.pool import embed_pool
    from deita.selection.scorers.pool import score_pool

    rows_path, model, cache_dir, out_dir, chunk_rows, kill_rank, kill_after = sys.argv[1:8]
    info = init_distributed()
    assert info.world_size == int(os.environ.get("WORLD_SIZE", 1)), info
    written = []
    write = store.ChunkedEntry.write

    def write_then_maybe_die(self, chunk, value):  # SIGKILL: no cleanup, no atexit, a torn run
        write(self, chunk, value)
        written.append(chunk)
        if info.rank == int(kill_rank) and len(written) == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    store.ChunkedEntry.write = write_then_maybe_die
    rows = json.load(open(rows_path))
    cache = ContentCache(cache_dir, is_writer=info.is_main, chunk_rows=int(chunk_rows))
    cols = {}
    for kind in ("complexity", "quality"):
        cols.update(score_pool(rows, kind, model, cache=cache, data_fingerprint="fp", dist_info=info, max_length=128,
                               max_tokens_per_batch=600))
    emb = embed_pool(rows, "clm_last", model, cache=cache, data_fingerprint="fp", dist_info=info, max_length=128,
                     batch_size=4)
    if info.is_main:
        json.dump({"cols": cols, "world_size": info.world_size, "chunks": cache.stats["chunks"]},
                  open(out_dir + "/out.json", "w"))
        np.save(out_dir + "/emb.npy", np.asarray(emb))
    shutdown()
    """
)


def _rows(n=N_ROWS):
    rows = []
    for i in range(n):
        q = "explain the data " * (1 + i % 7) + f"number {i}"
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": "the answer is " * (1 + i % 5)}]
        if i % 6 == 0:
            msgs.append({"role": "user", "content": "and a follow up question"})
        rows.append({"id": f"r{i}", "messages": msgs})
    return rows


def _in_process(model, cache_dir) -> dict:
    """Score and embed at world size 1 in this process (one thread, as the workers), through a chunked cache."""
    import torch

    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.embedders.pool import embed_pool
    from deita.selection.scorers.pool import score_pool

    cache = ContentCache(cache_dir, chunk_rows=CHUNK_ROWS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (OMP_NUM_THREADS=1)
    try:
        cols = {}
        for kind in ("complexity", "quality"):
            cols.update(score_pool(_rows(), kind, str(model), cache=cache, data_fingerprint="fp", dist_info=DistInfo(),
                                   max_length=128, max_tokens_per_batch=600))
        emb = np.asarray(embed_pool(_rows(), "clm_last", str(model), cache=cache, data_fingerprint="fp",
                                    dist_info=DistInfo(), max_length=128, batch_size=4))
    finally:
        torch.set_num_threads(threads)
    return {"cols": cols, "emb": emb, "chunks": cache.stats["chunks"]}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_llama):
    """Scores and embeddings of an uninterrupted run at world size 1, one thread, same chunk size."""
    out = _in_process(tiny_llama, tmp_path_factory.mktemp("reference-cache"))
    return out["cols"], out["emb"]


def _run(tmp_path, model, processes: int, kill_rank: int = -1, kill_after: int = 0) -> subprocess.CompletedProcess:
    (tmp_path / "rows.json").write_text(json.dumps(_rows()))
    (tmp_path / "run.py").write_text(SCRIPT)
    args = [str(tmp_path / "run.py"), str(tmp_path / "rows.json"), str(model), str(tmp_path / "cache"), str(tmp_path),
            str(CHUNK_ROWS), str(kill_rank), str(kill_after)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if processes == 1:
        return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        pytest.skip("accelerate CLI not found")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    return subprocess.run(cmd, env=dict(env, ACCELERATE_USE_CPU="1"), capture_output=True, text=True, timeout=300)


def _chunks_on_disk(tmp_path) -> int:
    return sum(1 for p in (tmp_path / "cache").rglob("rows-*") if p.suffix in (".npy", ".parquet"))


def _entries_on_disk(tmp_path) -> dict[str, tuple[bool, int]]:
    """Each store entry the killed run left, by its cache-stats name (``kind/key``): (finished, chunk files)."""
    out = {}
    for folder in (tmp_path / "cache").glob("*/*"):
        chunks = sum(1 for p in folder.glob("rows-*") if p.suffix in (".npy", ".parquet"))
        out[f"{folder.parent.name}/{folder.name}"] = ((folder / "index.json").is_file(), chunks)
    return out


def _expected_chunk_stats(left: dict[str, tuple[bool, int]], names) -> dict[str, dict]:
    """What the resumed run must record per entry: an entry the killed run finished is a hit (nothing resumed
    or computed); an unfinished one resumes exactly its chunk files and computes the rest; one never started
    computes all 8."""
    expected = {}
    for name in names:
        finished, on_disk = left.get(name, (False, 0))
        resumed = 0 if finished else on_disk
        expected[name] = {"chunks": 8, "resumed": resumed, "computed": 0 if finished else 8 - resumed}
    return expected


def _differences(got: dict[str, list], cols: dict[str, list]) -> list[tuple]:
    """(column, pool row, chunk, uninterrupted value, resumed value) wherever the JSON text differs."""
    return [(c, i, i // CHUNK_ROWS, a, b) for c in cols for i, (a, b) in enumerate(zip(cols[c], got[c]))
            if json.dumps(a) != json.dumps(b)]


def _check_resumed(got: dict, uninterrupted, left: dict[str, tuple[bool, int]]) -> None:
    cols, emb = uninterrupted
    assert list(got["cols"]) == list(cols) and [len(v) for v in got["cols"].values()] == [N_ROWS] * len(cols)
    assert not _differences(got["cols"], cols)  # byte-identical scores (NaN, -0.0 and all)
    assert json.dumps(got["cols"]) == json.dumps(cols)
    assert got["emb"].tobytes() == emb.tobytes(), np.flatnonzero((got["emb"] != emb).any(axis=1))
    assert len(got["chunks"]) == 3  # 2 scorers + 1 embedder
    assert got["chunks"] == _expected_chunk_stats(left, got["chunks"])


def _subprocess_result(tmp_path, world_size: int) -> dict:
    got = json.loads((tmp_path / "out.json").read_text())
    assert got["world_size"] == world_size
    return {"cols": got["cols"], "emb": np.load(tmp_path / "emb.npy"), "chunks": got["chunks"]}


def test_one_rank_of_two_killed_then_resumed_by_one_process_is_byte_identical(tmp_path, tiny_llama, uninterrupted):
    killed = _run(tmp_path, tiny_llama, 2, kill_rank=1, kill_after=2)
    assert killed.returncode != 0 and not (tmp_path / "out.json").exists()
    left = _entries_on_disk(tmp_path)
    # rank 1's two chunks at least; rank 0 may have taken rank 1's share and finished a pass (then a hit)
    assert _chunks_on_disk(tmp_path) >= 2 and not all(finished for finished, _ in left.values())
    _check_resumed(_in_process(tiny_llama, tmp_path / "cache"), uninterrupted, left)  # world size 1, this process


@pytest.mark.slow
def test_one_process_killed_then_resumed_by_two_is_byte_identical(tmp_path, tiny_llama, uninterrupted):
    killed = _run(tmp_path, tiny_llama, 1, kill_rank=0, kill_after=11)  # midway through the quality scores
    left = _entries_on_disk(tmp_path)
    assert killed.returncode == -9 and sorted(left.values()) == [(False, 3), (True, 8)]  # complexity done, 3 quality
    resumed = _run(tmp_path, tiny_llama, 2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    got = _subprocess_result(tmp_path, 2)
    _check_resumed(got, uninterrupted, left)  # complexity a hit, 3 quality chunks resumed, embeddings all computed
    assert sum(s["resumed"] for s in got["chunks"].values()) == 3
