"""Nuggets threshold selection: early decision (default) vs the full computation (selection.exact_scores=true).

Usage: python benchmarks/bench_nuggets_early.py --model tiny:llama --candidates 300 --anchor-method file \
           --anchors 100 --threshold 0.85 --threads 1 --reps 3 [--anchor-batch-sizes 32,8]
With several ``--anchor-batch-sizes``, both paths run at each size (all interleaved, the order rotating
every repetition) and every ratio is against the full computation at the first size.
Both paths run the whole method (:meth:`NuggetsSelector.rank`: model load, zero-shot pass, one-shot pass,
the rule) on the same rows in one process, interleaved (the order alternates every repetition), each with
its scores recomputed: the one-shot and zero-shot store entries are deleted before every run; k-means anchor
embeddings are computed once in a warm-up and shared (the same cost for both paths). Prints the seconds of
every run, the median of per-rep ratios, the anchor passes skipped and whether the selected rows (and their
order) are identical in every repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny:llama")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "instruct", "llamafactory_alpaca_en_demo.json"))
    ap.add_argument("--candidates", type=int, default=300, help="pool rows (the first of the data file)")
    ap.add_argument("--anchor-method", default="file", choices=["file", "kmeans"])
    ap.add_argument("--anchors", type=int, default=100, help="file: the last rows of the data file; kmeans: k")
    ap.add_argument("--threshold", type=float, default=0.85)
    ap.add_argument("--mode", default="faithful", choices=["faithful", "clean"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--anchor-batch-size", type=int, default=32)
    ap.add_argument("--anchor-batch-sizes", default="", help="comma-separated; overrides --anchor-batch-size")
    ap.add_argument("--cache-root", default="/work/main/.cache")
    args = ap.parse_args()

    import torch

    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.models.resolve import resolve_model
    from deita.selection.base import SELECTORS, SelectionContext

    torch.set_num_threads(args.threads)
    data = json.load(open(args.data))
    rows = [{"instruction": d["instruction"], "input": d["input"], "output": d["output"]}
            for d in data[: args.candidates]]
    work = Path(tempfile.mkdtemp(prefix="bench_nuggets_early_"))
    anchor_file = work / "anchors.json"
    anchor_file.write_text(json.dumps(data[-args.anchors:]))
    path = resolve_model(args.model, args.cache_root)
    nuggets = SELECTORS.get("nuggets")
    cache = ContentCache(work / "cache")

    sizes = [int(x) for x in args.anchor_batch_sizes.split(",") if x] or [args.anchor_batch_size]

    def run(exact: bool, size: int = sizes[0]):
        for kind in ("nuggets_one_shot", "nuggets_zero_shot"):
            shutil.rmtree(work / "cache" / kind, ignore_errors=True)
        cfg = nuggets.config_class(model="bench", mode=args.mode, threshold=args.threshold, exact_scores=exact,
                                   anchor_batch_size=size)
        cfg.anchors.method, cfg.anchors.k, cfg.anchors.path = args.anchor_method, args.anchors, str(anchor_file)
        ctx = SelectionContext(cache=cache, dist=DistInfo(), data_fingerprint="bench", model_resolver=lambda ref: path)
        t = time.perf_counter()
        res = nuggets(cfg).rank(rows, ctx, None)
        return res, time.perf_counter() - t

    run(False)  # warm-up: lazy imports, allocator, k-means anchor embeddings (kept for every later run)
    tag = (lambda s: f" @ anchor_batch_size {s}") if len(sizes) > 1 else (lambda s: "")
    paths = [(f"{label}{tag(size)}", exact, size) for size in sizes
             for label, exact in (("full (exact_scores=true)", True), ("early decision", False))]
    times = {name: [] for name, _, _ in paths}
    reports = {}
    same, full_gs = True, None
    for rep in range(args.reps):
        out = {}
        for name, exact, size in paths[rep % len(paths):] + paths[: rep % len(paths)]:  # rotate every rep
            out[name], t = run(exact, size)
            times[name].append(t)
        full = out[paths[0][0]]
        full_gs = np.asarray(full.table["golden_score"])
        for name, exact, _ in paths[1:]:
            res = out[name]
            same &= full.ranking == res.ranking
            gs, ok = np.asarray(res.table["golden_score"]), np.asarray(res.table["golden_exact"])
            same &= bool(np.array_equal(gs[ok], full_gs[ok]))
            if not exact:
                reports[name] = res.report
    print(f"model={args.model} mode={args.mode} candidates={len(rows)} anchors={args.anchor_method} "
          f"({full.report['anchors']}) threshold={args.threshold} threads={torch.get_num_threads()} reps={args.reps} "
          f"anchor_batch_size={','.join(map(str, sizes))}")
    print(f"golden scores (full): median {np.median(full_gs):.2f}, > threshold: {int((full_gs > args.threshold).sum())}")
    print("seconds per rep: " + "; ".join(f"{name} {[round(x, 1) for x in ts]}" for name, ts in times.items()))
    base = paths[0][0]
    print(f"| path | seconds (median) | speed vs {base} (ratio of medians) | median of per-rep ratios |")
    print("|---|---|---|---|")
    for name, _, _ in paths:
        ratio = np.array(times[base]) / np.array(times[name])
        print(f"| {name} | {np.median(times[name]):.1f} | {np.median(times[base]) / np.median(times[name]):.2f}x | "
              f"{float(np.median(ratio)):.2f}x |")
    for name, report in reports.items():
        print(f"{name}: anchor passes skipped {report['anchor_passes_skipped']} of {report['anchor_passes']} "
              f"({100 * report['anchor_passes_skipped_fraction']:.1f}%); exact golden scores "
              f"{report['exact_golden_scores']} of {len(rows)}; selected rows {report['accepted_by_rule']}")
    print(f"identical selected rows and order (and equal exact scores) in every rep: {same}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
