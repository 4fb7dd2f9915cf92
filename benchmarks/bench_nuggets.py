"""Nuggets golden score: naive oracle vs the reference loop vs our fast path, same inputs, one run.

Usage: python benchmarks/bench_nuggets.py --model packaged:smollm2 --candidates 12 --anchors 10 \
           --oracle-candidates 3 [--mode faithful] [--threads 2]
Prints a markdown table (candidate x anchor pairs per second, ratios) and asserts identical golden scores.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="packaged:smollm2")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                   "instruct", "llamafactory_alpaca_en_demo.json"))
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--anchors", type=int, default=10)
    ap.add_argument("--oracle-candidates", type=int, default=3, help="oracle runs on the first K candidates")
    ap.add_argument("--mode", default="faithful", choices=["faithful", "clean"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--cache-root", default="/work/main/.cache")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.models.resolve import resolve_model
    from deita.selection.nuggets import oracle, scoring
    from deita.selection.nuggets.golden import golden_scores
    from deita.selection.nuggets.prompts import nuggets_texts
    from deita.selection.nuggets.tokens import add_reference_pad, encode_anchor, encode_demo, zero_shot_prefix

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model(args.model, args.cache_root)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if args.mode == "faithful":
        add_reference_pad(model, tok)
    data = json.load(open(args.data))
    texts = [nuggets_texts(d["instruction"], d["input"], d["output"]) for d in data]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(texts), size=args.candidates + args.anchors, replace=False)
    cand = [texts[i] for i in pick[: args.candidates]]
    anch = [texts[i] for i in pick[args.candidates :]]
    max_len = 200 if args.mode == "faithful" else None
    anchors = [encode_anchor(tok, q, f, max_len) for q, f in anch]
    demos = [encode_demo(tok, f, args.mode) for _, f in cand]
    zp = zero_shot_prefix(tok, args.mode)
    pad = scoring.pad_id_of(tok)
    n, m, k = len(demos), len(anchors), min(args.oracle_candidates, len(demos))

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    (z_o, o_o), t_o = timed(lambda: (oracle.oracle_sums(model, [zp], anchors)[0], oracle.oracle_sums(model, demos[:k], anchors)))
    (z_r, o_r), t_r = timed(lambda: oracle.reference_loop_sums(model, demos, anchors, zp, pad_to=max_len or 0, pad_id=pad))
    (z_f, o_f), t_f = timed(lambda: (scoring.zero_shot_sums(model, anchors, zp, pad_id=pad),
                                     scoring.one_shot_sums(model, demos, anchors, pad_id=pad)))
    gs_o, gs_r, gs_f = golden_scores(z_o, o_o), golden_scores(z_r, o_r), golden_scores(z_f, o_f)
    same_rf = bool(np.array_equal(gs_r, gs_f))
    same_of = bool(np.array_equal(gs_o, gs_f[:k]))
    max_diff = float(max(np.abs(o_r - o_f).max(), np.abs(z_r - z_f).max(), np.abs(o_o - o_f[:k]).max()))
    lens = [len(a.body) for a in anchors]
    print(f"model={args.model} mode={args.mode} candidates={n} anchors={m} (oracle on {k}) "
          f"anchor tokens mean={np.mean(lens):.0f} max={max(lens)} demo tokens mean={np.mean([len(d) for d in demos]):.0f} "
          f"threads={torch.get_num_threads()}")
    print("| path | pairs | seconds | pairs/s | speed vs reference loop |")
    print("|---|---|---|---|---|")
    for name, pairs, t in (("naive oracle", k * m, t_o), ("reference loop (batch 8, pad 200, fp32)", n * m, t_r),
                           ("ours (fast path)", n * m, t_f)):
        print(f"| {name} | {pairs} | {t:.1f} | {pairs / t:.2f} | {(pairs / t) / (n * m / t_r):.2f}x |")
    print(f"identical golden scores: ours==reference loop {same_rf}, ours==oracle {same_of}; "
          f"max |per-anchor sum diff| = {max_diff:.2e}; GS mean {gs_f.mean():.3f}")
    assert same_rf and same_of, "golden scores differ"


if __name__ == "__main__":
    main()
