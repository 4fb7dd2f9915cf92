"""Slow baselines of the golden-score model pass, for tests and benchmarks.

* :func:`oracle_sums`: one full forward per (demonstration + anchor) token concatenation, no cache, no
  padding: the definition of the score, built from the token ids the reference sees.
* :func:`reference_loop_sums`: a faithful re-implementation of pldlgb/nuggets' loop (``instruction_main.py``):
  zero-shot in batches of 8 padded to a fixed 200, then per candidate one demonstration prefill whose KV is
  expanded over each batch of 8 fixed-padded anchors, full-vocabulary ``log_softmax``, gather, and
  ``torch.sum(extracted).item()``: a float32 sum of the float32 log-probs, as the reference.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from deita.selection.nuggets.tokens import AnchorTokens


def _sum_from_logits(logits, seq, offset: int, anchor: AnchorTokens) -> float:
    """Sum of log_softmax(logits)[pos-1, tok] over the anchor's span (``offset`` = where the body starts)."""
    import torch

    if anchor.end <= anchor.start:
        return 0.0
    lp = torch.log_softmax(logits.float(), dim=-1)
    pos = torch.arange(offset + anchor.start - 1, offset + anchor.end - 1)
    tgt = torch.tensor(seq[offset + anchor.start : offset + anchor.end])
    return float(lp[pos, tgt].double().sum())


def oracle_sums(model, prefixes: Sequence[Sequence[int]], anchors: Sequence[AnchorTokens]) -> np.ndarray:
    """[len(prefixes), M]: for every pair, one forward over ``prefix + anchor.body`` and the answer sum."""
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(prefixes), len(anchors)))
    for c, prefix in enumerate(prefixes):
        for a, anchor in enumerate(anchors):
            seq = list(prefix) + list(anchor.body)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([seq], device=device)).logits[0].cpu()
            out[c, a] = _sum_from_logits(logits, seq, len(prefix), anchor)
    return out


def _padded(anchors: Sequence[AnchorTokens], width: int, pad_id: int, prefix: Sequence[int] = ()):
    import torch

    w = width + len(prefix)
    ids = torch.full((len(anchors), w), pad_id, dtype=torch.long)
    mask = torch.zeros((len(anchors), w), dtype=torch.long)
    for r, a in enumerate(anchors):
        seq = list(prefix) + list(a.body)
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
    return ids, mask


def _batch_sums(logits, ids, anchors, offset: int, accumulate: str) -> list[float]:
    """Per row, the reference's gather: log_softmax over the full vocabulary, then the answer tokens,
    summed in the logits' dtype (``accumulate="float32"``, the reference) or in float64."""
    import torch

    lp = torch.log_softmax(logits, dim=-1)
    out = []
    for r, a in enumerate(anchors):
        if a.end <= a.start:
            out.append(0.0)
            continue
        s, e = offset + a.start, offset + a.end
        picked = torch.gather(lp[r, s - 1 : e - 1], -1, ids[r, s:e, None]).squeeze(-1)
        out.append(torch.sum(picked if accumulate == "float32" else picked.double()).item())
    return out


def reference_loop_sums(
    model,
    demos: Sequence[Sequence[int]],
    anchors: Sequence[AnchorTokens],
    zero_prefix: Sequence[int] = (),
    *,
    batch_size: int = 8,
    pad_to: Optional[int] = 200,
    pad_id: int = 0,
    progress: bool = False,
    accumulate: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """``(zero [M], one [N, M])`` computed the way the reference loop does (see the module doc).

    ``accumulate="float64"`` sums the same float32 log-probs in float64 instead of the reference's float32
    ``torch.sum``: only to measure how much the accumulation alone moves a sum.
    """
    if accumulate not in ("float32", "float64"):
        raise ValueError(f"accumulate must be float32 or float64, got {accumulate!r}")
    import torch
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    device = next(model.parameters()).device
    width = max([pad_to or 0] + [len(a.body) for a in anchors])
    batches = [list(range(s, min(s + batch_size, len(anchors)))) for s in range(0, len(anchors), batch_size)]
    zero = np.zeros(len(anchors))
    for b in batches:
        ids, mask = _padded([anchors[i] for i in b], width, pad_id, zero_prefix)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.cpu()
        zero[b] = _batch_sums(logits, ids, [anchors[i] for i in b], len(zero_prefix), accumulate)
    one = np.zeros((len(demos), len(anchors)))
    for c, demo in enumerate(tqdm(demos, desc="reference loop", disable=not progress)):
        d_ids = torch.tensor([list(demo)], device=device)
        with torch.no_grad():
            kv = model(input_ids=d_ids, use_cache=True).past_key_values
        layers = [(layer.keys, layer.values) for layer in kv.layers]
        for b in batches:
            ids, mask = _padded([anchors[i] for i in b], width, pad_id)
            n = len(b)
            merged = torch.cat([torch.ones((n, len(demo)), dtype=torch.long), mask], dim=1)
            cache = DynamicCache(
                ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in layers],
                config=model.config,
            )
            with torch.no_grad():
                logits = model(
                    input_ids=ids.to(device), attention_mask=merged.to(device), past_key_values=cache
                ).logits.cpu()
            one[c, b] = _batch_sums(logits, ids, [anchors[i] for i in b], 0, accumulate)
    return zero, one
