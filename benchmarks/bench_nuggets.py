"""Nuggets golden score: naive oracle vs the reference loop vs our fast path, same inputs, one process.

Usage: python benchmarks/bench_nuggets.py --model tiny:llama --candidates 40 --anchors 20 \
           --oracle-candidates 40 --threads 1 --reps 5
The reference loop and ours run ``--reps`` times, interleaved (the order alternates every repetition), so
machine load hits both alike; medians are reported. The oracle (slowest) runs once on the first
``--oracle-candidates``. Prints a markdown table (pairs per second, ratios), the tokens each path pushes
through the model, and asserts identical golden scores in every repetition.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np


def work(anchors, n_cands: int, batch: int, pad_to: int, abs_: int) -> dict:
    """Anchor tokens through the decoder and rows through the output head, reference loop vs ours."""
    from deita.selection.nuggets.plan import length_batches, plan_anchors
    from deita.selection.nuggets.scoring import FORWARD_OVERHEAD_TOKENS

    m = len(anchors)
    width = max([pad_to] + [len(a.body) for a in anchors])
    ref_body = n_cands * m * width  # every row padded to 200, head + log_softmax at all of them
    plan = plan_anchors(anchors)
    lens = [len(x) for x in plan.own]
    ours_body = n_cands * (sum(len(b) * max(lens[i] for i in b)
                               for b in length_batches(lens, abs_, FORWARD_OVERHEAD_TOKENS)) + len(plan.prefix))
    ours_head = n_cands * sum(len(t) for t in plan.targets)
    return {"ref_body": ref_body, "ref_head": ref_body, "ours_body": ours_body, "ours_head": ours_head,
            "ref_forwards": n_cands * (1 + math.ceil(m / batch)), "shared_prefix": len(plan.prefix)}


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
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions of reference loop and ours")
    ap.add_argument("--anchor-batch-size", type=int, default=32)
    ap.add_argument("--candidate-batch-size", type=int, default=1)
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
    torch.set_grad_enabled(False)
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

    def ours():
        return (scoring.zero_shot_sums(model, anchors, zp, pad_id=pad),
                scoring.one_shot_sums(model, demos, anchors, pad_id=pad, anchor_batch_size=args.anchor_batch_size,
                                      candidate_batch_size=args.candidate_batch_size))

    def reference():
        return oracle.reference_loop_sums(model, demos, anchors, zp, pad_to=max_len or 0, pad_id=pad)

    ours()  # warm-up (allocator, lazy imports), not timed
    (z_o, o_o), t_o = timed(lambda: (oracle.oracle_sums(model, [zp], anchors)[0],
                                     oracle.oracle_sums(model, demos[:k], anchors)))
    gs_o = golden_scores(z_o, o_o)
    times = {"reference": [], "ours": []}
    same_rf, same_of, max_diff = True, True, 0.0
    for rep in range(args.reps):
        order = [("reference", reference), ("ours", ours)]
        for name, fn in (order if rep % 2 == 0 else order[::-1]):
            (z, o), t = timed(fn)
            times[name].append(t)
            if name == "reference":
                z_r, o_r = z, o
            else:
                z_f, o_f = z, o
        gs_r, gs_f = golden_scores(z_r, o_r), golden_scores(z_f, o_f)
        same_rf &= bool(np.array_equal(gs_r, gs_f))
        same_of &= bool(np.array_equal(gs_o, gs_f[:k]))
        max_diff = max(max_diff, float(max(np.abs(o_r - o_f).max(), np.abs(z_r - z_f).max(),
                                           np.abs(o_o - o_f[:k]).max(), np.abs(z_o - z_f).max())))
    t_r, t_f = float(np.median(times["reference"])), float(np.median(times["ours"]))
    paired = float(np.median(np.array(times["reference"]) / np.array(times["ours"])))
    lens = [len(a.body) for a in anchors]
    w = work(anchors, n, 8, max_len or 0, args.anchor_batch_size)
    print(f"model={args.model} vocab={model.get_output_embeddings().weight.shape[0]} mode={args.mode} candidates={n} "
          f"anchors={m} (oracle on {k}) anchor tokens mean={np.mean(lens):.0f} max={max(lens)} "
          f"scored/anchor={np.mean([a.n_scored for a in anchors]):.0f} demo tokens mean={np.mean([len(d) for d in demos]):.0f} "
          f"threads={torch.get_num_threads()} reps={args.reps}")
    print(f"seconds per rep: reference {[round(x, 1) for x in times['reference']]}, "
          f"ours {[round(x, 1) for x in times['ours']]}")
    print("| path | pairs | seconds (median) | pairs/s | speed vs reference loop |")
    print("|---|---|---|---|---|")
    for name, pairs, t in (("naive oracle (1 run)", k * m, t_o), ("reference loop (batch 8, pad 200, fp32)", n * m, t_r),
                           ("ours (fast path)", n * m, t_f)):
        print(f"| {name} | {pairs} | {t:.1f} | {pairs / t:.2f} | {(pairs / t) / (n * m / t_r):.2f}x |")
    print(f"median of per-rep ratios (reference/ours): {paired:.2f}x")
    print(f"work: anchor tokens through the decoder {w['ref_body']} (reference) vs {w['ours_body']} (ours, "
          f"{w['ref_body'] / max(w['ours_body'], 1):.2f}x fewer); output-head rows {w['ref_head']} vs {w['ours_head']} "
          f"({w['ref_head'] / max(w['ours_head'], 1):.2f}x fewer); shared anchor prefix {w['shared_prefix']} tokens")
    print(f"identical golden scores in every rep: ours==reference loop {same_rf}, ours==oracle {same_of}; "
          f"max |per-anchor sum diff| = {max_diff:.2e}; GS mean (ours, all candidates) {gs_f.mean():.3f}")
    assert same_rf and same_of, "golden scores differ"


if __name__ == "__main__":
    main()
