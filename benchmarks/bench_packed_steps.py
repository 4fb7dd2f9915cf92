"""Benchmark: the packed decoder's CPU steps one by one on the DEITA scorers (SmolLM2-135M, fp32, one
thread): attention through the CPU flash SDPA kernel over right-padded rows vs per-row oneDNN GEMMs
(`deita.models.row_attention`), and oneDNN reading plain vs prepacked weights, interleaved in one process.

    python benchmarks/bench_packed_steps.py --rows 40 --repeats 3 --out benchmarks/results/packed_steps.md

Every configuration scores the same prompts through the same scorer code (shared-prefix KV, digit rows of
the LM head); only the decoder's two switches differ. Seconds are medians of process CPU time.
"""

from __future__ import annotations

import argparse
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
from bench_scorer import REPO, alpaca_turns  # noqa: E402

CONFIGS = (("SDPA attention, plain weights", False, False), ("GEMM attention, plain weights", True, False),
           ("SDPA attention, prepacked weights", False, True), ("GEMM attention, prepacked weights", True, True))
"""(label, GEMM attention allowed, prepacked weights); GEMM attention runs in batches whose rows average
at least ``GEMM_ATTENTION_MIN_TOKENS`` own tokens (SDPA otherwise)."""


def main() -> None:
    from deita.models.packed import PackedDecoder
    from deita.models.resolve import resolve_model
    from deita.selection.scorers import DeitaScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40, help="Alpaca rows scored per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each configuration")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    path = resolve_model("packaged:smollm2", REPO / ".cache")
    turns = alpaca_turns(args.rows)
    lines = [
        "# Packed decoder steps on the DEITA scorers: SDPA vs GEMM attention, plain vs prepacked oneDNN weights",
        "",
        f"Command: `python benchmarks/bench_packed_steps.py --rows {args.rows} --repeats {args.repeats} "
        f"--out {args.out or '-'}`",
        "",
        "| scorer | configuration | CPU s (median) | runs | vs first | max \\|Δscore\\| vs first |",
        "|---|---|---|---|---|---|",
    ]
    for kind in ("complexity", "quality"):
        opts = dict(dtype="float32", device="cpu", max_length=2048, show_progress=False)
        plain, packed = DeitaScorer(kind, path, **opts), DeitaScorer(kind, path, **opts)
        plain.packed = PackedDecoder(plain.model, prepack=False)
        assert plain.packed.onednn and not plain.packed.prepacked and packed.packed.prepacked
        scorers = []
        for _, gemm, prepacked in CONFIGS:
            scorer = packed if prepacked else plain
            scorers.append((scorer, gemm))

        def run(k: int) -> list[float]:
            scorer, gemm = scorers[k]
            scorer.packed.gemm_attention = gemm
            return scorer.score_turns(turns).scores

        for k in range(len(CONFIGS)):
            run(k)  # warm-up: oneDNN builds its kernels for the batch shapes
        cpu: dict[int, list[float]] = {k: [] for k in range(len(CONFIGS))}
        scores: dict[int, np.ndarray] = {}
        for r in range(args.repeats):
            for k in (range(len(CONFIGS)) if r % 2 == 0 else reversed(range(len(CONFIGS)))):
                c0 = time.process_time()
                scores[k] = np.asarray(run(k))
                cpu[k].append(time.process_time() - c0)
        first = statistics.median(cpu[0])
        for k, (label, _, _) in enumerate(CONFIGS):
            med = statistics.median(cpu[k])
            lines.append(f"| {kind} | {label} | {med:.2f} | {', '.join(f'{c:.2f}' for c in cpu[k])} | "
                         f"{first / med:.2f}x | {np.max(np.abs(scores[k] - scores[0])):.1e} |")
        print(lines[-3:], flush=True)
    load_end = os.getloadavg()
    lines += ["", f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, one "
              f"torch thread, fp32, {args.rows} Alpaca rows. Load average at start {load_start[0]:.1f}, at end "
              f"{load_end[0]:.1f}. Configurations interleaved (order reversed every other repeat), one warm-up "
              "each. Prepacking changes the weights' layout, not the arithmetic (fp32; oneDNN may block a product "
              "differently). Short rows (complexity) run SDPA in every configuration: their batches average fewer "
              "than `GEMM_ATTENTION_MIN_TOKENS` own tokens per row."]
    text = "\n".join(lines) + "\n"
    emit(text, args.out) if args.out else print(text)


if __name__ == "__main__":
    sys.exit(main())
