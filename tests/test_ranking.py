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


def _pandas_reference(scores) -> list[int]:
    """The DEITA reference's order: ``df.sort_values("final_score", ascending=False)`` (pandas' default
    quicksort), NaN rows (which pandas puts last) dropped."""
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"final_score": np.asarray(scores, dtype=np.float64)})
    ordered = df.sort_values("final_score", ascending=False)
    return [int(i) for i in ordered.index[ordered["final_score"].notna()]]


@pytest.mark.parametrize("n,levels", [(7, 3), (16, 2), (17, 4), (300, 5), (5000, 40), (70000, 9)])
def test_reference_tie_break_equals_pandas_sort_values(n, levels):
    rng = np.random.default_rng(n)
    s = rng.integers(0, levels, size=n).astype(float) * 0.25  # heavy ties, as a pool of duplicate rows
    s[rng.random(n) < 0.05] = np.nan
    got = score_order(s, tie_break="reference")
    assert got.dtype == np.int64 and got.tolist() == _pandas_reference(s)
    assert sorted(got.tolist()) == sorted(score_order(s).tolist())  # the same rows
    assert (np.diff(s[got]) <= 0).all()  # still descending


def test_reference_tie_break_is_not_the_stable_order_on_ties():
    """Against the stable default: the pandas order puts tied rows out of index order (else the option
    would be a no-op and the test above could not tell them apart)."""
    s = np.repeat([3.0, 1.0, 2.0], 400)
    ref = score_order(s, tie_break="reference").tolist()
    assert ref == _pandas_reference(s) and ref != score_order(s).tolist()
    assert score_order([1.0, 2.0, 0.5], tie_break="reference").tolist() == [1, 0, 2]  # no ties: one order


def test_unknown_tie_break_is_refused():
    with pytest.raises(ValueError, match="tie_break"):
        score_order([1.0], tie_break="random")
