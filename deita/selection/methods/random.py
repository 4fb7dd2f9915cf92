"""The random baseline: a seeded uniform sample of the pool."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass

from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector


@dataclass
class RandomSelectionConfig(SelectionConfig):
    """Uniform random sample of ``budget`` rows, drawn with ``random.Random(seed)``."""

    method: str = "random"


@SELECTORS.register("random")
class RandomSelector(Selector):
    """Selects ``budget`` rows uniformly at random; the order is the draw order."""

    config_class = RandomSelectionConfig

    def select(self, rows: list[dict], ctx: SelectionContext) -> SelectionResult:
        n = len(rows)
        k = n if self.cfg.budget < 0 else min(self.cfg.budget, n)
        order = _random.Random(self.cfg.seed).sample(range(n), k)
        draw = [None] * n
        for position, i in enumerate(order):
            draw[i] = position
        return SelectionResult(table={"random_draw": draw}, order=order)
