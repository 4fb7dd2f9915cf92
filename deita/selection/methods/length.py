"""The length baseline: keep the longest rows (the paper's "Instruction Length" / "Response Length").

Length is summed over all turns of a conversation: assistant messages for ``field=response``, user
messages for ``field=instruction``, both for ``field=total`` (system messages are never counted). Rows are
ranked longest first; equal lengths keep pool order (lower index first); the stage keeps ``budget`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector

FIELDS = {"response": ("assistant",), "instruction": ("user",), "total": ("user", "assistant")}
"""Which message roles each ``field`` value counts."""
UNITS = ("chars", "words")
"""Supported length units."""


@dataclass
class LengthSelectionConfig(SelectionConfig):
    """Top-``budget`` rows by length."""

    method: str = "length"
    """Registry name of this method."""
    field: str = "response"
    """What to measure: 'response' (assistant messages), 'instruction' (user messages) or 'total' (both);
    summed over turns; system messages are not counted."""
    unit: str = "chars"
    """Length unit: 'chars' (Python characters, i.e. code points) or 'words' (whitespace-separated tokens,
    ``str.split()``)."""


def validate_length_config(cfg: object) -> None:
    """Raise ``ValueError`` if ``cfg.field`` or ``cfg.unit`` is not a supported value."""
    field = getattr(cfg, "field", None)
    unit = getattr(cfg, "unit", None)
    if field not in FIELDS:
        raise ValueError(f"selection.field: expected one of {sorted(FIELDS)}, found {field!r}")
    if unit not in UNITS:
        raise ValueError(f"selection.unit: expected one of {list(UNITS)}, found {unit!r}")


def row_length(row: dict, field: str, unit: str, where: str = "row") -> int:
    """Length of one canonical row: the summed length of its messages whose role ``field`` counts."""
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        raise ValueError(f"{where}: expected a canonical row with a 'messages' list, found {type(messages).__name__}")
    roles = FIELDS[field]
    total = 0
    for t, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str):
            raise ValueError(f"{where}, message {t}: expected a dict with a string 'content', found {msg!r:.80}")
        if msg.get("role") in roles:
            total += len(msg["content"]) if unit == "chars" else len(msg["content"].split())
    return total


@SELECTORS.register("length")
class LengthSelector(Selector):
    """Ranks every row by length, longest first; ties by pool index."""

    config_class = LengthSelectionConfig

    @classmethod
    def check(cls, cfg) -> None:
        """``field`` and ``unit`` are supported values (as a config error)."""
        from deita.validate import ConfigError

        try:
            validate_length_config(cfg)
        except ValueError as err:
            key, problem = str(err).split(": ", 1)
            raise ConfigError(f"config key '{key}': {problem}") from None

    def __init__(self, cfg):
        super().__init__(cfg)
        validate_length_config(cfg)

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:
        """Measure every row and rank all of them by descending length."""
        from deita.selection.ranking import score_order

        lengths = [
            row_length(r, self.cfg.field, self.cfg.unit, where=f"row {i} (id={r.get('id')!r})" if isinstance(r, dict) else f"row {i}")
            for i, r in enumerate(rows)
        ]
        column = f"length_{self.cfg.field}_{self.cfg.unit}"
        return SelectionResult(table={column: lengths}, ranking=score_order(lengths).tolist(),
                               shortfall=f"the pool has {len(rows)} rows",
                               report={"field": self.cfg.field, "unit": self.cfg.unit}, score_column=column,
                               labels={column: f"{self.cfg.field} length ({self.cfg.unit}, summed over turns)"})
