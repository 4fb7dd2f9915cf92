"""DEITA scorers: exact prompts, score math vs hand softmax, batching invariance, truncation, errors, turns."""

from __future__ import annotations

import math

import pytest
import torch

from deita.selection.scorers import DeitaScorer, ScoringError, evol_score, score_rows
from deita.models.batching import length_sorted_batches, pad_batch
from deita.selection.scorers.expected_digit import digit_token_ids, expected_digit_score, scores_from_logits
from deita.selection.scorers.prompts import COMPLEXITY_TEMPLATE, QUALITY_TEMPLATE, field_spans, render_prompt
from deita.selection.scorers.truncation import keep_counts
from deita.selection.scorers.turns import ConversationError, conversation_turns

TEXTS = [
    "Write a poem about the sea.",
    "Explain why the sky is blue, in detail, for a curious user who wants a good answer. " * 3,
    "2+2?",
    "List the first three steps to sort a list in python and return the sorted data.",
    "Translate this sentence.",
    "Describe a function that prints every number from 1 to 100 " * 5,
]


def test_prompt_strings_are_byte_exact():
    assert COMPLEXITY_TEMPLATE == (
        'You are a helpful assistant. Please identify the complexity score of the following user query. '
        '\n##Query: {instruction}  \n##Complexity: '
    )
    assert QUALITY_TEMPLATE == (
        'You are a helpful assistant. Please identify the quality score of the Response corresponding to the '
        'Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: '
    )
    assert render_prompt("complexity", "Q{x}") == COMPLEXITY_TEMPLATE.replace("{instruction}", "Q{x}")
    text, spans = field_spans("quality", "ab", "cde")
    assert text == render_prompt("quality", "ab", "cde")
    assert [text[s:e] for s, e in spans] == ["ab", "cde"]


def test_expected_digit_matches_hand_softmax():
    logits = [0.3, -1.2, 2.0, 0.0, 1.1, -0.4]
    exps = [math.exp(v) for v in logits]
    hand = sum((k + 1) * e / sum(exps) for k, e in enumerate(exps))
    assert float(expected_digit_score(torch.tensor(logits, dtype=torch.float64))) == pytest.approx(hand, abs=1e-12)
    assert float(expected_digit_score(torch.zeros(6))) == pytest.approx(3.5, abs=1e-12)
    # probabilities k/21 give sum k^2/21 = 91/21
    assert float(expected_digit_score(torch.log(torch.arange(1.0, 7.0)))) == pytest.approx(91 / 21, abs=1e-6)
    vocab = torch.full((2, 10), -5.0)
    vocab[0, [7, 2, 9, 0, 4, 5]] = torch.tensor(logits)
    out = scores_from_logits(vocab, [7, 2, 9, 0, 4, 5])
    assert float(out[0]) == pytest.approx(hand, abs=1e-6) and float(out[1]) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="6 digit logits"):
        expected_digit_score(torch.zeros(5))


class _SentencePieceLike:
    """Encodes a lone digit as [word-start, digit] like LLaMA's tokenizer."""

    unk_token_id = 0
    vocab = {"▁": 29871, "1": 29896, "2": 29906, "3": 29941, "4": 29946, "5": 29945, "6": 29953}

    def encode(self, text, add_special_tokens=False):
        return [29871, self.vocab[text]]

    def convert_tokens_to_ids(self, tok):
        return self.vocab.get(tok, 0)

    def decode(self, ids):
        return " " if ids == [29871] else "?"


