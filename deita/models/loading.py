"""Loading a causal LM for scoring or embedding: one place for dtype names, device choice and eval mode."""

from __future__ import annotations

import os

DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def resolve_dtype(dtype: str):
    """torch dtype from its config name: float32 (fp32), bfloat16 (bf16), float16 (fp16)."""
    import torch

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def resolve_device(device: str) -> str:
    """'auto' → this process's GPU when one is visible (LOCAL_RANK under a multi-process launch), else 'cpu'."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def load_causal_lm(path: str, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False):
    """(tokenizer, causal LM) from ``path``, in ``dtype``, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code)
    model.to(resolve_device(device)).eval()
    return tok, model
