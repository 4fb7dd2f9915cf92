"""Benchmark: the DEITA scorer (packed decoder over the shared-prefix KV: ``packed=True, prefix_cache=true``)
vs the same scorer through the Hugging Face forward with the prefix cache (``packed=False``, the path before
the packed decoder) vs every prompt whole through the HF forward (``packed=False, prefix_cache=false``, the
path before the prefix cache) vs the reference path (one ``generate`` per prompt), interleaved, at one thread
count; with effective GFLOP/s beside the machine's measured single-thread GEMM rate and the exact ceiling.

The reference path re-implements hkust-nlp/deita ``Scorer.infer_score`` (HF backend) faithfully: per prompt,
``tokenizer.encode(prompt, return_tensors="pt")``, ``model.generate(max_new_tokens=2,
num_return_sequences=1, return_dict_in_generate=True, output_scores=True)``, ``scores[0][0]``, the six
digit logits, softmax, expectation. All paths use the same weights (fp32) and the same prompts; ours and the
HF prefix path run their own copies of the model (ours with fused projection weights, the HF prefix path
switched to the suffix attention), the whole-prompt and reference paths share a copy with the stock SDPA
attention.

Effective GFLOP/s = prompt tokens × 2 × non-embedding parameters / CPU seconds: the work a plain forward
pass over every prompt token would do per second (attention over the context is not counted). A path that
skips work (the shared prefix, the last layer at one token) can exceed the GEMM rate. Exact ceiling of ours
vs the reference: (GEMM rate / reference GFLOP/s) / (1 - prefix share), i.e. every token outside the shared
prefix computed at the GEMM rate, attention and the last layer's savings aside.

    python benchmarks/bench_scorer.py --threads 1 --rows 100 --smollm2-rows 40 --repeats 3 \\
        --out benchmarks/results/scorer.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "instruct" / "llamafactory_alpaca_en_demo.json"
PATHS = ("ours", "prefix", "whole", "reference")
LABELS = {"ours": "ours (packed + prefix)", "prefix": "HF + prefix", "whole": "HF whole", "reference": "reference"}


def alpaca_turns(n: int) -> list[tuple[str, str]]:
    """The first ``n`` Alpaca rows as (instruction, response) turns."""
    raw = json.loads(DATA.read_text())[:n]
    return [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"]) for r in raw]


def reference_scores(tokenizer, model, prompts: list[str], digit_ids: list[int]) -> list[float]:
    """The reference HF path: one `generate` per prompt, softmax over the 6 digit logits of scores[0][0]."""
    template = np.array([1, 2, 3, 4, 5, 6])
    out = []
    for prompt in prompts:
        input_ids = tokenizer.encode(prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(input_ids, max_new_tokens=2, num_return_sequences=1,
                                 return_dict_in_generate=True, output_scores=True)
        logits = gen.scores[0][0].numpy()
        digit = np.array([logits[k] for k in digit_ids])
        e = np.exp(digit - digit.max())
        out.append(float(np.sum(e / e.sum() * template)))
    return out


def non_embedding_params(model) -> int:
    """Parameters outside the input embedding and the output head (the head runs at one position)."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def gemm_gflops(m: int, k: int, n: int, reps: int = 10, inner: int = 10, onednn: bool = False) -> float:
    """Best single-thread fp32 GEMM rate (GFLOP/s) for ``[m, k] @ [k, n]`` through ``torch.matmul`` (MKL's
    sgemm, as ``F.linear`` and the HF forward) or ``onednn`` (oneDNN's linear, as the packed decoder), timed
    in process CPU seconds over ``inner`` products per sample (so other jobs on a shared machine do not
    count); restores the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(m, k), torch.randn(k, n)
        w = b.t().contiguous()
        product = (lambda: torch.ops.mkldnn._linear_pointwise(a, w, None, "none", [], "")) if onednn else (lambda: a @ b)
        product()
        best = float("inf")
        for _ in range(reps):
            t = time.process_time()
            for _ in range(inner):
                product()
            best = min(best, (time.process_time() - t) / inner)
    finally:
        torch.set_num_threads(threads)
    return 2 * m * k * n / best / 1e9


def bench_model(ref: str, n_rows: int, max_tokens: int, repeats: int) -> list[dict]:
    """Time the four paths, interleaved ``repeats`` times, on complexity and quality prompts."""
    from deita.models.resolve import resolve_model
    from deita.selection.scorers import DeitaScorer
    from deita.selection.scorers.prompts import render_prompt

    path = resolve_model(ref, REPO / ".cache")
    turns = alpaca_turns(n_rows)
    results = []
    for kind in ("complexity", "quality"):
        opts = dict(dtype="float32", device="cpu", max_length=2048, max_tokens_per_batch=max_tokens,
                    show_progress=False)
        fast = DeitaScorer(kind, path, **opts)
        assert fast.packed is not None, "the packed decoder does not apply to this model"
        hf_prefix = DeitaScorer(kind, path, packed=False, **opts)
        whole = DeitaScorer(kind, path, packed=False, prefix_cache=False, **opts)
        model, tok = whole.model, whole.tokenizer  # stock attention, as the code before the prefix cache

        prompts = [render_prompt(kind, q, a) for q, a in turns]
        n_tokens = sum(len(tok.encode(p)) for p in prompts)
        run = {"ours": lambda: fast.score_turns(turns).scores, "prefix": lambda: hf_prefix.score_turns(turns).scores,
               "whole": lambda: whole.score_turns(turns).scores,
               "reference": lambda: reference_scores(tok, model, prompts, fast.digit_ids)}
        for scorer in (fast, hf_prefix, whole):
            scorer.score_turns(turns[:4])
        reference_scores(tok, model, prompts[:2], fast.digit_ids)  # warm-ups
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        cpu: dict[str, list[float]] = {p: [] for p in PATHS}
        scores: dict[str, list[float]] = {}
        for r in range(repeats):
            for p in (PATHS if r % 2 == 0 else PATHS[::-1]):  # alternate the order between repeats
                t0, c0 = time.perf_counter(), time.process_time()
                scores[p] = run[p]()
                times[p].append(time.perf_counter() - t0)
                cpu[p].append(time.process_time() - c0)
        assert not any(fast.score_turns(turns[:1]).truncated)
        med = {p: statistics.median(times[p]) for p in PATHS}
        med_cpu = {p: statistics.median(cpu[p]) for p in PATHS}
        got = {p: np.asarray(scores[p]) for p in PATHS}
        gflop = n_tokens * 2 * non_embedding_params(model) / 1e9
        results.append(dict(
            model=ref, kind=kind, rows=n_rows, tokens=n_tokens, prefix_tokens=len(fast.prefix),
            prefix_share=len(fast.prefix) * n_rows / n_tokens, fallback=fast.prefix_stats["fallback_rows"],
            med=med, med_cpu=med_cpu, times=times, cpu=cpu, gflops={p: gflop / med_cpu[p] for p in PATHS},
            delta={(a, b): float(np.max(np.abs(got[a] - got[b])))
                   for a, b in (("ours", "reference"), ("ours", "prefix"), ("ours", "whole"), ("whole", "reference"))},
            spread=float(np.std(got["reference"])),
            hidden=model.config.hidden_size, inter=getattr(model.config, "intermediate_size", 4 * model.config.hidden_size),
        ))
        print({k: v for k, v in results[-1].items() if k not in ("times", "cpu")}, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100, help="Alpaca rows for tiny:llama (0: skip)")
    parser.add_argument("--smollm2-rows", type=int, default=40, help="Alpaca rows for packaged:smollm2 (0: skip)")
    parser.add_argument("--max-tokens", type=int, default=8192, help="tokens per batch: padded on the HF paths, real on ours (CPU caps it at 512)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every path")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    res = []
    if args.rows:
        res += bench_model("tiny:llama", args.rows, args.max_tokens, args.repeats)
    if args.smollm2_rows:
        res += bench_model("packaged:smollm2", args.smollm2_rows, args.max_tokens, args.repeats)
    load_end = os.getloadavg()
    gemm = {r["model"]: gemm_gflops(512, r["hidden"], r["inter"]) for r in res}
    gemm_dnn = {r["model"]: gemm_gflops(512, r["hidden"], r["inter"], onednn=True) for r in res}
    cmd = (f"python benchmarks/bench_scorer.py --threads {args.threads} --rows {args.rows} --smollm2-rows "
           f"{args.smollm2_rows} --repeats {args.repeats} --max-tokens {args.max_tokens} --out {args.out or '-'}")
    lines = [
        "# DEITA scorer: packed decoder + shared-prefix KV (ours) vs HF forward + prefix vs HF forward, whole "
        "prompts vs one `generate` per prompt (reference)",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
        f"{args.threads} torch thread(s) for every path, CPU, fp32. Load average (1/5/15 min) at start "
        f"{load_start[0]:.1f}/{load_start[1]:.1f}/{load_start[2]:.1f}, at end {load_end[0]:.1f}/{load_end[1]:.1f}/"
        f"{load_end[2]:.1f}. The four paths use the same weights and the same prompts (first Alpaca rows of "
        f"`llamafactory_alpaca_en_demo.json`), run interleaved {args.repeats} times (order reversed on every "
        "other repeat); seconds are medians of process CPU time (with one thread: the time this process "
        "computed, much less sensitive to other jobs on the shared machine than wall time). Model load "
        "excluded; one warm-up call each.",
        "",
        "| model | scorer | rows | prompt tokens | prefix tokens (share) | rows run whole | ours CPU s | HF + prefix "
        "CPU s | HF whole CPU s | reference CPU s | ours vs reference | ours vs HF + prefix | HF + prefix vs "
        "reference | HF whole vs reference | max \\|Δ\\| ours-reference | max \\|Δ\\| ours-HF + prefix "
        "| max \\|Δ\\| ours-HF whole | score std |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        c, d = r["med_cpu"], r["delta"]
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['rows']} | {r['tokens']} | {r['prefix_tokens']} "
            f"({100 * r['prefix_share']:.0f}%) | {r['fallback']} | {c['ours']:.2f} | {c['prefix']:.2f} | "
            f"{c['whole']:.2f} | {c['reference']:.2f} | **{c['reference'] / c['ours']:.2f}x** | "
            f"{c['prefix'] / c['ours']:.2f}x | {c['reference'] / c['prefix']:.2f}x | {c['reference'] / c['whole']:.2f}x | "
            f"{d['ours', 'reference']:.1e} | {d['ours', 'prefix']:.1e} | {d['ours', 'whole']:.1e} | {r['spread']:.3f} |")
    lines += ["", "Per-run seconds, wall (CPU) (interleaved order):", ""]
    for r in res:
        lines.append(f"- {r['model']} {r['kind']}: " + "; ".join(
            f"{LABELS[p]} " + ", ".join(f"{t:.2f} ({c:.2f})" for t, c in zip(r["times"][p], r["cpu"][p]))
            for p in PATHS))
    lines += [
        "",
        "Effective GFLOP/s = prompt tokens × 2 × non-embedding parameters / median process CPU seconds, beside "
        "the best single-thread fp32 GEMM rate measured here (CPU seconds) for a [512, hidden] @ [hidden, "
        "intermediate] product (the MLP's shape). Ours does not compute the prefix tokens per row (nor the last "
        "layer beyond K/V at all but one token), so it counts work avoided as done and can exceed the GEMM rate. "
        "Two GEMM rates: MKL's sgemm (what `F.linear` and the HF forward call) and oneDNN's fp32 linear (what "
        "the packed decoder calls on a CPU). Exact ceiling of ours vs the reference = (GEMM / reference "
        "GFLOP/s) / (1 − prefix share): every row token computed at that GEMM rate, attention and the "
        "last-layer savings aside.",
        "",
        "| model | scorer | ours GFLOP/s | HF + prefix GFLOP/s | HF whole GFLOP/s | reference GFLOP/s "
        "| 1-thread GEMM GFLOP/s, MKL / oneDNN | HF whole / MKL GEMM | exact ceiling vs reference, MKL / oneDNN "
        "| ours vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        g, gm, gd = r["gflops"], gemm[r["model"]] * args.threads, gemm_dnn[r["model"]] * args.threads
        keep = g["reference"] * (1 - r["prefix_share"])
        lines.append(f"| {r['model']} | {r['kind']} | {g['ours']:.1f} | {g['prefix']:.1f} | {g['whole']:.1f} | "
                     f"{g['reference']:.1f} | {gm:.1f} / {gd:.1f} | {g['whole'] / gm:.2f} | "
                     f"{gm / keep:.2f}x / {gd / keep:.2f}x | {r['med_cpu']['reference'] / r['med_cpu']['ours']:.2f}x |")
    lines += [
        "",
        "Identical-output check: max |Δ| columns are the largest score differences over all rows (targets: ours "
        "vs the HF paths ≤ 1e-5, ours vs reference ≤ 1e-4). Ours: the template head before `{instruction}` "
        "runs once per scorer; each prompt runs only its own tokens from the head's keys/values through the "
        "packed decoder (`deita.models.packed`: the batch's real tokens concatenated for norms, projections "
        "and MLP, Q/K/V and gate/up as one GEMM each, oneDNN's fp32 GEMM with prepacked weights, the attention of "
        "every layer but the last as per-row oneDNN GEMMs in 128-token causal query blocks (`deita.models.row_attention`), "
        "the last layer's query, o_proj and MLP at each row's last token only), the LM head's six digit rows at the "
        "last token only. Rows "
        "run whole: prompts whose tokens differ from the head's at the boundary (they run without the prefix).",
    ]
    text = "\n".join(lines) + "\n"
    emit(text, args.out) if args.out else print(text)


if __name__ == "__main__":
    sys.exit(main())
