"""The LM layer (deita/models/): one dtype parser, one pad-id fallback, log-probs at chosen positions."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from deita.models.loading import pad_id_of, resolve_dtype
from tests.helpers import REPO_ROOT


def test_dtype_spellings_are_the_same_everywhere():
    import torch

    for names, dtype in ((("float32", "fp32"), torch.float32), (("bfloat16", "bf16"), torch.bfloat16),
                         (("float16", "fp16"), torch.float16)):
        for name in names:
            assert resolve_dtype(name) is dtype and resolve_dtype(name, allow_auto=True) is dtype
    assert resolve_dtype("auto", allow_auto=True) == "auto"
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("auto")  # scoring never takes the checkpoint's dtype implicitly
    with pytest.raises(ValueError, match="'float64'"):
        resolve_dtype("float64")


class _Tok:
    def __init__(self, pad=None, unk=None, eos=None):
        self.pad_token_id, self.unk_token_id, self.eos_token_id = pad, unk, eos


def test_pad_id_fallback_order():
    assert pad_id_of(_Tok(pad=5, unk=1, eos=2)) == 5
    assert pad_id_of(_Tok(unk=1, eos=2)) == 1
    assert pad_id_of(_Tok(eos=2)) == 2
    assert pad_id_of(_Tok()) == 0


def test_token_logprobs_at_chosen_positions_match_full_log_softmax(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.models.forward import token_logprobs

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    texts = ["the quick brown fox jumps over the lazy dog", "a b c", "one two three four five six seven"]
    seqs = []
    for k, t in enumerate(texts):
        ids = tok.encode(t)
        seqs.append((ids, [p for p in range(1, len(ids)) if (p + k) % 2 == 0]))  # gaps, not a suffix
    seqs.append((tok.encode("nothing chosen"), []))
    batched = token_logprobs(model, seqs, batch_size=4, pad_id=pad_id_of(tok))
    for (ids, pos), got in zip(seqs, batched):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        assert got.shape == (len(pos),)
        if pos:
            assert np.abs(got - np.array([float(ref[p - 1, ids[p]]) for p in pos])).max() < 1e-5
    with pytest.raises(ValueError, match="chosen positions"):
        token_logprobs(model, [(seqs[0][0], [0])])


def test_no_selection_method_imports_another_methods_internals():
    out = subprocess.run(["grep", "-rn", "from deita.selection.nuggets", "deita/selection/methods/ifd.py",
                          "deita/selection/perplexity.py"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == ""
    out = subprocess.run(["grep", "-rln", "deita.selection.scorers", "deita/selection/embedders"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert "clm.py" not in out.stdout
