"""Nuggets golden score: naive oracle vs the reference loop vs our fast path, same inputs, one process.

Usage: python benchmarks/bench_nuggets.py --model tiny:llama --candidates 40 --anchors 20 \
           --oracle-candidates 40 --threads 1 --reps 5
The reference loop and ours run ``--reps`` times, interleaved (the order rotates every repetition), so
machine load hits both alike; medians are reported. The oracle (slowest) runs once on the first
``--oracle-candidates`` (0: skip it). ``--accumulate both`` times our float32 (faithful) and float64
(clean) sums side by side; ``--head-rows N`` times only the output-head step where they differ. Prints a markdown table (pairs per second, ratios), the tokens each
path pushes through the model, whether the golden scores are identical in every repetition, and the
near-tie report: (candidate, anchor) win/loss outcomes that differ between ours and the reference loop,
candidates whose golden score differs, the largest sum difference and the smallest reference margin.
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
    ap.add_argument("--accumulate", default=None, choices=["float32", "float64", "both"],
                    help="our sums: float32 (faithful mode's, the reference's order) or float64 (clean mode's); "
                         "both: time both; default: the mode's")
    ap.add_argument("--head-rows", type=int, default=0,
                    help="only time the output-head step of both accumulations on this many scored rows, then exit")
    ap.add_argument("--ref-accumulate", default="float32", choices=["float32", "float64"],
                    help="the reference loop's sum: float32 (as the reference) or float64 (to measure accumulation)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.models.loading import pad_id_of
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
    n_input = sum(bool(data[i]["input"].strip()) for i in pick)
    cand = [texts[i] for i in pick[: args.candidates]]
    anch = [texts[i] for i in pick[args.candidates :]]
    max_len = 200 if args.mode == "faithful" else None
    anchors = [encode_anchor(tok, q, f, max_len) for q, f in anch]
    demos = [encode_demo(tok, f, args.mode) for _, f in cand]
    zp = zero_shot_prefix(tok, args.mode)
    pad = pad_id_of(tok)
    n, m, k = len(demos), len(anchors), min(args.oracle_candidates, len(demos))

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    def ours(acc):
        return lambda: (scoring.zero_shot_sums(model, anchors, zp, pad_id=pad, accumulate=acc),
                        scoring.one_shot_sums(model, demos, anchors, pad_id=pad, anchor_batch_size=args.anchor_batch_size,
                                              candidate_batch_size=args.candidate_batch_size, accumulate=acc))

    def reference():
        return oracle.reference_loop_sums(model, demos, anchors, zp, pad_to=max_len or 0, pad_id=pad,
                                          accumulate=args.ref_accumulate)

    if args.head_rows:
        return time_head(model, args.head_rows, args.reps)
    from deita.selection.nuggets.run import accumulation

    accs = ["float64", "float32"] if args.accumulate == "both" else [args.accumulate or accumulation(args)]
    paths = [("reference", reference)] + [(f"ours {a}", ours(a)) for a in accs]
    ours(accs[0])()  # warm-up (allocator, lazy imports), not timed
    (z_o, o_o), t_o = timed(lambda: (oracle.oracle_sums(model, [zp], anchors)[0],
                                     oracle.oracle_sums(model, demos[:k], anchors)))
    gs_o = golden_scores(z_o, o_o) if k else np.zeros(0)
    times = {name: [] for name, _ in paths}
    sums = {}
    same_rf = {name: True for name, _ in paths[1:]}
    same_of, max_diff = True, 0.0
    for rep in range(args.reps):
        for name, fn in paths[rep % len(paths):] + paths[: rep % len(paths)]:  # rotate the order every rep
            sums[name], t = timed(fn)
            times[name].append(t)
        z_r, o_r = sums["reference"]
        for name, _ in paths[1:]:
            z_f, o_f = sums[name]
            same_rf[name] &= bool(np.array_equal(golden_scores(z_r, o_r), golden_scores(z_f, o_f)))
            same_of &= bool(np.array_equal(gs_o, golden_scores(z_f, o_f)[:k]))
            max_diff = max(max_diff, float(max(np.abs(o_r - o_f).max(), np.abs(z_r - z_f).max(),
                                               np.abs(o_o - o_f[:k]).max(initial=0.0), np.abs(z_o - z_f).max())))
    med = {name: float(np.median(ts)) for name, ts in times.items()}
    lens = [len(a.body) for a in anchors]
    w = work(anchors, n, 8, max_len or 0, args.anchor_batch_size)
    print(f"model={args.model} vocab={model.get_output_embeddings().weight.shape[0]} mode={args.mode} candidates={n} "
          f"anchors={m} (oracle on {k}) anchor tokens mean={np.mean(lens):.0f} max={max(lens)} "
          f"scored/anchor={np.mean([a.n_scored for a in anchors]):.0f} demo tokens mean={np.mean([len(d) for d in demos]):.0f} "
          f"rows with an input: {n_input} of {n + m} threads={torch.get_num_threads()} reps={args.reps}")
    print("seconds per rep: " + "; ".join(f"{name} {[round(x, 1) for x in ts]}" for name, ts in times.items()))
    print("| path | pairs | seconds (median) | pairs/s | speed vs reference loop |")
    print("|---|---|---|---|---|")
    rows = [("naive oracle (1 run)", k * m, t_o), ("reference loop (batch 8, pad 200, fp32)", n * m, med["reference"])]
    rows += [(f"{name} (fast path)", n * m, med[name]) for name, _ in paths[1:]]
    for name, pairs, t in rows:
        if pairs:
            print(f"| {name} | {pairs} | {t:.1f} | {pairs / t:.2f} | {(pairs / t) / (n * m / med['reference']):.2f}x |")
    ref_t = np.array(times["reference"])
    for name, _ in paths[1:]:
        print(f"median of per-rep ratios (reference / {name}): {float(np.median(ref_t / np.array(times[name]))):.2f}x")
    if len(accs) == 2:
        ratio = np.array(times["ours float32"]) / np.array(times["ours float64"])
        print(f"median of per-rep ratios (ours float32 / ours float64): {float(np.median(ratio)):.3f}")
    print(f"work: anchor tokens through the decoder {w['ref_body']} (reference) vs {w['ours_body']} (ours, "
          f"{w['ref_body'] / max(w['ours_body'], 1):.2f}x fewer); output-head rows {w['ref_head']} vs {w['ours_head']} "
          f"({w['ref_head'] / max(w['ours_head'], 1):.2f}x fewer); shared anchor prefix {w['shared_prefix']} tokens")
    print(f"identical golden scores in every rep: ours==reference loop {same_rf}, ours==oracle {same_of}; "
          f"max |per-anchor sum diff| = {max_diff:.2e}")
    scored = [a.n_scored > 0 for a in anchors]
    for name, _ in paths[1:]:
        t = near_ties(z_r, o_r, *sums[name], scored)
        print(f"near ties (last rep, {name} vs reference loop summed in {args.ref_accumulate}): "
              f"{t['flipped']} of {t['pairs']} scored (candidate, anchor) outcomes flipped; "
              f"{t['changed_gs']} of {n} golden scores changed; max |sum diff| {t['max_sum_diff']:.2e}, "
              f"max |margin diff| {t['max_margin_diff']:.2e} (median {t['median_margin_diff']:.1e}); smallest reference margin {t['min_margin']:.2e}; "
              f"{t['closer_than_diff']} pairs have a margin <= the max margin diff")


def time_head(model, n_rows: int, reps: int) -> None:
    """The only step where the two accumulations differ: output head, log-probs and per-row sums, on
    ``n_rows`` hidden states (32 rows of 128 scored tokens per batch, as a full anchor batch), interleaved."""
    import torch

    from deita.models.forward import head_logprobs
    from deita.selection.nuggets import scoring

    hidden_size = model.get_output_embeddings().weight.shape[1]
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_rows, hidden_size, generator=g)
    targets = torch.randint(0, vocab, (n_rows,), generator=g)
    counts = [128] * (n_rows // 128)
    rows = torch.arange(len(counts)).repeat_interleave(128)

    def f64():
        sums = torch.zeros(len(counts), dtype=torch.float64)
        return sums.index_add_(0, rows, head_logprobs(model, hidden, targets))

    def f32():
        return scoring.reference_row_sums(model, hidden, targets, counts)

    times = {"float64": [], "float32": []}
    with torch.inference_mode():
        for rep in range(reps):
            for name, fn in ([("float64", f64), ("float32", f32)] if rep % 2 == 0 else [("float32", f32), ("float64", f64)]):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    ratio = float(np.median(np.array(times["float32"]) / np.array(times["float64"])))
    print(f"head step, {n_rows} rows, vocab {vocab}, threads {torch.get_num_threads()}: "
          + "; ".join(f"{k} {[round(x, 2) for x in v]} s" for k, v in times.items())
          + f"; median per-rep ratio float32 / float64 {ratio:.3f}")


def near_ties(z_r, o_r, z_f, o_f, scored) -> dict:
    """How far our sums are from the reference's, against how close the reference's decisions are.

    ``scored`` flags anchors with answer tokens (the others score 0 in both passes and always lose).
    The margin of a pair is ``one - zero``; an outcome flips when the two paths' margins differ in sign.
    """
    from deita.selection.nuggets.golden import golden_scores, win_matrix

    cols = np.flatnonzero(scored)
    m_r, m_f = (o_r - z_r[None])[:, cols], (o_f - z_f[None])[:, cols]
    flipped = win_matrix(z_r, o_r)[:, cols] != win_matrix(z_f, o_f)[:, cols]
    diff = float(np.abs(m_r - m_f).max(initial=0.0))
    return {"pairs": int(m_r.size), "flipped": int(flipped.sum()),
            "changed_gs": int((golden_scores(z_r, o_r) != golden_scores(z_f, o_f)).sum()),
            "max_sum_diff": float(max(np.abs(o_r - o_f).max(), np.abs(z_r - z_f).max())),
            "max_margin_diff": diff, "median_margin_diff": float(np.median(np.abs(m_r - m_f))) if m_r.size else 0.0,
            "min_margin": float(np.abs(m_r).min(initial=np.inf)),
            "closer_than_diff": int((np.abs(m_r) <= diff).sum())}


if __name__ == "__main__":
    main()
