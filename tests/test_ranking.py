"""The one ranking rule (descending score, ties by pool index, NaN excluded) against a naive oracle."""

from __future__ import annotations

import numpy as np
import pytest

from deita.selection.ranking import score_order


def _oracle(scores) -> list[int]:
    """Sort (−score, index) pairs of the non-NaN scores: the rule written out the slow way."""
    return [i for _, i in sorted((-s, i) for i, s in enumerate(scores) if not np.isnan(s))]


def test_score_order_descending_ties_by_index_nan_excluded():
    s = [2.0, np.nan, 5.0, 2.0, 5.0, -1.0, np.nan, 2.0]
    assert score_order(s).tolist() == [2, 4, 0, 3, 7, 5]
    assert score_order([np.nan, np.nan]).tolist() == []
    assert score_order([]).dtype == np.int64
    assert score_order([-np.inf, 1.0, np.inf]).tolist() == [2, 1, 0]


@pytest.mark.parametrize("seed", range(5))
def test_score_order_equals_the_oracle_on_many_ties(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 5, size=300).astype(float)  # heavy ties
    s[rng.random(300) < 0.1] = np.nan
    assert score_order(s).tolist() == _oracle(s)


def test_score_order_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        score_order(np.zeros((2, 2)))
