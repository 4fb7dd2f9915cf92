"""The packed decoder (real tokens only, fused projections, last layer at the last token) against the naive
oracle: the Hugging Face model run on each sequence alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deita.models.forward import SharedPrefix, final_hidden_states
from deita.models.packed import PackedDecoder, packed_decoder, unsupported_reason
from deita.selection.scorers import DeitaScorer

from tests.test_scorer_prefix import alpaca_turns


def sharp_model(arch: str, **overrides):
    """A random 3-layer Llama/Mistral with large weights (attention far from uniform, so a wrong mask,
    position or key moves the result by much more than rounding); GQA with 2 query heads per K/V head."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3,
                  tie_word_embeddings=False)
    common.update(overrides)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=common.pop("sliding_window", 512), **common))
    return model.eval()


def oracle(model, seqs, head=()):
    """Final hidden state at the last token of ``head + seq``, each sequence alone through the HF model."""
    with torch.inference_mode():
        return torch.stack([final_hidden_states(model, torch.tensor([list(head) + list(s)]))[0, -1] for s in seqs])


SEQS = [[5, 9, 2, 7, 7, 30, 41, 3, 8, 1, 60, 2, 4], [11], [3, 4, 5, 6, 7, 8], [90, 2], [12, 13, 14, 15, 16, 17, 18]]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("onednn,gemm_attention", [(False, False), (True, False), (True, True)])
def test_packed_last_hidden_equals_each_sequence_alone(monkeypatch, arch, onednn, gemm_attention):
    """Rows of different lengths (one of a single token) packed in one batch, with and without a shared
    prefix, through MKL's or oneDNN's GEMM, the attention through SDPA or as per-row GEMMs: each row's final
    hidden state equals the HF forward of that row alone."""
    from deita.models import packed
    from deita.models.packed import onednn_linear_works

    # these rows are short: the GEMM attention runs only when its per-row threshold is lowered to them
    monkeypatch.setattr(packed, "GEMM_ATTENTION_MIN_TOKENS", 1 if gemm_attention else 10**6)
    model = sharp_model(arch)
    want, head = oracle(model, SEQS), [1, 20, 21, 22, 23]
    want_head = oracle(model, SEQS, head)
    assert packed_decoder(model, 512) is not None
    dec = PackedDecoder(model, onednn=onednn)
    assert dec.onednn == (onednn and onednn_linear_works())
    with torch.inference_mode():
        got = dec.last_hidden(SEQS)
        got_head = dec.last_hidden(SEQS, SharedPrefix(model, head))
        alone = torch.cat([dec.last_hidden([s]) for s in SEQS])
    assert want.abs().max() > 1.0
    assert (got - want).abs().max() < 1e-5
    assert (got_head - want_head).abs().max() < 1e-5
    assert (alone - want).abs().max() < 1e-5
    # The check can fail: another prefix, or the rows run whole, differ by far more than the tolerance.
    assert (got_head - want).abs().max() > 1e-2
    with torch.inference_mode():
        other = dec.last_hidden(SEQS, SharedPrefix(model, [1, 20, 21, 22, 24]))
    assert (other - want_head).abs().max() > 1e-3


def test_fused_weights_are_views_and_leave_the_hf_forward_unchanged():
    model = sharp_model("llama")
    ids = torch.tensor([SEQS[0]])
    with torch.inference_mode():
        before = model(ids).logits
    PackedDecoder(model)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == mlp.gate_proj.weight.untyped_storage().data_ptr()
    assert attn.v_proj.weight.shape == (2 * 12, 48) and mlp.up_proj.weight.shape == (80, 48)
    with torch.inference_mode():
        after = model(ids).logits
    assert (after - before).abs().max() < 1e-5


