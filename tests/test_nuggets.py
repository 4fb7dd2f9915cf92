"""Nuggets golden score: text format, pure math, reference token ids, fast path == oracle == reference loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deita.data.fields import row_fields
from deita.selection.nuggets.golden import answer_span, golden_scores, select_candidates, win_matrix
from deita.selection.nuggets.prompts import nuggets_texts


def test_prompt_format_is_the_reference_template():
    q, full = nuggets_texts("  Add.  ", " 2 and 3 ", " 5 \n")
    assert q == "Instruction:\nAdd.\nInput:\n2 and 3\nResponse:\n"
    assert full == q + "5"
    q, full = nuggets_texts("Say hi", "", "hi")
    assert (q, full) == ("Instruction:\nSay hi\nResponse:\n", "Instruction:\nSay hi\nResponse:\nhi")


def test_row_mapping():
    row = {"id": "a", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "Do X\n\nwith Y"},
                                   {"role": "assistant", "content": "done"}, {"role": "user", "content": "more"}]}
    assert row_fields(row) == ("Do X\n\nwith Y", "", "done")
    assert row_fields({**row, "instruction": "Do X", "input": "with Y"}) == ("Do X", "with Y", "done")
    assert row_fields({"instruction": "i", "input": "", "output": "o"}) == ("i", "", "o")
    with pytest.raises(ValueError, match="row 3 .*id 'b'.*roles"):
        row_fields({"id": "b", "messages": [{"role": "user", "content": "q"}]}, 3)


def test_golden_math_by_hand():
    zero = np.array([-10.0, -5.0, 0.0])
    one = np.array([[-9.0, -5.0, 0.0], [-11.0, -4.0, 1.0], [-10.0, -5.0, 0.0]])
    assert win_matrix(zero, one).tolist() == [[True, False, False], [False, True, True], [False, False, False]]
    assert golden_scores(zero, one).tolist() == [1 / 3, 2 / 3, 0.0]  # ties are losses
    with pytest.raises(ValueError):
        golden_scores(zero, one[:, :2])


def test_answer_span_truncation():
    assert answer_span(10, 50, 200) == (10, 50)
    assert answer_span(10, 250, 200) == (10, 200)
    assert answer_span(200, 250, 200) == (200, 200)  # query fills the window: nothing scored
    assert answer_span(230, 250, 200) == (230, 230)
    assert answer_span(10, 250, None) == (10, 250)


def test_selection_rules():
    gs = np.array([0.9, 0.85, 0.86, 0.9, np.nan, 0.1])
    assert select_candidates(gs, threshold=0.85) == [0, 3, 2]  # strict >
    assert select_candidates(gs, top_k=2) == [0, 3]
    assert select_candidates(gs, top_fraction=0.5) == [0, 3, 2]
    with pytest.raises(ValueError, match="exactly one"):
        select_candidates(gs, threshold=0.5, top_k=1)


# ----------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards are dominated by thread overhead on a loaded 2-core machine (measured 20x)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def llama_like(tiny_llama):
    """Tiny llama whose tokenizer prepends BOS like LLaMA's, plus the reference [PAD] resize."""
    import torch
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return tok, model


@pytest.fixture(scope="module")
def texts(shared_data):
    data = json.loads((shared_data / "instruct" / "llamafactory_alpaca_en_demo.json").read_text())
    out = [nuggets_texts(d["instruction"], d["input"], d["output"]) for d in data[:7]]
    long_query = nuggets_texts("word " * 260, "", "short answer")  # query alone >= 200 tokens
    return out + [long_query]


