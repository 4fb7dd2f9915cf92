"""The arithmetic behind SCALING.md: wall time and memory of a DEITA run (7B scorers, 7B embedder, 7B SFT and
DPO) at 300K and 10M pool rows on 8 and 64 GPUs, from per-token costs.

Every input below is either MEASURED (with where) or an ASSUMPTION (with its basis); change one and re-run:
``python benchmarks/scaling_estimates.py`` prints the tables that SCALING.md quotes.
"""

from __future__ import annotations

PEAK_TFLOPS = 989.0
"""ASSUMPTION: dense bf16 peak of one H100/H200 SXM (the datasheet figure; plan mode's default gpu_tflops)."""
MFU = 0.40
"""ASSUMPTION: model FLOPs utilisation of a 7B forward/backward (plan mode's default mfu; typical of bf16 7B
training with FlashAttention; batched scoring forwards usually reach at least this)."""
PARAMS = 7.0e9
"""The DEITA models: LLaMA-1-7B scorers, Mistral-7B embedder, a 7B policy."""
SMOL_PARAMS = 0.1345e9
"""SmolLM2-135M, the model every GPU figure in BENCHMARKS.md was measured with."""
SMOL_FWD_TOKS = 122_115
"""MEASURED: SmolLM2-135M (random weights) bf16 quality-prompt scoring on the H200, tokens/s (BENCHMARKS.md,
"On a GPU"). The model is launch-bound there (~3% of peak): scaling it by parameter ratio is a floor."""

TOKENS_PER_ROW = 1200
"""ASSUMPTION: tokens of one conversation in an X_sota-like pool (ShareGPT/UltraChat/WizardLM mixes run
~1,000-1,500 LLaMA tokens per conversation; not measurable here: the offline data holds only short Alpaca
rows, 254 scorer tokens per row: 48 complexity + 206 quality, measured)."""
TURNS_PER_ROW = 3
"""ASSUMPTION: user turns per conversation in such a pool."""
TEMPLATE_TOKENS = 65
"""MEASURED (order of): the DEITA scorer templates add ~60-70 tokens per scored turn (Alpaca demo rows: 48
complexity tokens for ~10-token instructions)."""
BUDGET = {300_000: 10_000, 10_000_000: 100_000}
"""ASSUMPTION: rows selected (DEITA's 6K/10K at 300K; 1% of a 10M pool)."""
SFT_EPOCHS, DPO_PAIRS, DPO_EPOCHS, DPO_TOKENS_PER_PAIR = 3, 10_000, 1, 1200
"""ASSUMPTION: DEITA-style SFT epochs, 10K UltraFeedback pairs (preference_sample) for one epoch, ~600 tokens
each for chosen and rejected (prompt included)."""
MODEL_LOAD_S = 120
"""ASSUMPTION: loading one 7B checkpoint from local NVMe onto a GPU, per process (each process loads its own)."""


def fwd_toks_per_gpu(mfu: float = MFU) -> float:
    """Forward-only tokens/s of one GPU on a 7B model at ``mfu`` (2 FLOPs per parameter and token)."""
    return mfu * PEAK_TFLOPS * 1e12 / (2 * PARAMS)


def ratio_floor() -> float:
    """The pessimistic bound: the measured 135M forward tokens/s scaled by parameter ratio."""
    return SMOL_FWD_TOKS * SMOL_PARAMS / PARAMS


def pool_forward_tokens(rows: int) -> float:
    """Scoring (complexity reads the instruction, quality instruction + response, per turn) + embedding."""
    complexity = rows * (0.25 * TOKENS_PER_ROW + TEMPLATE_TOKENS * TURNS_PER_ROW)
    quality = rows * (TOKENS_PER_ROW + TEMPLATE_TOKENS * TURNS_PER_ROW)
    embed = rows * min(TOKENS_PER_ROW, 2048)
    return complexity + quality + embed


def hours(tokens: float, toks_per_gpu: float, gpus: int) -> float:
    return tokens / (toks_per_gpu * gpus) / 3600


def main() -> None:
    fwd, floor = fwd_toks_per_gpu(), ratio_floor()
    sft_tok = MFU * PEAK_TFLOPS * 1e12 / (6 * PARAMS)
    dpo_tok = MFU * PEAK_TFLOPS * 1e12 / (8 * PARAMS)  # policy fwd+bwd (6P) + reference fwd (2P) per token
    print(f"7B forward tokens/s/GPU: {fwd:,.0f} at MFU {MFU} (estimate); floor by parameter ratio {floor:,.0f}")
    print(f"7B SFT tokens/s/GPU: {sft_tok:,.0f}; DPO: {dpo_tok:,.0f} (estimates, MFU {MFU})\n")
    print("| pool rows | GPUs | select forward tokens | select h (MFU 0.4) | select h (ratio floor) | SFT tokens | SFT h "
          "| DPO h | embeddings on disk, fp16 / fp32 (GB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rows in (300_000, 10_000_000):
        toks = pool_forward_tokens(rows)
        sft_tokens = BUDGET[rows] * TOKENS_PER_ROW * SFT_EPOCHS
        dpo_tokens = DPO_PAIRS * DPO_TOKENS_PER_PAIR * DPO_EPOCHS
        for gpus in (8, 64):
            loads = 3 * MODEL_LOAD_S / 3600  # two scorers + the embedder, each once per process
            print(f"| {rows:,} | {gpus} | {toks / 1e9:.2f} B | {hours(toks, fwd, gpus) + loads:.2f} | "
                  f"{hours(toks, floor, gpus) + loads:.1f} | {sft_tokens / 1e6:.0f} M | {hours(sft_tokens, sft_tok, gpus):.2f} | "
                  f"{hours(dpo_tokens, dpo_tok, gpus):.3f} | {rows * 4096 * 2 / 1e9:.1f} / {rows * 4096 * 4 / 1e9:.1f} |")


if __name__ == "__main__":
    main()
