"""Per-turn LLM scorers for selection. ``SCORERS`` maps a scorer kind to a loader of that scorer.

``complexity`` and ``quality`` are the DEITA scorers (:mod:`.deita_scorer`); their prompts live in
:mod:`.prompts`, the score math in :mod:`.expected_digit`. Importing this package is cheap (torch is
imported inside the functions that need it).
"""

from __future__ import annotations

from functools import partial

from deita.registry import Registry
from deita.selection.scorers.deita_scorer import DeitaScorer, ScoringError, evol_score, score_rows

SCORERS: Registry = Registry("scorer")
"""Scorer kind → ``loader(path, **options) -> DeitaScorer``."""

SCORERS.register("complexity")(partial(DeitaScorer, "complexity"))
SCORERS.register("quality")(partial(DeitaScorer, "quality"))

__all__ = ["SCORERS", "DeitaScorer", "ScoringError", "evol_score", "score_rows"]