def test_digit_ids_from_tokenizer(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert digit_token_ids(tok) == [tok.convert_tokens_to_ids(d) for d in "123456"]
    # LLaMA: the bare pieces, i.e. the reference's hard-coded ids
    assert digit_token_ids(_SentencePieceLike()) == [29896, 29906, 29941, 29946, 29945, 29953]

    class Split(_SentencePieceLike):
        def encode(self, text, add_special_tokens=False):
            return [11, 12, 13]

    with pytest.raises(ValueError, match="not a single token"):
        digit_token_ids(Split())


def test_length_sorted_batches_and_padding():
    batches = length_sorted_batches([3, 10, 4, 10, 1], max_tokens=20)
    assert batches == [[1, 3], [2, 0, 4]]
    assert sorted(i for b in batches for i in b) == list(range(5))
    assert length_sorted_batches([50, 2], max_tokens=10) == [[0], [1]]
    ids, mask, pos, last = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert last.tolist() == [2, 2]
    ids, mask, pos, last = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and last.tolist() == [2, 0] and mask.tolist()[1] == [1, 0, 0]


@pytest.fixture(scope="module", params=["llama", "mistral"])
def scorer_pair(request, tiny_llama, tiny_mistral):
    path = tiny_llama if request.param == "llama" else tiny_mistral
    return {k: DeitaScorer(k, str(path), max_length=256, max_tokens_per_batch=400, show_progress=False)
            for k in ("complexity", "quality")}


def _reference_generate_score(scorer, prompt):
    """The reference path: encode with special tokens, generate 2 tokens, scores[0][0], softmax of 6 (on a
    freshly loaded model with the stock attention: the scorer's own runs the suffix attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(scorer.path, dtype=torch.float32).eval()
    assert model.config._attn_implementation == "sdpa"
    ids = scorer.tokenizer.encode(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=2, num_return_sequences=1, do_sample=False,
                                    return_dict_in_generate=True, output_scores=True)
    return float(expected_digit_score(out.scores[0][0][scorer.digit_ids]))


def test_batched_equals_unbatched_and_reference(scorer_pair):
    turns = [(t, TEXTS[(i + 2) % len(TEXTS)]) for i, t in enumerate(TEXTS)]
    for kind, scorer in scorer_pair.items():
        batched = scorer.score_turns(turns).scores
        seqs = [scorer.encode(*t)[0] for t in turns]
        assert len(length_sorted_batches([len(s) for s in seqs], scorer.max_tokens_per_batch)) < len(seqs)
        alone = [scorer.score_ids([s])[0] for s in seqs]
        assert max(abs(a - b) for a, b in zip(batched, alone)) < 1e-5
        assert len(set(round(b, 6) for b in batched)) > 1  # the scores actually vary
        for t, b in list(zip(turns, batched))[:3]:
            prompt = render_prompt(kind, t[0], t[1])
            assert b == pytest.approx(_reference_generate_score(scorer, prompt), abs=1e-5)


def test_truncation_keeps_head_and_tail_and_is_counted(tiny_llama):
    scorer = DeitaScorer("quality", str(tiny_llama), max_length=120, show_progress=False)
    tok = scorer.tokenizer
    long_q, long_a = "explain the data " * 60, "the answer is good " * 30
    ids, cut = scorer.encode(long_q, long_a)
    full = tok(render_prompt("quality", long_q, long_a))["input_ids"]
    assert cut and len(ids) == 120 and len(full) > 120
    tail = tok(" \n##Quality: ")["input_ids"]
    assert ids[-len(tail) + 1:] == full[-len(tail) + 1:]  # the tail tokens survive unchanged
    assert tok.decode(ids).endswith("\n##Quality: ")
    assert tok.decode(ids).startswith(render_prompt("quality", "", "").split("#Question#")[0])
    short_ids, short_cut = scorer.encode("hi", "hello")
    assert not short_cut and short_ids == tok(render_prompt("quality", "hi", "hello"))["input_ids"]
    rows = [{"id": "long", "messages": [{"role": "user", "content": long_q}, {"role": "assistant", "content": long_a}]},
            {"id": "short", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    cols = score_rows(rows, scorer)
    assert cols["quality_truncated"] == [1, 0] and cols["quality_error"] == ["", ""]


def test_keep_counts_water_fills():
    assert keep_counts([10, 3], 13) == [10, 3]
    assert keep_counts([10, 3], 9) == [6, 3]
    assert keep_counts([10, 10], 9) == [5, 4]
    assert keep_counts([4], 0) == [0]


def test_error_policy_raise_or_nan(tiny_llama):
    scorer = DeitaScorer("complexity", str(tiny_llama), max_length=256, show_progress=False)
    rows = [{"id": "ok", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            {"id": "bad", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    with pytest.raises(ConversationError, match="'bad', message 1"):
        score_rows(rows, scorer)
    cols = score_rows(rows, scorer, on_error="nan")
    assert math.isfinite(cols["complexity_turns"][0][0]) and math.isnan(cols["complexity_turns"][1][0])
    assert "bad" in cols["complexity_error"][1] and cols["complexity_error"][0] == ""
    tiny = DeitaScorer("complexity", str(tiny_llama), max_length=8, show_progress=False)
    with pytest.raises(ScoringError, match="row 'ok' turn 0"):
        score_rows(rows[:1], tiny)
    cols = score_rows(rows[:1], tiny, on_error="nan")
    assert math.isnan(cols["complexity_turns"][0][0]) and "template alone" in cols["complexity_error"][0]


def test_turns_and_multi_turn_evol(tiny_llama):
    msgs = [{"role": "system", "content": "be nice"},
            {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": "q2 is longer"}, {"role": "assistant", "content": "a2"},
            {"role": "user", "content": "q3 unanswered"}]
    assert conversation_turns(msgs) == [("q1", "a1"), ("q2 is longer", "a2"), ("q3 unanswered", "")]
    assert conversation_turns([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "q"}]) == [("q", "")]
    with pytest.raises(ConversationError, match="no user message"):
        conversation_turns([{"role": "system", "content": "x"}], "r0")
    c = DeitaScorer("complexity", str(tiny_llama), show_progress=False)
    q = DeitaScorer("quality", str(tiny_llama), show_progress=False)
    row = {"id": "mt", "messages": msgs}
    ct = score_rows([row], c)["complexity_turns"][0]
    qt = score_rows([row], q)["quality_turns"][0]
    hand_c = [c.score_ids([c.encode(i)[0]])[0] for i, _ in conversation_turns(msgs)]
    hand_q = [q.score_ids([q.encode(i, r)[0]])[0] for i, r in conversation_turns(msgs)]
    assert ct == pytest.approx(hand_c, abs=1e-6) and qt == pytest.approx(hand_q, abs=1e-6)
    assert len(ct) == 3
    assert evol_score(ct, qt) == pytest.approx(sum(a * b for a, b in zip(hand_c, hand_q)), abs=1e-5)
    with pytest.raises(ValueError, match="differ in length"):
        evol_score([1.0], [1.0, 2.0])
