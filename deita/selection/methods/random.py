"""The random baseline: a seeded uniform sample of the pool."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Optional

from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector


@dataclass
class RandomSelectionConfig(SelectionConfig):
    """Uniform random sample of ``budget`` rows, drawn with ``random.Random(seed)``."""

    method: str = "random"


@SELECTORS.register("random")
class RandomSelector(Selector):
    """Ranks ``limit`` rows (all rows without one) drawn uniformly at random; the order is the draw order.

    It draws exactly the rows it needs, ``random.Random(seed).sample(range(n), min(limit, n))``: Python's
    sample of k rows is not a prefix of its sample of n rows, so drawing all and cutting would change
    which rows a given budget and seed select.
    """

    config_class = RandomSelectionConfig

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:
        """Draw the sample; ``random_draw`` is each row's position in the draw (None when not drawn)."""
        n = len(rows)
        ranking = _random.Random(self.cfg.seed).sample(range(n), n if limit is None else min(limit, n))
        draw = [None] * n
        for position, i in enumerate(ranking):
            draw[i] = position
        return SelectionResult(table={"random_draw": draw}, ranking=ranking, shortfall=f"the pool has {n} rows")
