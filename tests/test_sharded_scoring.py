"""Scoring and embedding sharded over 2 real processes (gloo) against the 1-process result.

Each process batches its own shard by length, so a row may meet other batch companions than at world size
1 and its values move by float rounding. The test states the tolerance (1e-5; measured 3e-8 here) and
proves that batch composition is the only difference: the 2-process values equal, bitwise, world size 1
run on each shard alone (at the workers' one CPU thread; another thread count also rounds differently).
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

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from deita.distributed import init_distributed, shutdown
    from deita.selection.scorers.pool import score_pool
    from deita.selection.embedders.pool import embed_pool

    rows_path, model, out_dir = sys.argv[1:4]
    info = init_distributed()
    assert info.world_size == 2, f"expected 2 processes, got world size {info.world_size}"
    rows = json.load(open(rows_path))
    cols = {}
    for kind in ("complexity", "quality"):
        cols.update(score_pool(rows, kind, model, dist_info=info, max_length=128, max_tokens_per_batch=600))
    emb = embed_pool(rows, "clm_last", model, dist_info=info, max_length=128, batch_size=4)
    if info.rank == 0:
        json.dump({"cols": cols, "world_size": info.world_size}, open(out_dir + "/scores.json", "w"))
        np.save(out_dir + "/emb.npy", emb)
    shutdown()
    """
)


def _rows(n=30):
    rows = []
    for i in range(n):
        q = "explain the data " * (1 + i % 7) + f"number {i}"
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": "the answer is " * (1 + i % 5)}]
        if i % 6 == 0:
            msgs.append({"role": "user", "content": "and a follow up question"})
        rows.append({"id": f"r{i}", "messages": msgs})
    return rows


def test_two_process_scores_and_embeddings_match_one_process_within_rounding(tmp_path, tiny_llama):
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        pytest.skip("accelerate CLI not found")
    import torch

    from deita.distributed import DistInfo, shard_bounds
    from deita.selection.embedders.pool import embed_pool
    from deita.selection.scorers.pool import score_pool

    rows = _rows()
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "run.py").write_text(SCRIPT)
    port = free_port()  # parallel sessions may hold the default 29500
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(tmp_path / "run.py"),
           str(tmp_path / "rows.json"), str(tiny_llama), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads((tmp_path / "scores.json").read_text())
    assert got["world_size"] == 2
    emb = np.load(tmp_path / "emb.npy")
    shards = [rows[slice(*shard_bounds(len(rows), rank, 2))] for rank in range(2)]
    one = DistInfo()

    def score(part, kind):
        return score_pool(part, kind, str(tiny_llama), dist_info=one, max_length=128, max_tokens_per_batch=600)

    def embed(part):
        return embed_pool(part, "clm_last", str(tiny_llama), dist_info=one, max_length=128, batch_size=4)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker (OMP_NUM_THREADS=1)
    try:
        for kind in ("complexity", "quality"):
            # 1. the only difference is batch composition: each shard alone at world size 1, bitwise
            per_shard = [score(part, kind) for part in shards]
            assert {col: got["cols"][col] for col in per_shard[0]} == {col: per_shard[0][col] + per_shard[1][col]
                                                                       for col in per_shard[0]}
            # 2. the stated tolerance against the whole pool at world size 1
            ref = score(rows, kind)
            assert got["cols"][f"{kind}_truncated"] == ref[f"{kind}_truncated"]
            assert [len(t) for t in got["cols"][f"{kind}_turns"]] == [len(t) for t in ref[f"{kind}_turns"]]
            flat_got = np.concatenate([np.asarray(t) for t in got["cols"][f"{kind}_turns"]])
            flat_ref = np.concatenate([np.asarray(t) for t in ref[f"{kind}_turns"]])
            assert np.abs(flat_got - flat_ref).max() <= 1e-5
        assert np.array_equal(emb, np.concatenate([embed(part) for part in shards]))
        ref_emb = embed(rows)
    finally:
        torch.set_num_threads(threads)
    assert emb.shape == ref_emb.shape == (30, 64) and np.abs(emb - ref_emb).max() <= 1e-5
