"""The Nuggets scoring text format.

Rows map to ``(instruction, input, output)`` with :func:`deita.data.fields.row_fields`.
"""

from __future__ import annotations

from typing import Any

from deita.data.fields import row_fields


def nuggets_query(instruction: str, input: str = "") -> str:
    """The query part of the reference template (fields stripped here)."""
    instruction, input = instruction.strip(), input.strip()
    if input != "":
        return f"Instruction:\n{instruction}\nInput:\n{input}\nResponse:\n"
    return f"Instruction:\n{instruction}\nResponse:\n"


def nuggets_texts(instruction: str, input: str, output: str) -> tuple[str, str]:
    """``(query, full_text)``: the full text is the query directly followed by the stripped output."""
    query = nuggets_query(instruction, input)
    return query, f"{query}{output.strip()}"


def row_texts(row: dict[str, Any], index: int | None = None) -> tuple[str, str]:
    """``(query, full_text)`` of a row in the Nuggets template."""
    return nuggets_texts(*row_fields(row, index))