def test_reference_pad_resize(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.selection.nuggets.tokens import add_reference_pad

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    n = model.get_output_embeddings().weight.shape[0]
    assert add_reference_pad(model, tok) == 1
    w = model.get_output_embeddings().weight
    assert w.shape[0] == n + 1 and tok.pad_token == "[PAD]"
    assert torch.allclose(w[-1], w[:-1].mean(0))
    assert add_reference_pad(model, tok) == 0


def test_token_ids_per_mode(llama_like, texts):
    from deita.selection.nuggets.tokens import encode_anchor, encode_demo, zero_shot_prefix

    tok, _ = llama_like
    bos = tok.bos_token_id
    q, full = texts[0]
    assert encode_demo(tok, full, "faithful")[0] == bos  # tok(demo) with special tokens
    assert encode_demo(tok, full, "faithful") == encode_demo(tok, full, "clean")
    assert zero_shot_prefix(tok, "faithful") == [] and zero_shot_prefix(tok, "clean") == [bos]
    a = encode_anchor(tok, q, full, 200)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert list(a.body) == ids[:200] and bos not in a.body
    assert a.start == len(tok(q, add_special_tokens=False)["input_ids"]) and a.end == min(len(ids), 200)
    long = encode_anchor(tok, *texts[-1], 200)
    assert len(long.body) == 200 and long.n_scored == 0
    assert encode_anchor(tok, *texts[-1], None).n_scored > 0


@pytest.mark.parametrize("mode,max_len", [("faithful", 200), ("clean", 48)])
def test_fast_equals_oracle_and_reference_loop(llama_like, texts, mode, max_len):
    from deita.selection.nuggets import oracle, scoring
    from deita.selection.nuggets.tokens import add_reference_pad, encode_anchor, encode_demo, zero_shot_prefix

    tok, model = llama_like
    if mode == "faithful":
        add_reference_pad(model, tok)
    anchors = [encode_anchor(tok, q, f, max_len) for q, f in [texts[i] for i in (0, 2, 5, 7)]]
    demos = [encode_demo(tok, f, mode) for _, f in texts[:6]]
    zp = zero_shot_prefix(tok, mode)
    zero_o = oracle.oracle_sums(model, [zp], anchors)[0]
    one_o = oracle.oracle_sums(model, demos, anchors)
    zero_f = scoring.zero_shot_sums(model, anchors, zp, batch_size=3)
    one_f = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=3, candidate_batch_size=4)
    zero_r, one_r = oracle.reference_loop_sums(model, demos, anchors, zp, pad_to=max_len)
    assert np.abs(zero_f - zero_o).max() < 1e-4 and np.abs(one_f - one_o).max() < 1e-4
    # the reference loop sums float32 log-probs in float32 (as the reference): rounding grows with |sum|
    assert np.allclose(zero_r, zero_o, rtol=1e-6, atol=1e-4) and np.allclose(one_r, one_o, rtol=1e-6, atol=1e-4)
    gs = golden_scores(zero_o, one_o)
    assert np.array_equal(golden_scores(zero_f, one_f), gs)
    assert np.array_equal(golden_scores(zero_r, one_r), gs)
    if mode == "faithful":
        assert zero_o[3] == 0.0 and (one_o[:, 3] == 0.0).all()  # long query: never a win
        zero_32 = scoring.zero_shot_sums(model, anchors, zp, batch_size=3, accumulate="float32")
        one_32 = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=3, candidate_batch_size=4,
                                       accumulate="float32")
        assert np.allclose(zero_32, zero_r, rtol=1e-6, atol=1e-4) and np.allclose(one_32, one_r, rtol=1e-6, atol=1e-4)
        assert np.array_equal(golden_scores(zero_32, one_32), gs)
        assert (np.float32(one_32) == one_32).all()  # float32 values, as the reference's .item()
    assert 0.0 < gs.mean() < 1.0  # the test is not vacuous


def test_reference_row_sums_are_the_references_float32_sums(llama_like):
    """Given the same hidden states, the faithful sums equal the reference's computation bit for bit:
    log_softmax over a [B, L, V] logits tensor, gather, one float32 torch.sum per row."""
    import torch

    from deita.selection.nuggets.scoring import reference_row_sums

    _, model = llama_like
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 150, model.config.hidden_size, generator=g)
    tokens = torch.randint(0, model.config.vocab_size, (2, 150), generator=g)
    spans = [(3, 140), (10, 75)]  # [start, end) of the scored tokens per row
    with torch.no_grad():
        lp = torch.log_softmax(model.get_output_embeddings()(hidden), dim=-1)  # as the reference: whole tensor
        want = [torch.sum(torch.gather(lp[r, s - 1 : e - 1], -1, tokens[r, s:e, None]).squeeze(-1)).item()
                for r, (s, e) in enumerate(spans)]
        rows = torch.cat([hidden[r, s - 1 : e - 1] for r, (s, e) in enumerate(spans)])
        targets = torch.cat([tokens[r, s:e] for r, (s, e) in enumerate(spans)])
        got = reference_row_sums(model, rows, targets, [e - s for s, e in spans], chunk=64)
    assert got.tolist() == want
    assert got.tolist() != [float(x) for x in torch.tensor([lp[r, s - 1 : e - 1].gather(-1, tokens[r, s:e, None]).double().sum()
                                                          for r, (s, e) in enumerate(spans)])]  # float64 sums differ


