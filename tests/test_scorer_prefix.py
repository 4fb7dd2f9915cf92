"""Shared-prefix KV for the DEITA scorers: the template head runs once, each prompt runs only its own
tokens, and the scores equal the whole-prompt scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deita.models.forward import SUFFIX_ATTENTION
from deita.selection.scorers import DeitaScorer

ALPACA = "instruct/llamafactory_alpaca_en_demo.json"


def alpaca_turns(shared_data, n: int) -> list[tuple[str, str]]:
    raw = json.loads((shared_data / ALPACA).read_text())[:n]
    return [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"]) for r in raw]


def pair(model_dir, kind: str):
    """A prefix-cache scorer (the packed decoder; the suffix attention is installed only for the HF path)
    and a whole-prompt scorer (stock SDPA attention)."""
    fast = DeitaScorer(kind, str(model_dir), device="cpu", show_progress=False, max_tokens_per_batch=256)
    full = DeitaScorer(kind, str(model_dir), device="cpu", show_progress=False, max_tokens_per_batch=256,
                       prefix_cache=False)
    assert fast.packed is not None and fast.model.config._attn_implementation == "sdpa"
    hf = DeitaScorer(kind, str(model_dir), device="cpu", show_progress=False, packed=False)
    assert hf.model.config._attn_implementation == SUFFIX_ATTENTION
    assert full.model.config._attn_implementation == "sdpa"
    return fast, full


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("kind", ["complexity", "quality"])
def test_prefix_kv_scores_equal_whole_prompt_scores(arch, kind, tiny_llama, tiny_mistral, shared_data):
    from deita.models.forward import SharedPrefix

    model_dir = tiny_llama if arch == "llama" else tiny_mistral
    turns = alpaca_turns(shared_data, 12) + [("", ""), ("x", "y")]
    fast, full = pair(model_dir, kind)
    assert fast.prefix is not None and len(fast.prefix) > 10 and full.prefix is None
    got = np.array(fast.score_turns(turns).scores)
    want = np.array(full.score_turns(turns).scores)
    assert fast.prefix_stats == {"tokens": len(fast.prefix), "rows": len(turns), "fallback_rows": 0}
    assert np.abs(got - want).max() < 1e-5
    # The check can fail: keys/values of another prefix of the same length move the scores.
    other = [t + 1 if k > 0 else t for k, t in enumerate(fast.prefix.ids)]
    real_ids = fast.prefix.ids
    fast.prefix = SharedPrefix(fast.model, other)
    fast.prefix.ids = real_ids  # rows still split at the real tokens, but run from the wrong K/V
    wrong = np.array(fast.score_turns(turns).scores)
    assert np.abs(wrong - want).max() > 1e-4


def test_rows_that_do_not_start_with_the_prefix_tokens_run_whole_and_are_counted(tiny_llama, shared_data):
    """A prefix that reaches into the instruction (the template head plus the first row's first two
    instruction tokens) stands in for a tokenizer that merges across the boundary: rows whose tokens do
    not start with it fall back to the whole prompt, are counted, and score the same."""
    from deita.models.forward import SharedPrefix

    turns = alpaca_turns(shared_data, 20)
    fast, full = pair(tiny_llama, "complexity")
    seqs = [fast.encode(q, a)[0] for q, a in turns]
    longer = seqs[0][: len(fast.prefix) + 2]
    fast.prefix = SharedPrefix(fast.model, longer)
    fast.prefix_stats.update(tokens=len(longer))
    expected_fallback = sum(1 for s in set(map(tuple, seqs)) if list(s[: len(longer)]) != longer)
    got = np.array(fast.score_turns(turns).scores)
    want = np.array(full.score_turns(turns).scores)
    assert 0 < expected_fallback < len(set(map(tuple, seqs)))
    assert fast.prefix_stats["fallback_rows"] == expected_fallback
    assert fast.prefix_stats["rows"] == len(set(map(tuple, seqs))) - expected_fallback
    assert np.abs(got - want).max() < 1e-5


def test_prefix_split_needs_exact_tokens_and_a_token_of_its_own(tiny_llama):
    from deita.models.forward import SharedPrefix

    fast, _ = pair(tiny_llama, "complexity")
    p = SharedPrefix(fast.model, [1, 5, 6])
    assert p.split([1, 5, 6, 7, 8]) == [7, 8]
    assert p.split([1, 5, 9, 7]) is None  # merged at the boundary: another token where the prefix ends
    assert p.split([1, 5, 6]) is None  # nothing of its own to run


def test_suffix_attention_equals_masked_attention_after_a_cache():
    """The suffix attention (zero query rows in front, causal SDPA) against SDPA with the explicit mask."""
    import torch
    import torch.nn.functional as F

    from deita.models.forward import _suffix_causal_attention

    class Grouped:
        num_key_value_groups = 2

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, h, n, 8, generator=g) for h, n in ((4, 5), (2, 12), (2, 12)))
    got, _ = _suffix_causal_attention(Grouped(), q, k, v, None, scaling=0.3)
    mask = torch.ones(5, 12, dtype=torch.bool).tril(12 - 5)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask,
                                          scale=0.3).transpose(1, 2)
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="sliding window"):
        _suffix_causal_attention(Grouped(), q, k, v, None, sliding_window=8)


def test_template_prefix_is_the_head_without_its_boundary_token(tiny_llama):
    from deita.selection.scorers.prompts import TEMPLATES

    fast, _ = pair(tiny_llama, "quality")
    head = TEMPLATES["quality"].split("{instruction}", 1)[0]
    assert fast.prefix.ids == fast.tokenizer(head)["input_ids"][:-1]
