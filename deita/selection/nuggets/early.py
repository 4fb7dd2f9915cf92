"""Deciding Nuggets candidates early, exactly: stop running anchors once a candidate is certainly rejected.

Pure numpy, no model. A candidate's golden score is ``wins / M`` over the ``M`` anchors (a pair whose
one-shot sum is not strictly above the anchor's zero-shot sum is a loss). While only some anchors have
run, ``wins / M <= GS <= (M - losses) / M``. A rule rejects a candidate as soon as that upper bound puts
it out for certain, and the remaining anchors of that candidate are never run (their sums stay NaN).

Only rejections stop a candidate: a candidate the rule may accept runs every anchor, so every accepted
row has its exact golden score, and the ranking (its order, a budget cut, the diversity filter's scan
order) is exactly the full computation's. At useful thresholds few rows are accepted, so this costs little.

* :class:`ThresholdRule` (keep ``GS > t``): rejects once ``losses > M - need``, ``need`` the fewest wins
  with ``need / M > t`` (computed with the same float division as :func:`golden.golden_scores`).
* :class:`TopKRule` (keep the first ``k`` of :func:`deita.selection.ranking.score_order`): within one chunk
  of candidates, rejects a candidate once ``k`` candidates of that chunk with exact scores rank above it
  for certain (higher score, or equal score and a lower pool index: the stable tie order). Such a
  candidate is not in the pool's top ``k`` either, so the pool's top ``k`` all have exact scores.

Anchors run in batches fixed by the full anchor plan (:mod:`deita.selection.nuggets.plan`); the batches
are visited in an order drawn from ``selection.seed`` (:func:`batch_order`), the same for every candidate.
"""

from __future__ import annotations

import heapq
from typing import Optional

import numpy as np


def batch_order(n_batches: int, seed: int) -> list[int]:
    """The fixed, seeded order in which anchor batches are visited (a permutation of ``range(n_batches)``)."""
    return np.random.default_rng(seed).permutation(n_batches).tolist()


def wins_losses(zero: np.ndarray, row: np.ndarray) -> tuple[int, int]:
    """Wins and losses among the anchors run so far (``row`` holds NaN for the anchors not run)."""
    ran = ~np.isnan(row)
    wins = int((row[ran] > zero[ran]).sum())
    return wins, int(ran.sum()) - wins


def wins_needed(threshold: float, m: int) -> int:
    """Fewest wins ``w`` with ``w / m > threshold`` (as the full path compares), ``m + 1`` when none can."""
    scores = np.arange(m + 1) / m
    ok = np.flatnonzero(scores > threshold)
    return int(ok[0]) if ok.size else m + 1


class ThresholdRule:
    """``GS > threshold``: a candidate is rejected once it has more losses than the threshold allows."""

    def __init__(self, zero: np.ndarray, threshold: float):
        self.zero = np.asarray(zero, dtype=np.float64)
        self.m = len(self.zero)
        self.allowed_losses = self.m - wins_needed(threshold, self.m)

    def rejected(self, index: int, row: np.ndarray) -> bool:
        """True once candidate ``index`` (pool index) with sums ``row`` (NaN: not run) cannot pass."""
        return wins_losses(self.zero, row)[1] > self.allowed_losses

    def finished(self, index: int, row: np.ndarray) -> None:
        """Candidate ``index`` ran every anchor (nothing to remember for a fixed threshold)."""


class TopKRule:
    """Top ``k`` by golden score, ties by pool index: reject a candidate once ``k`` exact candidates seen
    in the same chunk certainly rank above it."""

    def __init__(self, zero: np.ndarray, k: int):
        self.zero = np.asarray(zero, dtype=np.float64)
        self.m = len(self.zero)
        self.k = int(k)
        self._best: list[tuple[float, int]] = []  # min-heap of (score, -index): the k best exact so far

    def _kth(self) -> Optional[tuple[float, int]]:
        """(score, index) of the k-th best exact candidate so far, None while there are fewer than k."""
        if self.k <= 0:
            return (np.inf, -1)
        if len(self._best) < self.k:
            return None
        score, neg = self._best[0]
        return score, -neg

    def rejected(self, index: int, row: np.ndarray) -> bool:
        """True once ``k`` exact candidates rank above every score candidate ``index`` can still reach."""
        kth = self._kth()
        if kth is None:
            return False
        high = (self.m - wins_losses(self.zero, row)[1]) / self.m
        return kth[0] > high or (kth[0] == high and kth[1] < index)

    def finished(self, index: int, row: np.ndarray) -> None:
        """Candidate ``index`` ran every anchor: its exact score joins the k best when it ranks there."""
        if self.k <= 0:
            return
        item = (wins_losses(self.zero, row)[0] / self.m, -index)
        if len(self._best) < self.k:
            heapq.heappush(self._best, item)
        elif item > self._best[0]:
            heapq.heapreplace(self._best, item)


def make_rule(zero: np.ndarray, *, threshold: Optional[float], k: Optional[int]):
    """The rule for a threshold or a top-k selection (exactly one given)."""
    if (threshold is None) == (k is None):
        raise ValueError("early decision needs exactly one of threshold or k")
    return ThresholdRule(zero, threshold) if threshold is not None else TopKRule(zero, k)


def bounds(zero: np.ndarray, one: np.ndarray) -> dict[str, np.ndarray]:
    """Per candidate of ``one`` [N, M] (NaN: pair not run): ``wins``, ``low`` = wins / M, ``high`` =
    (M - losses) / M, ``exact`` (every anchor ran; then low == high == GS) and ``golden_score`` (GS where
    exact, NaN elsewhere)."""
    zero = np.asarray(zero, dtype=np.float64)
    one = np.asarray(one, dtype=np.float64)
    m = one.shape[1]
    if m == 0:
        raise ValueError("golden score needs at least one anchor, got 0")
    ran = ~np.isnan(one)
    wins = (ran & (one > zero[None, :])).sum(axis=1)
    losses = ran.sum(axis=1) - wins
    exact = ran.all(axis=1)
    low, high = wins / m, (m - losses) / m
    return {"wins": wins, "low": low, "high": high, "exact": exact, "golden_score": np.where(exact, low, np.nan)}
