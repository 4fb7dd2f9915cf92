"""IFD / Superfiltering: math by hand, reference token spans, batched == unbatched, method end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deita.selection import perplexity as P


def test_ifd_math_by_hand():
    lp = [math.log(0.5), math.log(0.25)]
    assert P.mean_nll(lp) == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert math.isnan(P.mean_nll([]))
    assert P.ifd_score(1.0, 2.0, "ppl") == pytest.approx(math.exp(-1.0))
    assert P.ifd_score(1.0, 2.0, "loss") == pytest.approx(0.5)
    assert math.isnan(P.ifd_score(math.nan, 2.0))


def test_ifd_ranking_rules():
    from deita.selection.methods.ifd import ifd_ranking

    s = [0.5, 1.0, 0.9, np.nan, 1.2, 0.9]
    assert ifd_ranking(s, max_ifd=1.0, strict=True, rate=None, rate_base="pool") == [2, 5, 0]
    assert ifd_ranking(s, max_ifd=1.0, strict=False, rate=None, rate_base="kept") == [1, 2, 5, 0]
    assert ifd_ranking(s, max_ifd=1.0, strict=True, rate=0.5, rate_base="pool") == [2, 5, 0]  # 6 × 0.5
    assert ifd_ranking(s, max_ifd=1.0, strict=False, rate=0.5, rate_base="kept") == [1, 2]  # 4 × 0.5
    assert ifd_ranking(s, max_ifd=0.9, strict=False, rate=None, rate_base="kept") == [2, 5, 0]


def test_prompts():
    assert P.render_prompt("Do", "x", "none") == "Do\nx\n"
    assert P.render_prompt("Do", "", "none") == "Do\n"
    assert P.render_prompt("Do", "", "alpaca").endswith("### Instruction:\nDo\n\n### Response:")


#: The references' prompts, written out: Cherry_LLM data_analysis.py (stanford_alpaca's PROMPT_DICT) and
#: Superfiltering code_ifd/data_analysis.py (PROMPT_DICT_NONE); the with-input one iff input != "".
REFERENCE_PROMPTS = {
    "alpaca": ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.\n\n"
               "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
               "Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n\n### Instruction:\n{instruction}\n\n### Response:"),
    "none": ("{instruction}\n{input}\n", "{instruction}\n"),
}
ALPACA_RECORDS = [
    {"instruction": "Translate the sentence to French.", "input": "Good morning, friend.", "output": "Bonjour, ami."},
    {"instruction": "Give one tip for sleeping well.", "input": "", "output": "Keep a fixed bedtime."},
]


def _reference_prompt(record: dict, prompt: str) -> str:
    with_input, no_input = REFERENCE_PROMPTS[prompt]
    return (with_input if record["input"] != "" else no_input).format_map(record)


@pytest.mark.parametrize("method", ["ifd", "superfilter"])
def test_alpaca_rows_build_the_reference_prompts_byte_for_byte(method, tiny, tmp_path):
    """Rows read through the data layer give IFD (Cherry) and Superfiltering the references' prompts, the
    with-input one for the row with an input, and the conditional token ids the references score."""
    import json

    from deita.data.fields import row_fields
    from deita.data.loading import load_rows
    from deita.selection.methods.ifd import IfdSelectionConfig, SuperfilterSelectionConfig

    tok, _ = tiny
    cfg = IfdSelectionConfig() if method == "ifd" else SuperfilterSelectionConfig()
    (tmp_path / "alpaca.json").write_text(json.dumps(ALPACA_RECORDS))
    rows = load_rows(str(tmp_path / "alpaca.json")).rows
    for record, row in zip(ALPACA_RECORDS, rows):
        instruction, inp, output = row_fields(row)
        prompt = P.render_prompt(instruction, inp, cfg.prompt)
        assert prompt == _reference_prompt(record, cfg.prompt)
        (cond, start), _ = P.ifd_sequences(tok, instruction, inp, output, prompt=cfg.prompt,
                                           max_length=cfg.max_length, direct=cfg.direct)
        whole = _reference_prompt(record, cfg.prompt) + record["output"]
        assert cond == tok.encode(whole, truncation=True, max_length=cfg.max_length)
        assert start == len(tok.encode(whole[: whole.rfind(record["output"])]))
    joined = {"id": "j", "messages": rows[0]["messages"]}  # no split (a messages row): the no-input prompt
    assert P.render_prompt(*row_fields(joined)[:2], cfg.prompt) == REFERENCE_PROMPTS[cfg.prompt][1].format(
        instruction="Translate the sentence to French.\n\nGood morning, friend.")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    torch.set_num_threads(prev)


def test_token_spans(tiny):
    tok, _ = tiny
    (c, cs), (d, ds) = P.ifd_sequences(tok, "Write a poem", "", "The sun is good", prompt="none",
                                       max_length=1024, direct="superfilter")
    assert c == tok.encode("Write a poem\nThe sun is good") and cs == len(tok.encode("Write a poem\n"))
    assert d == tok.encode("The sun is good") and ds == 1
    (c, cs), (d, ds) = P.ifd_sequences(tok, "Write a poem", "", "The sun is good", prompt="alpaca",
                                       max_length=512, direct="cherry")
    assert d == tok.encode("### Response:The sun is good") and ds == len(tok.encode("### Response:"))
    _, (d, _) = P.ifd_sequences(tok, "Write " * 600, "", "x y", prompt="alpaca", max_length=512, direct="cherry")
    assert d == []  # no room left: Cherry skips the row


def test_batched_equals_unbatched_and_hand_logprobs(tiny):
    import torch

    tok, model = tiny
    texts = ["Write a poem\nThe sun is good and the day is long", "List\nOne two", "Explain the data value please\n1 2 3"]
    from deita.models.forward import token_logprobs

    seqs = [P.scored_suffix(tok.encode(t), 3) for t in texts]
    batched = token_logprobs(model, seqs, batch_size=3)
    single = token_logprobs(model, seqs, batch_size=1)
    for a, b, (ids, pos) in zip(batched, single, seqs):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        hand = [float(ref[j - 1, ids[j]]) for j in pos]
        assert np.abs(a - b).max() < 1e-5 and np.abs(a - np.array(hand)).max() < 1e-5


@pytest.mark.parametrize("method", ["ifd", "superfilter"])
def test_method_end_to_end(method, tiny_llama, tmp_path):
    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext
    from deita.selection.stage import rank_and_cut

    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"Write {w} list"},
                                        {"role": "assistant", "content": f"The {w} list is one two {i}"}]}
            for i, w in enumerate(["data", "code", "story", "poem", "email", "sort"])]
    cls = SELECTORS.get(method)
    cfg = cls.config_class(model="tiny", sample_rate=0.5, batch_size=4, budget=-1)
    ctx = SelectionContext(cache=ContentCache(tmp_path), dist=DistInfo(), data_fingerprint="fp",
                           model_resolver=lambda ref: str(tiny_llama))
    res, order = rank_and_cut(cls(cfg), rows, ctx)
    ifd = np.array(res.table["ifd"])
    assert len(ifd) == 6 and not np.isnan(ifd).any()
    assert all(ifd[order[k]] >= ifd[order[k + 1]] for k in range(len(order) - 1))
    assert all(ifd[i] <= 1 for i in order) and len(order) <= 3
    again, _ = rank_and_cut(cls(cfg), rows, ctx)
    assert again.table["ifd"] == res.table["ifd"] and ctx.cache.stats["hits"]
