"""Pure golden-score math and the Nuggets selection rules (numpy only, no model)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from deita.selection.ranking import score_order


def answer_span(query_len: int, full_len: int, max_length: Optional[int]) -> tuple[int, int]:
    """[start, end) of the scored answer tokens inside an anchor truncated to ``max_length`` tokens.

    ``query_len``/``full_len`` are the untruncated token counts of the query and of query+answer. Tokens
    beyond ``max_length`` are cut, so ``end = min(full_len, max_length)``; when the query alone fills the
    window the span is empty (``start >= end``) and the anchor scores 0.
    """
    end = full_len if max_length is None else min(full_len, max_length)
    return query_len, max(end, query_len)


def win_matrix(zero_shot: np.ndarray, one_shot: np.ndarray) -> np.ndarray:
    """Boolean [N, M]: anchor ``j`` improves with candidate ``i`` (strict ``>``; a tie is a loss)."""
    zero_shot = np.asarray(zero_shot, dtype=np.float64)
    one_shot = np.asarray(one_shot, dtype=np.float64)
    if one_shot.ndim != 2 or zero_shot.shape != (one_shot.shape[1],):
        raise ValueError(f"expected zero_shot [M] and one_shot [N, M], got {zero_shot.shape} and {one_shot.shape}")
    return one_shot > zero_shot[None, :]


def golden_scores(zero_shot: np.ndarray, one_shot: np.ndarray) -> np.ndarray:
    """GS per candidate: the fraction of anchors whose answer log-prob sum rises with the candidate."""
    wins = win_matrix(zero_shot, one_shot)
    if wins.shape[1] == 0:
        raise ValueError("golden score needs at least one anchor, got 0")
    return wins.sum(axis=1) / wins.shape[1]


def select_candidates(
    scores: np.ndarray,
    *,
    threshold: Optional[float] = None,
    top_k: Optional[int] = None,
    top_fraction: Optional[float] = None,
) -> list[int]:
    """Apply exactly one rule to GS: ``threshold`` (keep GS > t, strict, as ``top_sample.py``), ``top_k``
    rows, or ``top_fraction`` of the pool (``int(n * fraction)`` rows). Returns indices best first (ties
    by index, NaN never kept: :func:`deita.selection.ranking.score_order`).
    """
    given = [name for name, v in (("threshold", threshold), ("top_k", top_k), ("top_fraction", top_fraction))
             if v is not None]
    if len(given) != 1:
        raise ValueError(f"Nuggets selection needs exactly one of threshold/top_k/top_fraction, got {given or 'none'}")
    scores = np.asarray(scores, dtype=np.float64)
    ranked = score_order(scores).tolist()
    if threshold is not None:
        return [i for i in ranked if scores[i] > threshold]
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        return ranked[:top_k]
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    return ranked[: int(len(scores) * top_fraction)]
