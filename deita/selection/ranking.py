"""The one ranking rule every selection method uses: descending by score, ties by pool index, NaN excluded."""

from __future__ import annotations

from typing import Any

import numpy as np


def score_order(scores: Any) -> np.ndarray:
    """Pool indices sorted by score, highest first.

    Ties are broken by the original (pool) index, ascending: a stable sort, so the order is reproducible
    across platforms and library versions. The DEITA reference sorts with pandas' default (unstable)
    quicksort, so its order among tied scores is arbitrary; this is a deliberate, documented difference.
    NaN marks a row that could not be scored or that a method's rule excludes (e.g. IFD above
    ``max_ifd``): it is left out of the order entirely (the DEITA reference sorts NaN last and could still
    select it). ``+inf``/``-inf`` sort as values.
    Returns an int64 array of length ``#non-NaN scores``.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"score_order: expected a 1-D array of scores, found shape {s.shape}")
    valid = np.flatnonzero(~np.isnan(s))
    return valid[np.argsort(-s[valid], kind="stable")].astype(np.int64)