def test_batch_sizes_do_not_change_sums(llama_like, texts):
    from deita.selection.nuggets import scoring
    from deita.selection.nuggets.tokens import encode_anchor, encode_demo

    tok, model = llama_like
    anchors = [encode_anchor(tok, q, f, 64) for q, f in texts[:5]]
    demos = [encode_demo(tok, f, "clean") for _, f in texts[:5]]
    a = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=1, candidate_batch_size=1)
    b = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=5, candidate_batch_size=5)
    assert np.abs(a - b).max() < 1e-4


# ------------------------------------------------------------------------------------ fast-path plan
def test_plan_trims_shares_prefix_and_skips_empty_spans():
    from deita.selection.nuggets.plan import common_prefix_len, plan_anchors
    from deita.selection.nuggets.tokens import AnchorTokens

    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2 and common_prefix_len([]) == 0
    a = AnchorTokens((1, 2, 3, 4, 5, 6), 3, 6)  # scores 4,5,6 from positions 2,3,4
    b = AnchorTokens((1, 2, 9, 8), 2, 4)  # scores 9,8 from positions 1,2
    empty = AnchorTokens((1, 2, 3), 3, 3)  # query fills the window
    plan = plan_anchors([a, empty, b])
    assert plan.active == (0, 2)
    assert plan.prefix == (1,)  # common prefix (1, 2) capped at b.start - 1 = 1: position 1 is scored
    assert plan.own == ((2, 3, 4, 5), (2, 9))  # last token of each anchor is never an input
    assert plan.first == (1, 0) and plan.targets == ((4, 5, 6), (9, 8))
    same = plan_anchors([a, a])
    assert same.prefix == (1, 2) and same.own == ((3, 4, 5), (3, 4, 5)) and same.first == (0, 0)
    assert plan_anchors([a, b], share_prefix=False).prefix == ()
    assert plan_anchors([empty]).active == ()
    with pytest.raises(ValueError, match="starts at token 0"):
        plan_anchors([AnchorTokens((1, 2), 0, 2)])


def test_length_batches_is_the_optimal_contiguous_split():
    import itertools

    from deita.selection.nuggets.plan import length_batches

    rng = np.random.default_rng(0)
    for trial in range(30):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 8))).tolist()
        max_rows, overhead = int(rng.integers(1, 5)), int(rng.integers(0, 80))
        batches = length_batches(lengths, max_rows, overhead)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert all(1 <= len(b) <= max_rows for b in batches)

        def cost(bs):
            return sum(len(b) * max(lengths[i] for i in b) + overhead for b in bs)

        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(  # brute force over every contiguous split of the sorted order
            cost([order[s:e] for s, e in zip((0,) + cuts, cuts + (len(order),))])
            for r in range(len(order))
            for cuts in itertools.combinations(range(1, len(order)), r)
            if all(e - s <= max_rows for s, e in zip((0,) + cuts, cuts + (len(order),)))
        )
        assert cost(batches) == best, (lengths, max_rows, overhead)
    with pytest.raises(ValueError):
        length_batches([3], 0)


@pytest.mark.parametrize("mode", ["faithful", "clean"])
def test_fast_path_edge_anchors_equal_oracle(llama_like, texts, mode):
    """Duplicate anchors (shared prefix reaches the first scored position), a long-query anchor, ragged
    demonstrations sharing a forward, and a lone anchor: all equal the oracle."""
    from deita.selection.nuggets import oracle, scoring
    from deita.selection.nuggets.tokens import encode_anchor, encode_demo, zero_shot_prefix

    tok, model = llama_like
    a0 = encode_anchor(tok, *texts[1], 200)
    anchors = [a0, a0, encode_anchor(tok, *texts[-1], 200), encode_anchor(tok, *texts[3], 40)]
    demos = [encode_demo(tok, f, mode) for _, f in texts[:3]] + [[tok.bos_token_id]]
    zp = zero_shot_prefix(tok, mode)
    one_o = oracle.oracle_sums(model, demos, anchors)
    zero_o = oracle.oracle_sums(model, [zp], anchors)[0]
    for cb, ab in ((1, 1), (3, 2), (4, 4)):
        one_f = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=ab, candidate_batch_size=cb)
        assert np.abs(one_f - one_o).max() < 1e-4, (cb, ab)
        assert (one_f[:, 2] == 0.0).all()  # long query: not run, scores exactly 0
    assert np.abs(scoring.zero_shot_sums(model, anchors, zp, batch_size=2) - zero_o).max() < 1e-4
    single = scoring.one_shot_sums(model, demos[:1], anchors[3:])
    assert np.abs(single - one_o[:1, 3:]).max() < 1e-4
