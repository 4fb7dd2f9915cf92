"""Embedders: exact vicuna rendering, padding-side invariance, pooling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from deita.data.templates import render_text
from deita.selection.embedders import EMBEDDERS, render_rows, render_vicuna_dialogue
from deita.selection.scorers.turns import ConversationError

CONV = [
    {"role": "system", "content": "ignored system"},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Sort [3,1]"},
    {"role": "assistant", "content": "[1, 3]"},
]
TEXTS = ["short", "a somewhat longer text about the data " * 4, "x", "write a python function to sort a list " * 9,
         "explain the question and give a good answer", "one two three four five six"]


def test_vicuna_rendering_is_exact():
    assert render_vicuna_dialogue(CONV) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: Hi there ASSISTANT: Hello!</s>"
        "USER: Sort [3,1] ASSISTANT: [1, 3]</s>"
    )
    # the same FastChat renderer as SFT's vicuna_v1.1 template, minus the row's own system message
    assert render_vicuna_dialogue(CONV) == render_text(CONV[1:], "vicuna_v1.1")
    # trailing unanswered user turn; empty message renders "ROLE:" like FastChat
    tail = render_vicuna_dialogue([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}])
    assert tail.endswith("questions. USER: q ASSISTANT:")
    assert render_rows([{"id": "r", "messages": CONV}], "only_answer") == ["Hello!\n[1, 3]"]
    with pytest.raises(ConversationError, match="'bad'"):
        render_rows([{"id": "bad", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
                    "vicuna_v1.1")


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_clm_last_left_right_and_unbatched_agree(arch, tiny_llama, tiny_mistral):
    path = str(tiny_llama if arch == "llama" else tiny_mistral)
    right = EMBEDDERS.get("clm_last")(path, batch_size=4, padding_side="right", show_progress=False)
    left = EMBEDDERS.get("clm_last")(path, batch_size=4, padding_side="left", show_progress=False)
    one = EMBEDDERS.get("clm_last")(path, batch_size=1, show_progress=False)
    r, l, o = (e.embed_texts(TEXTS, normalize=False) for e in (right, left, one))
    assert r.dtype == np.float32 and r.shape == (len(TEXTS), right.model.config.hidden_size)
    assert np.abs(r - o).max() < 1e-5 and np.abs(l - o).max() < 1e-5
    # oracle: the full LM's last-layer hidden state at the last token of each text, alone
    import torch

    ids = one.tokenize(TEXTS)
    with torch.no_grad():
        for i, s in enumerate(ids):
            hs = one.model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
            assert np.abs(hs - o[i]).max() < 1e-5
    n = right.embed_texts(TEXTS)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)
    assert np.allclose(n, o / np.linalg.norm(o, axis=1, keepdims=True), atol=1e-6)


def test_clm_truncates_right_at_max_length(tiny_llama):
    emb = EMBEDDERS.get("clm_last")(str(tiny_llama), max_length=16, show_progress=False)
    ids = emb.tokenize([TEXTS[3]])[0]
    full = emb.tokenizer(TEXTS[3])["input_ids"]
    assert len(ids) == 16 and ids == full[:16]


def test_clm_mean_pools_real_tokens_only(tiny_llama):
    import torch

    batched = EMBEDDERS.get("clm_mean")(str(tiny_llama), batch_size=6, padding_side="left", show_progress=False)
    out = batched.embed_texts(TEXTS, normalize=False)
    with torch.no_grad():
        for i, s in enumerate(batched.tokenize(TEXTS)):
            hs = batched.model(torch.tensor([s]), output_hidden_states=True).hidden_states[-1][0]
            assert np.abs(hs.mean(0).numpy() - out[i]).max() < 1e-5


def test_sentence_transformers_minilm():
    from deita.models.resolve import packaged_minilm_dir

    try:
        path = packaged_minilm_dir()
    except ImportError as exc:
        pytest.skip(str(exc))
    emb = EMBEDDERS.get("sentence_transformers")(str(path), batch_size=4, device="cpu", show_progress=False)
    out = emb.embed_texts(["the cat sat on the mat", "a cat is sitting on a mat", "stock prices fell sharply"])
    assert out.shape == (3, 384) and out.dtype == np.float32
    sims = out @ out.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    import warnings

    from deita.selection.embedders.pool import embedding_dim

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated sentence-transformers call
        assert embedding_dim(emb) == 384


def test_template_head():
    from deita.selection.embedders.render import template_head

    head = template_head("vicuna_v1.1")
    assert head.endswith("questions. USER: ") and render_vicuna_dialogue(CONV).startswith(head)
    assert template_head("plain") is None and template_head("only_answer") is None


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("pooling,side", [("last", "right"), ("mean", "right"), ("last", "left"), ("mean", "left")])
def test_clm_prefix_cache_equals_whole_conversations(arch, pooling, side, tiny_llama, tiny_mistral):
    from deita.selection.embedders.render import template_head

    path = str(tiny_llama if arch == "llama" else tiny_mistral)
    convs = [[{"role": "user", "content": t}, {"role": "assistant", "content": TEXTS[(i + 1) % len(TEXTS)]}]
             for i, t in enumerate(TEXTS)]
    texts = [render_vicuna_dialogue(c) for c in convs]
    kind = f"clm_{pooling}"
    fast = EMBEDDERS.get(kind)(path, batch_size=3, padding_side=side, show_progress=False,
                               prefix_text=template_head("vicuna_v1.1"))
    whole = EMBEDDERS.get(kind)(path, batch_size=3, padding_side=side, show_progress=False)
    got, want = fast.embed_texts(texts, normalize=False), whole.embed_texts(texts, normalize=False)
    assert fast.prefix is not None and len(fast.prefix) > 20
    assert fast.prefix_stats == {"tokens": len(fast.prefix), "rows": len(texts), "fallback_rows": 0}
    assert np.abs(got - want).max() < 1e-5
    # cut inside the head: no row has tokens of its own after the prefix, so every row runs whole, counted
    short = EMBEDDERS.get(kind)(path, max_length=len(fast.prefix), padding_side=side, show_progress=False,
                                prefix_text=template_head("vicuna_v1.1"))
    cut = EMBEDDERS.get(kind)(path, max_length=len(fast.prefix), padding_side=side, show_progress=False)
    assert np.abs(short.embed_texts(texts[:2], normalize=False) - cut.embed_texts(texts[:2], normalize=False)).max() < 1e-5
    assert short.prefix_stats["fallback_rows"] == 2 and short.prefix_stats["rows"] == 0