def test_models_outside_the_path_are_named_and_left_to_the_hf_forward():
    assert unsupported_reason(sharp_model("llama"), 512) is None
    assert "biases" in unsupported_reason(sharp_model("llama", attention_bias=True), 512)
    assert "hidden_act" in unsupported_reason(sharp_model("llama", hidden_act="gelu"), 512)
    assert "sliding window 64" in unsupported_reason(sharp_model("mistral", sliding_window=64), 512)
    assert packed_decoder(sharp_model("mistral", sliding_window=64), 512) is None

    class Adapted(torch.nn.Linear):  # stands in for a LoRA or quantised layer: more than weight @ x
        pass

    model = sharp_model("llama")
    old = model.model.layers[2].mlp.up_proj
    model.model.layers[2].mlp.up_proj = Adapted(old.in_features, old.out_features, bias=False)
    assert "Adapted, not plain torch.nn.Linear" in unsupported_reason(model, 512)


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_packed_scores_equal_the_hf_forward_scores(arch, prefix_cache, tiny_llama, tiny_mistral, shared_data):
    """The scorer through the packed decoder against the scorer through the HF forward (same prefix
    setting), complexity and quality, with small batches so rows of different lengths share batches."""
    model_dir = tiny_llama if arch == "llama" else tiny_mistral
    turns = alpaca_turns(shared_data, 12) + [("", ""), ("x", "y")]
    for kind in ("complexity", "quality"):
        fast = DeitaScorer(kind, str(model_dir), device="cpu", show_progress=False, max_tokens_per_batch=256,
                           prefix_cache=prefix_cache)
        slow = DeitaScorer(kind, str(model_dir), device="cpu", show_progress=False, max_tokens_per_batch=256,
                           prefix_cache=prefix_cache, packed=False)
        assert fast.packed is not None and slow.packed is None
        got, want = np.array(fast.score_turns(turns).scores), np.array(slow.score_turns(turns).scores)
        assert np.abs(got - want).max() < 1e-5


def test_packed_fallback_rows_run_whole_and_score_the_same(tiny_llama, shared_data):
    """A prefix that reaches into the instruction: rows that do not start with it run whole through the
    packed decoder (no prefix), the others from the prefix, and all equal the HF whole-prompt scores."""
    turns = alpaca_turns(shared_data, 20)
    fast = DeitaScorer("complexity", str(tiny_llama), device="cpu", show_progress=False, max_tokens_per_batch=256)
    slow = DeitaScorer("complexity", str(tiny_llama), device="cpu", show_progress=False, max_tokens_per_batch=256,
                       prefix_cache=False, packed=False)
    seqs = [fast.encode(q, a)[0] for q, a in turns]
    longer = seqs[0][: len(fast.prefix) + 2]
    fast.prefix = SharedPrefix(fast.model, longer)
    got, want = np.array(fast.score_turns(turns).scores), np.array(slow.score_turns(turns).scores)
    assert 0 < fast.prefix_stats["fallback_rows"] < len(turns) and fast.prefix_stats["rows"] > 0
    assert np.abs(got - want).max() < 1e-5


def test_packed_batches_count_real_tokens():
    from deita.models.batching import length_sorted_batches

    lengths = [10, 3, 7, 2, 9]
    packed = length_sorted_batches(lengths, 12, padded=False)
    assert packed == [[0], [4], [2, 1, 3]]
    assert all(sum(lengths[i] for i in b) <= 12 for b in packed)
    assert length_sorted_batches(lengths, 12) == [[0], [4], [2], [1, 3]]


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_packed_clm_last_embeddings_equal_the_hf_forward(arch, tiny_llama, tiny_mistral):
    """``clm_last`` through the packed decoder against the HF forward, whole conversations and from the
    vicuna head's keys/values; ``clm_mean`` keeps the HF forward."""
    from deita.selection.embedders import EMBEDDERS, render_vicuna_dialogue
    from deita.selection.embedders.render import template_head
    from tests.test_embedders import TEXTS

    path = str(tiny_llama if arch == "llama" else tiny_mistral)
    texts = TEXTS + [render_vicuna_dialogue([{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}])
                     for t in TEXTS]
    head = template_head("vicuna_v1.1")
    for prefix_text in (None, head):
        fast = EMBEDDERS.get("clm_last")(path, batch_size=3, show_progress=False, prefix_text=prefix_text)
        slow = EMBEDDERS.get("clm_last")(path, batch_size=3, show_progress=False, prefix_text=prefix_text,
                                         packed=False)
        assert fast.packed is not None and slow.packed is None
        got, want = fast.embed_texts(texts, normalize=False), slow.embed_texts(texts, normalize=False)
        assert np.abs(got - want).max() < 1e-5
        if prefix_text is not None:  # the plain texts run whole, the rendered conversations from the head
            assert fast.prefix_stats["rows"] == len(TEXTS) and fast.prefix_stats["fallback_rows"] == len(TEXTS)
    assert EMBEDDERS.get("clm_mean")(path, show_progress=False).packed is None
