"""Benchmark: MT-Bench answering, one question at a time (FastChat gen_model_answer's loop) vs our batched
left-padded generation, same model, same process.

(a) baseline: :func:`deita.evaluation.generate.answer_prompts` with ``batch_size=1``: each question is
    answered alone, turn 1 then turn 2 with its own turn-1 answer in the conversation, as FastChat's
    ``gen_model_answer.py`` does (one ``model.generate`` per question turn).
(b) ours: the same function with ``batch_size=8`` (the eval stage's default): questions sorted by
    first-turn length, grouped, and each turn of a group generated in one left-padded batch.

Both are greedy (temperature 0) with the same ``max_new_tokens``; the answers are compared for identity.
Model: SmolLM2-135M-Instruct (``packaged:smollm2``, fp32) unless ``--model`` says otherwise.

Run: python benchmarks/bench_eval_generation.py --questions 16 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    """Time both ways, check identical answers, and write benchmarks/results/eval_generation.md."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="packaged:smollm2")
    p.add_argument("--questions", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "multiturn" / "fastchat_mt_bench_question.jsonl"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_generation.md"))
    args = p.parse_args()

    import torch

    from deita.data.loading import load_rows
    from deita.evaluation.generate import answer_prompts, load_policy
    from deita.models.resolve import resolve_model

    model_dir = resolve_model(args.model, str(ROOT / ".cache"))
    model, tok = load_policy(model_dir)
    rows = load_rows(args.data, kind="prompts", limit=args.questions).rows
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=0.0)
    answer_prompts(model, tok, rows[:1], batch_size=1, max_new_tokens=4, temperature=0.0)  # warm-up

    t0 = time.perf_counter()
    base = answer_prompts(model, tok, rows, batch_size=1, desc="baseline (1 at a time)", **kw)
    t_base = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = answer_prompts(model, tok, rows, batch_size=args.batch_size, desc=f"ours (batch {args.batch_size})", **kw)
    t_ours = time.perf_counter() - t0

    turns = sum(len(a) for a in ours)
    same = sum(a == b for qa, qb in zip(base, ours) for a, b in zip(qa, qb))
    new_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for qa in ours for a in qa)
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    lines = [
        "# Eval stage: MT-Bench answering, one at a time vs batched left-padded generation",
        "",
        f"Model `{args.model}` (fp32), {len(rows)} MT-Bench questions × 2 turns, greedy, "
        f"max_new_tokens={args.max_new_tokens}, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}. One run, same process.",
        "",
        "| way | seconds | turns/s | ratio |",
        "|---|---:|---:|---:|",
        f"| baseline: one question at a time (FastChat's loop) | {t_base:.1f} | {turns / t_base:.2f} | 1.00× |",
        f"| ours: batch {args.batch_size}, left-padded | {t_ours:.1f} | {turns / t_ours:.2f} | {t_base / t_ours:.2f}× |",
        "",
        f"Identical answers: {same}/{turns} turns (greedy). Answer tokens generated (ours): {new_tokens}.",
        "",
        f"Command: `{cmd}`",
        "",
        "The machine is a shared 2-core CPU; other jobs were running, so absolute seconds are noisy.",
    ]
    if same != turns:
        lines.append("")
        lines.append("Differing turns come from float round-off of padded vs unpadded matmul shapes flipping a "
                     "greedy argmax; after the first differing token the continuations diverge.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
