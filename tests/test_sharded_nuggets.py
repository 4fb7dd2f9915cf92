"""Golden scores and IFD are bitwise identical for world size 1 and 2 (a real 2-process accelerate launch on CPU).

The pool passes run in chunks of 3 rows (9 rows: 3 chunks per pass), so at world size 2 both ranks compute
chunks, and every value is compared exactly (``deita/distributed.py``: chunks are batched on their own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import free_port

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from deita.cache import ContentCache
    from deita.distributed import init_distributed, shutdown
    from deita.selection.base import SELECTORS, SelectionContext
    from deita.selection.stage import rank_and_cut


    def compute(model_dir, cache_dir, dist):
        words = ["data", "code", "story", "poem", "email", "sort", "number", "text", "answer"]
        rows = [{"id": str(i), "messages": [{"role": "user", "content": f"Write a {w} list for {i}"},
                                            {"role": "assistant", "content": f"The {w} list is one two {i * 7}"}]}
                for i, w in enumerate(words)]
        ctx = SelectionContext(cache=ContentCache(cache_dir, is_writer=dist.is_main, chunk_rows=3), dist=dist,
                               data_fingerprint="fp", model_resolver=lambda ref: model_dir)
        nug = SELECTORS.get("nuggets")
        cfg = nug.config_class(model="tiny", mode="clean", anchor_max_length=48, threshold=None, top_k=4,
                               anchor_batch_size=2, candidate_batch_size=2)
        cfg.anchors.method = "random"
        cfg.anchors.k = 3
        res, order = rank_and_cut(nug(cfg), rows, ctx)
        sup = SELECTORS.get("superfilter")
        sup_cfg = sup.config_class(model="tiny", sample_rate=0.5, batch_size=3, max_ifd=100.0)  # rank every row
        res2, order2 = rank_and_cut(sup(sup_cfg), rows, ctx)
        return {"world": dist.world_size, "gs": res.table["golden_score"], "order": order,
                "ifd": res2.table["ifd"], "order2": order2}


    if __name__ == "__main__":
        import torch
        torch.set_num_threads(1)
        model_dir, out, cache_dir = sys.argv[1], sys.argv[2], sys.argv[3]
        dist = init_distributed()
        result = compute(model_dir, cache_dir, dist)
        if dist.is_main:
            json.dump(result, open(out, "w"))
        shutdown()
    """
)


def _run(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_world_size_1_and_2_identical(tiny_llama, tmp_path):
    import torch

    from deita.distributed import DistInfo

    script = tmp_path / "shard.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    two = tmp_path / "two.json"
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(free_port()), str(script), str(tiny_llama), str(two), str(tmp_path / "c2")], env)
    # World size 1 in this process, at one torch thread as the ranks: the same code, one process fewer to start.
    namespace = {"__name__": "shard"}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = json.loads(json.dumps(namespace["compute"](str(tiny_llama), str(tmp_path / "c1"), DistInfo())))
    finally:
        torch.set_num_threads(threads)
    b = json.loads(two.read_text())
    assert a["world"] == 1 and b["world"] == 2
    assert a["gs"] == b["gs"] and a["order"] == b["order"] and len(a["order"]) == 4
    assert json.dumps(a["ifd"]) == json.dumps(b["ifd"]) and len(a["ifd"]) == 9  # bitwise (NaN included)
    assert a["order2"] == b["order2"] and len(a["order2"]) == 4  # superfilter keeps int(9 * 0.5)
