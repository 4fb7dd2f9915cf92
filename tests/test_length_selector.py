"""The length baseline selector."""

from __future__ import annotations

import pytest

from deita.selection.base import SELECTORS
from deita.selection.methods.length import LengthSelectionConfig, LengthSelector, row_length
from deita.selection.stage import rank_and_cut


def _conv(i, *turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for k, text in enumerate(turns):
        msgs.append({"role": "user" if k % 2 == 0 else "assistant", "content": text})
    return {"id": f"r{i}", "messages": msgs}


ROWS = [
    _conv(0, "hi", "a b c", system="a very long system prompt that never counts"),  # resp 5 chars / 3 words
    _conv(1, "tell me", "yes"),  # resp 3 / 1 ; instr 7 / 2
    _conv(2, "q one", "abcdefgh", "q two", "xy"),  # resp 8+2=10 / 2 ; instr 10 / 4
    _conv(3, "x", "hello"),  # resp 5 / 1 (ties with row 0 in chars)
    _conv(4, "only a question"),  # resp 0 ; instr 15 / 3
]


def _select(budget=3, **kw):
    """The method's ranking, cut by the select stage's budget rule: (result, selected pool positions)."""
    return rank_and_cut(LengthSelector(LengthSelectionConfig(budget=budget, **kw)), ROWS, None)


def test_registered_and_discoverable():
    assert SELECTORS.get("length") is LengthSelector
    assert LengthSelector.config_class().method == "length"


def test_response_chars_ties_by_index():
    res, order = _select(budget=3)
    assert res.table["length_response_chars"] == [5, 3, 10, 5, 0]
    assert order == [2, 0, 3]  # 10, then the 5-tie in pool order
    assert res.ranking == [2, 0, 3, 1, 4]  # the method ranks every row; the stage cuts


def test_words_instruction_total_multiturn_sum():
    assert _select(budget=-1, unit="words")[0].table["length_response_words"] == [3, 1, 2, 1, 0]
    r, order = _select(budget=2, field="instruction")
    assert r.table["length_instruction_chars"] == [2, 7, 10, 1, 15]
    assert order == [4, 2]
    t, order = _select(budget=-1, field="total", unit="words")
    assert t.table["length_total_words"] == [4, 3, 6, 2, 3]
    assert order == [2, 0, 1, 4, 3]


def test_budget_edges():
    assert _select(budget=0)[1] == []
    assert _select(budget=100)[1] == [2, 0, 3, 1, 4]
    with pytest.raises(ValueError, match="budget"):
        _select(budget=-5)


@pytest.mark.parametrize("kw,match", [({"field": "prompt"}, "selection.field"), ({"unit": "tokens"}, "selection.unit")])
def test_bad_config_values(kw, match):
    with pytest.raises(ValueError, match=match):
        LengthSelector(LengthSelectionConfig(**kw))


def test_bad_row_is_named():
    rows = ROWS + [{"id": "broken", "messages": [{"role": "user", "content": None}]}]
    with pytest.raises(ValueError, match=r"row 5 \(id='broken'\), message 0"):
        LengthSelector(LengthSelectionConfig()).rank(rows, None, None)
    with pytest.raises(ValueError, match="'messages' list"):
        row_length({"id": "x"}, "response", "chars")
