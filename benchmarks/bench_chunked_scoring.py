"""Benchmark: scoring a pool through the chunked store (deita/store.py) against the single-entry path it
replaced, plus what a resume costs.

* before: the previous ``score_pool`` at world size 1: the whole pool batched by length as one shard, the
  table written once at the end (``ContentCache.table``);
* after: ``score_pool`` with the chunked store: chunks of ``--chunk-rows`` rows, each batched on its own
  and written as it finishes, then the index, then the table read back from the chunks.

Both load the scorer, score the same rows at the same ``max_tokens_per_batch`` and thread count, in one
process, interleaved (before, after, before, after, ...). Scores differ only by batch companions (float
rounding; the max difference is reported). Also reported: padded tokens / real tokens of both batch
plans on this pool, and the resume cost: a re-run with every chunk on disk but no index (the work lost
by a kill just before the end is zero, so this is the pure overhead), and a re-run with half the chunks
gone (byte-identical to the uninterrupted result, checked).

    python benchmarks/bench_chunked_scoring.py --model packaged:smollm2 --rows 600 --chunk-rows 256 --reps 2
    # GPU (random SmolLM2-shaped weights; speed depends on shape): --arch .gpu/smollm2_arch --model-dir /tmp/smol
    #   --data .gpu/shared/data/instruct/llamafactory_alpaca_en_demo.json --device cuda --rows 20000
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._markdown import command_line, emit  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "instruct" / "llamafactory_alpaca_en_demo.json"


def pool_rows(data: Path, n: int) -> list[dict]:
    """``n`` canonical rows from an Alpaca file, cycled if it has fewer; a cycled copy gets a suffix, so every
    row is distinct (the scorer scores a repeated prompt once)."""
    raw = json.loads(Path(data).read_text())
    rows = []
    for i in range(n):
        r = raw[i % len(raw)]
        q = r["instruction"] + ("\n" + r["input"] if r.get("input") else "") + (f" ({i // len(raw)})" if i >= len(raw) else "")
        rows.append({"id": f"r{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}]})
    return rows


def padding(path: str, kind: str, rows: list[dict], max_length: int, tokens: int, chunk_rows: int) -> dict:
    """Padded / real tokens of the whole-pool batch plan and of the per-chunk plan."""
    from transformers import AutoTokenizer

    from deita.models.batching import length_sorted_batches
    from deita.selection.scorers.turns import conversation_turns
    from deita.selection.scorers.truncation import encode_scorer_prompt

    tok = AutoTokenizer.from_pretrained(path)
    lengths, owner = [], []
    for r, row in enumerate(rows):
        for q, a in conversation_turns(row["messages"], row["id"]):
            lengths.append(len(encode_scorer_prompt(tok, kind, q, a, max_length)[0]))
            owner.append(r)

    def padded(idx: list[int]) -> int:
        return sum(len(b) * max(lengths[idx[i]] for i in b) for b in length_sorted_batches([lengths[i] for i in idx], tokens))

    real = sum(lengths)
    whole = padded(list(range(len(lengths))))
    chunked = sum(padded([i for i, r in enumerate(owner) if s <= r < s + chunk_rows]) for s in range(0, len(rows), chunk_rows))
    return {"real": real, "whole": whole / real, "chunked": chunked / real}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="packaged:smollm2", help="model ref (ignored with --arch)")
    ap.add_argument("--arch", default=None, help="folder with a config + tokenizer: seeded random weights")
    ap.add_argument("--model-dir", default="/tmp/bench_chunked_model", help="where --arch's model is saved")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--rows", type=int, default=600)
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--kind", default="quality", choices=["complexity", "quality"])
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=16384, help="max_tokens_per_batch (CPU caps it at 512)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "chunked_scoring.md"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.models.batching import tokens_per_batch
    from deita.models.resolve import resolve_model
    from deita.selection.scorers.deita_scorer import DeitaScorer, score_rows
    from deita.selection.scorers.pool import score_cache_key, score_pool

    if args.arch:
        from benchmarks.bench_gpu import random_model_dir

        path = str(random_model_dir(Path(args.arch), Path(args.model_dir)))
    else:
        path = resolve_model(args.model, REPO / ".cache")
    rows = pool_rows(Path(args.data), args.rows)
    opts = dict(max_length=args.max_length, max_tokens_per_batch=args.max_tokens, dtype=args.dtype, device=args.device)
    key = score_cache_key(args.kind, "bench", path, max_length=args.max_length, dtype=args.dtype, on_error="raise")
    work = Path(tempfile.mkdtemp(prefix="bench_chunked_"))

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def before() -> dict:
        cache = ContentCache(work / f"before-{time.monotonic_ns()}")

        def compute():
            scorer = DeitaScorer(args.kind, path, show_progress=False, **opts)
            return score_rows(rows, scorer, "raise")

        return cache.table(f"deita_{args.kind}_scores", key, compute)

    def after(root: Path | None = None) -> dict:
        cache = ContentCache(root or work / f"after-{time.monotonic_ns()}", chunk_rows=args.chunk_rows)
        return score_pool(rows, args.kind, path, cache=cache, data_fingerprint="bench", dist_info=DistInfo(),
                          on_error="raise", **opts)

    def timed(fn, *a):
        sync()
        t0 = time.perf_counter()
        out = fn(*a)
        sync()
        return time.perf_counter() - t0, out

    after(work / "warmup")  # first load pays the file cache and kernel warm-up for both paths
    times: dict[str, list[float]] = {"before": [], "after": []}
    outs = {}
    for _ in range(args.reps):
        for name, fn in (("before", before), ("after", after)):
            t, outs[name] = timed(fn)
            times[name].append(t)
    flat = {n: np.concatenate([np.asarray(t, dtype=np.float64) for t in o[f"{args.kind}_turns"]]) for n, o in outs.items()}
    diff = float(np.nanmax(np.abs(flat["before"] - flat["after"])))

    # resume: every chunk on disk, index gone; then half the chunks gone
    root = work / "resume"
    t_full, full = timed(after, root)
    entry = next((root / f"deita_{args.kind}_scores").iterdir())
    (entry / "index.json").unlink()
    t_all_on_disk, again = timed(after, root)
    chunks = sorted(entry.glob("rows-*"))
    (entry / "index.json").unlink()
    for c in chunks[::2]:
        c.unlink()
    t_half, half = timed(after, root)
    identical = json.dumps(full) == json.dumps(again) == json.dumps(half)

    pad = padding(path, args.kind, rows, args.max_length, tokens_per_batch(args.max_tokens, args.device), args.chunk_rows)
    med = {n: float(np.median(v)) for n, v in times.items()}
    lines = [
        f"# Chunked scoring store vs single entry ({args.kind} scorer)",
        "",
        f"`{command_line(__file__, argv)}`",
        "",
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {args.device}, {args.dtype}, model `{Path(path).name}`, {len(rows)} rows, "
        f"{len(chunks)} chunks of {args.chunk_rows}, {tokens_per_batch(args.max_tokens, args.device)} padded tokens per batch, "
        f"{args.reps} interleaved reps (median).",
        "",
        "| path | wall s (each rep) | rows/s | padded / real tokens |",
        "|---|---|---|---|",
        f"| before: whole pool one batch plan, one write | {', '.join(f'{t:.2f}' for t in times['before'])} | "
        f"{len(rows) / med['before']:.1f} | {pad['whole']:.3f} |",
        f"| after: chunks of {args.chunk_rows}, each written | {', '.join(f'{t:.2f}' for t in times['after'])} | "
        f"{len(rows) / med['after']:.1f} | {pad['chunked']:.3f} |",
        "",
        f"after / before wall time: **{med['after'] / med['before']:.3f}**; max |score difference| (batch companions "
        f"only): {diff:.2e}.",
        "",
        "| resume | wall s | vs uninterrupted |",
        "|---|---|---|",
        f"| uninterrupted run | {t_full:.2f} | 1.000 |",
        f"| every chunk on disk, no index (pure resume overhead) | {t_all_on_disk:.2f} | {t_all_on_disk / t_full:.3f} |",
        f"| half the chunks on disk | {t_half:.2f} | {t_half / t_full:.3f} |",
        "",
        f"Resumed results byte-identical to the uninterrupted run: **{identical}**.",
        "",
    ]
    emit("\n".join(lines), args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
