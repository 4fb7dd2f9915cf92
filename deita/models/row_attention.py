"""Causal self-attention of packed rows as GEMMs: per row and key/value head, ``softmax(Q Kᵀ + mask) V``.

The packed decoder (:mod:`deita.models.packed`) runs this on a CPU where oneDNN's fp32 GEMM is available:
the inner products of the CPU flash SDPA kernel go through MKL's sgemm, which on this project's AMD EPYC
runs ~105 GFLOP/s on attention shapes against ~200 for oneDNN (``benchmarks/bench_scorer.py`` measures
both), and the flash kernel computes its whole key block for every query block below 512 keys, so causal
rows pay for the upper triangle as well.

Layout: the query heads that share a key/value head are stacked along the query axis (query ``(t, j)`` is
token ``t`` of head ``j`` of the group), so each row and key/value head is two GEMMs, ``[L·g, d] @ [d, K]``
and ``[L·g, K] @ [K, d]``, with no copy of the keys per query head. Queries are split into blocks
(:data:`QUERY_BLOCK` tokens): a block sees keys only up to its last token, which skips most of the upper
triangle. The mask inside a block is added in the first GEMM. Same arithmetic as SDPA's math path in
fp32 (another summation order).
"""

from __future__ import annotations

from typing import Callable, Sequence

QUERY_BLOCK = 128
"""Query tokens per block: a block attends to the keys up to its last token only."""


def causal_mask(width: int, group: int, skip: int, device=None):
    """Additive mask ``[width, group, skip + width]``: 0 where key ``j`` may be seen by query token ``t``
    (``j <= skip + t``), ``-inf`` elsewhere; the same for each of the ``group`` stacked query heads."""
    import torch

    seen = torch.ones(width, skip + width, dtype=torch.bool, device=device).tril(skip)
    mask = torch.zeros(width, skip + width, device=device).masked_fill_(~seen, float("-inf"))
    return mask[:, None, :].expand(width, group, skip + width).contiguous()


def causal_row_attention(q, k, v, lens: Sequence[int], scaling: float, linear: Callable, linear_add: Callable,
                         prefix=None, mask=None):
    """Attention output ``[n, heads · d]`` of packed rows.

    ``q`` ``[n, heads, d]``, ``k``/``v`` ``[n, kv_heads, d]``: the rows' tokens concatenated, ``lens`` tokens
    each; query head ``h`` reads key/value head ``h // (heads / kv_heads)``. ``prefix``: keys/values
    ``([kv_heads, skip, d], [kv_heads, skip, d])`` before every row (a shared prompt head), seen by every
    token, whose positions continue after them. ``linear(x, w)`` is ``x @ w.T`` and ``linear_add(x, w,
    r)`` is ``r + x @ w.T`` (the decoder's GEMMs). ``mask``: :func:`causal_mask` for these rows (built
    here when None; a caller running several layers over the same rows builds it once).
    """
    import torch

    n, heads, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    skip = prefix[0].shape[1] if prefix is not None else 0
    stacked = torch.empty(kv_heads, n, group, d, dtype=q.dtype, device=q.device)
    torch.mul(q.view(n, kv_heads, group, d).transpose(0, 1), scaling, out=stacked)
    if mask is None:
        mask = causal_mask(max(lens), group, skip, q.device)
    out = q.new_empty(n, kv_heads, group, d)
    at = 0
    for length in lens:
        for h in range(kv_heads):
            keys, values = k[at : at + length, h], v[at : at + length, h]
            if skip:
                keys, values = torch.cat([prefix[0][h], keys]), torch.cat([prefix[1][h], values])
            for start in range(0, length, QUERY_BLOCK):
                end = min(length, start + QUERY_BLOCK)
                seen = skip + end
                scores = linear_add(stacked[h, at + start : at + end].view((end - start) * group, d), keys[:seen],
                                    mask[start:end, :, :seen].reshape((end - start) * group, seen))
                probs = torch.softmax(scores, dim=-1)
                out[at + start : at + end, h] = linear(probs, values[:seen].t()).view(end - start, group, d)
        at += length
    return out.view(n, heads * d)
