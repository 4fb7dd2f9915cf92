"""Loading a causal LM for scoring, embedding, evaluation or training: one place for dtype names, device
choice, eval mode and the pad-id fallback."""

from __future__ import annotations

import os

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}
"""Accepted dtype spellings (config ``dtype`` keys everywhere) → the torch dtype's name."""


def resolve_dtype(dtype: str, allow_auto: bool = False):
    """torch dtype from its config name: float32 (fp32), bfloat16 (bf16), float16 (fp16).

    With ``allow_auto`` the string ``"auto"`` is returned unchanged (``from_pretrained`` then uses the
    checkpoint's own dtype); scoring paths do not allow it, so their numbers never depend on a checkpoint.
    """
    import torch

    if allow_auto and dtype == "auto":
        return "auto"
    name = DTYPE_NAMES.get(str(dtype))
    if name is None:
        allowed = sorted(DTYPE_NAMES) + (["auto"] if allow_auto else [])
        raise ValueError(f"dtype must be one of {allowed}, got {dtype!r}")
    return getattr(torch, name)


def resolve_device(device: str) -> str:
    """'auto' → this process's GPU when one is visible (LOCAL_RANK under a multi-process launch), else 'cpu'."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def pad_id_of(tok) -> int:
    """The token id that fills padded positions: the tokenizer's pad token, else unk, else eos, else 0.

    Every model pass in deita either masks padded positions or places them after the last real token
    (hidden by the causal mask), so this id never changes a result; it only has to be a valid id.
    """
    for cand in (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id):
        if cand is not None:
            return int(cand)
    return 0


def ensure_pad_token(tok):
    """Give a tokenizer without a pad token the fallback of :func:`pad_id_of` (unk, else eos) as its pad
    token, so ``tok(..., padding=True)`` and trainers can pad. Returns ``tok``."""
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", device: str = "auto", trust_remote_code: bool = False, *,
                   allow_auto_dtype: bool = False, **model_kwargs):
    """(tokenizer, causal LM) from ``path``, in ``dtype``, on ``device``, in eval mode.

    ``model_kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, allow_auto_dtype),
                                                 trust_remote_code=trust_remote_code, **model_kwargs)
    model.to(resolve_device(device)).eval()
    return tok, model
