"""Per-turn LLM scorers for selection: the DEITA complexity and quality scorers.

:class:`.deita_scorer.DeitaScorer` loads either kind; their prompts live in :mod:`.prompts`, the score
math in :mod:`.expected_digit`. Importing this package is cheap (torch is imported inside the functions
that need it).
"""

from __future__ import annotations

from deita.selection.scorers.deita_scorer import DeitaScorer, ScoringError, evol_score, score_rows

__all__ = ["DeitaScorer", "ScoringError", "evol_score", "score_rows"]
