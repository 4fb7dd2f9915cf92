"""The one ranking rule every selection method uses: descending by score, NaN excluded, ties by pool index
(``tie_break='stable'``) or as the DEITA reference's pandas sort leaves them (``tie_break='reference'``)."""

from __future__ import annotations

from typing import Any

import numpy as np

TIE_BREAKS = ("stable", "reference")
"""How rows with equal scores are ordered: 'stable' = by pool index, ascending (the default);
'reference' = as ``DataFrame.sort_values(ascending=False)`` orders them (pandas' default quicksort)."""


def score_order(scores: Any, tie_break: str = "stable") -> np.ndarray:
    """Pool indices sorted by score, highest first.

    ``tie_break='stable'`` (default): ties are broken by the original (pool) index, ascending, so the
    order is reproducible across platforms and library versions.

    ``tie_break='reference'``: ties are ordered exactly as the DEITA reference orders them, which sorts
    with ``df.sort_values("final_score", ascending=False)``, i.e. pandas' ``nargsort`` with numpy's
    default, unstable ``kind='quicksort'``: reverse the non-NaN values (and their indices), argsort them
    ascending with quicksort, and reverse the result. Since it is numpy's own quicksort, the order equals
    pandas' on the same machine and numpy version; numpy dispatches that quicksort to SIMD sorts
    (x86-simd-sort, AVX-512/AVX2) on some CPUs, so the order among ties can differ between machines,
    exactly as the reference's own order does.

    NaN marks a row that could not be scored or that a method's rule excludes (e.g. IFD above
    ``max_ifd``): it is left out of the order entirely under both tie breaks (the DEITA reference sorts NaN
    last and could still select it; leaving NaN out does not change the order pandas gives the others).
    ``+inf``/``-inf`` sort as values. Returns an int64 array of length ``#non-NaN scores``.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"score_order: tie_break must be one of {list(TIE_BREAKS)}, got {tie_break!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"score_order: expected a 1-D array of scores, found shape {s.shape}")
    valid = np.flatnonzero(~np.isnan(s))
    if tie_break == "stable":
        return valid[np.argsort(-s[valid], kind="stable")].astype(np.int64)
    backwards = valid[::-1]
    return backwards[s[backwards].argsort(kind="quicksort")][::-1].astype(np.int64)
