"""Benchmark: the ``clm_last`` embedder through the packed decoder (ours) vs the Hugging Face forward, both
with the vicuna head's shared-prefix KV, vs the HF forward on whole conversations; interleaved, one thread,
process CPU seconds, SmolLM2-135M fp32 on the first Alpaca rows rendered with vicuna_v1.1 (the select
stage's defaults: ``batch_size`` 4, ``max_length`` 2048).

    python benchmarks/bench_embedder.py --rows 40 --repeats 3 --out benchmarks/results/embedder.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _markdown import emit  # noqa: E402
from bench_scorer import REPO, alpaca_turns  # noqa: E402

PATHS = {"ours": "packed + prefix", "prefix": "HF + prefix", "whole": "HF whole"}


def main() -> None:
    from deita.models.resolve import resolve_model
    from deita.selection.embedders import EMBEDDERS, render_vicuna_dialogue
    from deita.selection.embedders.render import template_head

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="Alpaca rows")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path (median reported)")
    parser.add_argument("--batch-size", type=int, default=4, help="embedder batch_size (rows per forward)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    path = resolve_model("packaged:smollm2", REPO / ".cache")
    texts = [render_vicuna_dialogue([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
             for q, a in alpaca_turns(args.rows)]
    head = template_head("vicuna_v1.1")
    opts = dict(batch_size=args.batch_size, device="cpu", show_progress=False)
    make = EMBEDDERS.get("clm_last")
    emb = {"ours": make(path, prefix_text=head, **opts), "prefix": make(path, prefix_text=head, packed=False, **opts),
           "whole": make(path, packed=False, **opts)}
    assert emb["ours"].packed is not None
    tokens = sum(len(s) for s in emb["whole"].tokenize(texts))
    for e in emb.values():
        e.embed_texts(texts[:4])  # warm-up
    cpu: dict[str, list[float]] = {p: [] for p in PATHS}
    out: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        for p in (list(PATHS) if r % 2 == 0 else list(PATHS)[::-1]):
            c0 = time.process_time()
            out[p] = emb[p].embed_texts(texts, normalize=False)
            cpu[p].append(time.process_time() - c0)
    load_end = os.getloadavg()
    med = {p: statistics.median(cpu[p]) for p in PATHS}
    scale = float(np.abs(out["whole"]).max())
    lines = [
        "# clm_last embedder: packed decoder + prefix (ours) vs HF forward + prefix vs HF forward, whole",
        "",
        f"Command: `python benchmarks/bench_embedder.py --rows {args.rows} --repeats {args.repeats} "
        f"--batch-size {args.batch_size} --out {args.out or '-'}`",
        "",
        f"SmolLM2-135M fp32, CPU, 1 torch thread, {args.rows} Alpaca rows rendered with vicuna_v1.1 ({tokens} tokens, "
        f"head {len(emb['ours'].prefix)} tokens, {emb['ours'].prefix_stats['fallback_rows']} rows run whole), "
        f"batch_size {args.batch_size}; paths interleaved {args.repeats} times (order reversed every other repeat), "
        f"median process CPU seconds. Load average at start {load_start[0]:.1f}/{load_start[1]:.1f}/"
        f"{load_start[2]:.1f}, at end {load_end[0]:.1f}/{load_end[1]:.1f}/{load_end[2]:.1f} (shared 2-core machine).",
        "",
        "| path | CPU s (median) | runs | vs HF whole | max \\|Δ\\| vs HF whole (raw, largest \\|value\\| "
        f"{scale:.1f}) |",
        "|---|---|---|---|---|",
    ]
    for p, label in PATHS.items():
        lines.append(f"| {label} | {med[p]:.2f} | {', '.join(f'{c:.2f}' for c in cpu[p])} | "
                     f"{med['whole'] / med[p]:.2f}x | {float(np.abs(out[p] - out['whole']).max()):.1e} |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out) if args.out else print(text)


if __name__ == "__main__":
    sys.exit(main())
