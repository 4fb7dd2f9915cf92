"""Per-row and per-token costs that SCALING.md needs and no other benchmark measures, on this machine's CPU.

- embed: ``embed_pool`` (clm_last, vicuna_v1.1 template, prefix cache on) over the first ``--rows`` Alpaca rows;
  rows/s and real tokens/s.
- sft: one training step = forward + backward + AdamW step of the causal-LM loss on ``--batch`` sequences of
  ``--seq`` tokens (plain torch: what TRL's SFTTrainer runs per micro-batch, without its data collation and
  logging); tokens/s over ``--steps`` timed steps after one warm-up step.
- dpo: per pair, the policy's forward + backward on chosen and rejected (``--batch`` pairs of ``--seq`` tokens
  each, 2 × batch sequences) plus the reference model's no-grad forward on both, then AdamW; tokens/s counts
  the chosen + rejected tokens once (as TRL's throughput does).

Usage: ``python benchmarks/bench_costs.py --model packaged:smollm2 --threads 1 --out benchmarks/results/costs_cpu.md``.
Every figure is wall-clock on whatever load the machine has; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def bench_embed(model_path: str, rows: list[dict]) -> dict:
    """Rows/s and tokens/s of the clm_last embedder (model load excluded)."""
    from transformers import AutoTokenizer

    from deita.selection.embedders.pool import embed_pool
    from deita.selection.embedders.render import render_rows

    embed_pool(rows[:2], "clm_last", model_path, batch_size=4, max_length=2048)  # warm-up (and model load)
    t0 = time.perf_counter()
    embed_pool(rows, "clm_last", model_path, batch_size=4, max_length=2048)
    seconds = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(model_path)
    tokens = sum(len(tok(text).input_ids) for text in render_rows(rows, "vicuna_v1.1"))
    return {"rows": len(rows), "tokens": tokens, "seconds": seconds}


def _train_step(model, opt, batches: list) -> None:
    for ids in batches:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_train(model_path: str, batch: int, seq: int, steps: int, dpo: bool) -> dict:
    """Tokens/s of an SFT step, or of a DPO step (policy on chosen + rejected, reference forward on both)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    policy.train()
    vocab = policy.config.vocab_size
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval() if dpo else None

    def logp(model, ids):
        logits = model(input_ids=ids).logits[:, :-1]
        return torch.gather(F.log_softmax(logits.float(), -1), 2, ids[:, 1:, None]).squeeze(-1).sum(-1)

    def step():
        chosen = torch.randint(0, vocab, (batch, seq))
        if not dpo:
            _train_step(policy, opt, [chosen])
            return batch * seq
        rejected = torch.randint(0, vocab, (batch, seq))
        both = torch.cat([chosen, rejected])
        with torch.no_grad():
            ref_lp = logp(ref, both)
        lp = logp(policy, both)
        margin = (lp[:batch] - ref_lp[:batch]) - (lp[batch:] - ref_lp[batch:])
        (-F.logsigmoid(0.1 * margin).mean()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return 2 * batch * seq

    step()  # warm-up
    t0 = time.perf_counter()
    tokens = sum(step() for _ in range(steps))
    return {"tokens": tokens, "seconds": time.perf_counter() - t0, "steps": steps, "batch": batch, "seq": seq,
            "params_m": sum(p.numel() for p in policy.parameters()) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="packaged:smollm2")
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=os.path.join(os.environ.get("DEITA_SHARED_DATA", "../shared/data"),
                                                       "instruct/llamafactory_alpaca_en_demo.json"))
    parser.add_argument("--cache-dir", default=".cache")
    parser.add_argument("--only", nargs="*", default=["embed", "sft", "dpo"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from deita.data.loading import load_rows
    from deita.models.resolve import resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(args.model, args.cache_dir)
    load0 = os.getloadavg()[0]
    results = {}
    if "embed" in args.only:
        loaded = load_rows(args.data, kind="sft", limit=args.rows)
        rows = getattr(loaded, "rows", loaded)
        results["embed"] = bench_embed(path, list(rows)[: args.rows])
    if "sft" in args.only:
        results["sft"] = bench_train(path, args.batch, args.seq, args.steps, dpo=False)
    if "dpo" in args.only:
        results["dpo"] = bench_train(path, args.batch, args.seq, args.steps, dpo=True)
    load1 = os.getloadavg()[0]
    lines = [f"Command: `python benchmarks/bench_costs.py --model {args.model} --rows {args.rows} --batch {args.batch} "
             f"--seq {args.seq} --steps {args.steps} --threads {args.threads}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} "
             f"thread(s), fp32; load average {load0:.1f} at start, {load1:.1f} at end.", "",
             "| pass | what | tokens | seconds | tokens/s | rows/s |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        what = (f"{r['rows']} Alpaca rows, clm_last" if name == "embed" else
                f"{r['steps']} steps × {r['batch']} {'pairs' if name == 'dpo' else 'seqs'} × {r['seq']} tokens")
        rows_s = f"{r['rows'] / r['seconds']:.2f}" if name == "embed" else ""
        lines.append(f"| {name} | {what} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens'] / r['seconds']:.0f} | {rows_s} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps(results))
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
