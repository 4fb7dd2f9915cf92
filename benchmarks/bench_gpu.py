"""GPU figures the CPU machine cannot show: the DEITA scorer in fp32 and bf16 on CUDA, side by side with the
reference path (one ``generate`` per prompt), on the SmolLM2-135M architecture.

The lent GPU machine cannot receive the packaged SmolLM2 weights (the GGUF is over its transfer limit), so
the model is SmolLM2-135M-Instruct's exact config and tokenizer with random weights (``--arch``): speed
depends on the architecture and the token counts, not on the weights. Scores are compared between our
batched path and the reference path (same weights, same prompts), and between fp32 and bf16.

    python benchmarks/bench_gpu.py --arch .gpu/smollm2_arch --rows 1000 --ref-rows 100 --out $OUT/gpu_scorer.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def random_model_dir(arch: Path, out: Path) -> Path:
    """A HF folder with ``arch``'s config and tokenizer and seeded random weights (saved once)."""
    if (out / "config.json").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(arch), dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(arch).save_pretrained(out)
    return out


def alpaca_turns(data: Path, n: int) -> list[tuple[str, str]]:
    """``n`` (instruction, response) turns from the Alpaca demo file, cycled if it has fewer rows."""
    raw = json.loads(data.read_text())
    rows = [raw[i % len(raw)] for i in range(n)]
    return [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"]) for r in rows]


def reference_scores(tokenizer, model, prompts, digit_ids, device) -> list[float]:
    """The reference HF path: one ``generate`` per prompt, softmax over the six digit logits."""
    template = np.arange(1, 7, dtype=np.float64)
    out = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True,
                                 output_scores=True, do_sample=False)
        logits = gen.scores[0][0].float().cpu().numpy()
        digit = logits[digit_ids].astype(np.float64)
        e = np.exp(digit - digit.max())
        out.append(float(np.sum(e / e.sum() * template)))
    return out


def timed(fn):
    """``fn()`` and its wall time, with the GPU synchronised on both sides."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=Path, required=True, help="folder with SmolLM2's config.json and tokenizer")
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/smollm2_random"), help="where the random model goes")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "instruct" / "llamafactory_alpaca_en_demo.json")
    p.add_argument("--rows", type=int, default=1000, help="rows scored by our batched path")
    p.add_argument("--ref-rows", type=int, default=100, help="rows scored by the reference path")
    p.add_argument("--max-tokens", type=int, default=65536, help="ours: padded tokens per batch")
    p.add_argument("--device", default="cuda", help="torch device (cpu only for a smoke test)")
    p.add_argument("--out", type=Path, default=None, help="markdown table")
    args = p.parse_args()

    from deita.selection.scorers import DeitaScorer
    from deita.selection.scorers.prompts import render_prompt

    path = random_model_dir(args.arch, args.model_dir)
    turns = alpaca_turns(args.data, args.rows)
    lines = [f"Device: {torch.cuda.get_device_name() if args.device.startswith('cuda') else args.device} · torch {torch.__version__} · random-weight SmolLM2-135M "
             f"architecture · {args.rows} rows (ours), {args.ref_rows} rows (reference)", "",
             "| kind | dtype | rows | tokens | ours s | ours rows/s | ours tok/s | ref rows/s (fp32) | speed-up | max abs diff vs ref | max abs diff vs fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind in ("complexity", "quality"):
        prompts = [render_prompt(kind, q, a) for q, a in turns]
        fp32_scores = None
        ref_rate = ref = None
        for dtype, prefix in (("float32", False), ("float32", True), ("bfloat16", True)):
            scorer = DeitaScorer(kind, str(path), dtype=dtype, device=args.device, max_length=2048,
                                 max_tokens_per_batch=args.max_tokens, show_progress=False, prefix_cache=prefix)
            n_tokens = sum(len(scorer.tokenizer.encode(x)) for x in prompts)
            scorer.score_turns(turns[:16])  # warm-up
            res, secs = timed(lambda: scorer.score_turns(turns))
            ours = np.asarray(res.scores, dtype=np.float64)
            if fp32_scores is None:
                fp32_scores = ours
                reference_scores(scorer.tokenizer, scorer.model, prompts[:2], scorer.digit_ids, args.device)
                ref, ref_secs = timed(lambda: reference_scores(scorer.tokenizer, scorer.model,
                                                               prompts[:args.ref_rows], scorer.digit_ids, args.device))
                ref = np.asarray(ref)
                ref_rate = args.ref_rows / ref_secs
            d_ref = float(np.max(np.abs(ours[:args.ref_rows] - ref)))
            d_fp32 = float(np.max(np.abs(ours - fp32_scores)))
            rate = args.rows / secs
            lines.append(f"| {kind} | {dtype}{' + prefix KV' if prefix else ''} | {args.rows} | {n_tokens} | {secs:.2f} | {rate:.0f} | "
                         f"{n_tokens / secs:.0f} | {ref_rate:.1f} | {rate / ref_rate:.1f}x | {d_ref:.2e} | {d_fp32:.2e} |")
            print(lines[-1], flush=True)
            del scorer
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
