"""The GEMM row attention of the packed decoder against a naive float64 oracle: each row's causal softmax
attention computed alone, head by head, over the shared prefix's keys and its own."""

from __future__ import annotations

import pytest
import torch

from deita.models import row_attention
from deita.models.packed import PackedDecoder, onednn_linear_works, onednn_prepack_works


def naive_attention(q, k, v, lens, scaling, prefix=None):
    """Per row and query head: softmax(q k^T * scaling) v over keys 0..skip+t, in float64."""
    heads, kv_heads = q.shape[1], k.shape[1]
    out, at = [], 0
    for length in lens:
        for t in range(length):
            row = []
            for h in range(heads):
                g = h // (heads // kv_heads)
                keys, values = k[at : at + t + 1, g].double(), v[at : at + t + 1, g].double()
                if prefix is not None:
                    keys = torch.cat([prefix[0][g].double(), keys])
                    values = torch.cat([prefix[1][g].double(), values])
                weights = torch.softmax(keys @ q[at + t, h].double() * scaling, dim=0)
                row.append(weights @ values)
            out.append(torch.cat(row))
        at += length
    return torch.stack(out)


def linear(x, w):
    return x @ w.t()


def linear_add(x, w, r):
    return r + x @ w.t()


@pytest.mark.parametrize("with_prefix", [False, True])
@pytest.mark.parametrize("block", [3, 128])
def test_row_attention_equals_each_row_alone(monkeypatch, with_prefix, block):
    """Rows of 1..11 tokens, GQA (3 query heads per K/V head), with and without a prefix, with query blocks
    smaller than the rows (each block sees the keys up to its last token only) and larger."""
    monkeypatch.setattr(row_attention, "QUERY_BLOCK", block)
    g = torch.Generator().manual_seed(0)
    lens, heads, kv_heads, d = [11, 1, 4, 7], 6, 2, 8
    n = sum(lens)
    q, k, v = (torch.randn(n, h, d, generator=g) * 2 for h in (heads, kv_heads, kv_heads))
    prefix = None
    if with_prefix:
        prefix = (torch.randn(kv_heads, 5, d, generator=g) * 2, torch.randn(kv_heads, 5, d, generator=g))
    got = row_attention.causal_row_attention(q, k, v, lens, 0.3, linear, linear_add, prefix)
    want = naive_attention(q, k, v, lens, 0.3, prefix)
    assert got.shape == (n, heads * d)
    assert (got.double() - want).abs().max() < 1e-5
    # It can fail: the keys of the next row, or no prefix, change the result far beyond rounding.
    assert (naive_attention(q, k, v, [n], 0.3, prefix) - want).abs().max() > 1e-2
    if with_prefix:
        assert (naive_attention(q, k, v, lens, 0.3) - want).abs().max() > 1e-2


def test_causal_mask_hides_exactly_the_later_keys():
    mask = row_attention.causal_mask(3, 2, 2)
    assert mask.shape == (3, 2, 5)
    seen = mask[:, 0] == 0
    assert seen.tolist() == [[True, True, True, False, False], [True, True, True, True, False], [True] * 5]
    assert torch.equal(mask[:, 0], mask[:, 1])
    assert torch.isneginf(mask[~(mask == 0)]).all()


@pytest.mark.skipif(not onednn_linear_works(), reason="this torch has no oneDNN fp32 linear")
def test_prepacked_weights_give_the_same_hidden_states():
    """oneDNN's prepacked weights change the layout, not the arithmetic: the same hidden states as the
    plain weights, to fp32 rounding (oneDNN may block a product differently)."""
    from tests.test_packed import SEQS, sharp_model

    plain = PackedDecoder(sharp_model("llama"), onednn=True, prepack=False)
    packed = PackedDecoder(sharp_model("llama"), onednn=True, prepack=True)
    assert not plain.prepacked and packed.prepacked == onednn_prepack_works()
    with torch.inference_mode():
        a, b = plain.last_hidden(SEQS), packed.last_hidden(SEQS)
    assert (a - b).abs().max() < 1e-5 * a.abs().max()
    # It can fail: the decoder of another model's weights is far off.
    other = PackedDecoder(sharp_model("llama", initializer_range=0.31), onednn=True, prepack=True)
    with torch.inference_mode():
        assert (other.last_hidden(SEQS) - a).abs().max() > 1e-3 * a.abs().max()
