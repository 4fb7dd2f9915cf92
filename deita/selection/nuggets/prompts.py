"""The Nuggets scoring text format and the mapping from canonical rows to (instruction, input, output).

Mapping of a canonical row ``{"id", "messages"}``:

* instruction = the whole content of the FIRST user message (stripped);
* input = the row's explicit ``input`` key when present (stripped), else ``""``. The data layer joins an
  Alpaca ``input`` into the user content with ``"\\n\\n"``; that join cannot be undone reliably, so such a
  row is rendered with the joined text as its instruction and no ``Input:`` block unless the row also
  carries ``input`` (then ``instruction`` is taken from the row's ``instruction`` key when present);
* output = the content of the FIRST assistant message (stripped).

Rows with an ``instruction``/``input``/``output`` triple (raw Alpaca) are accepted too.
"""

from __future__ import annotations

from typing import Any


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


def row_fields(row: dict[str, Any], index: int | None = None) -> tuple[str, str, str]:
    """``(instruction, input, output)`` of a canonical or Alpaca row (see the module doc for the mapping)."""
    where = f"row {index}" if index is not None else "row"
    if "id" in row:
        where += f" (id {row['id']!r})"
    if "messages" not in row:
        missing = [k for k in ("instruction", "output") if k not in row]
        if missing:
            raise ValueError(f"{where}: expected 'messages' or instruction/output keys, missing {missing}")
        return str(row["instruction"]), str(row.get("input") or ""), str(row["output"])
    messages = row["messages"]
    user = next((m for m in messages if m.get("role") == "user"), None)
    assistant = next((m for m in messages if m.get("role") == "assistant"), None)
    if user is None or assistant is None:
        roles = [m.get("role") for m in messages]
        raise ValueError(f"{where}: Nuggets needs a user and an assistant message, found roles {roles}")
    if "input" in row and row["input"] is not None:
        instruction = str(row.get("instruction", user["content"]))
        return instruction, str(row["input"]), str(assistant["content"])
    return str(user["content"]), "", str(assistant["content"])


def row_texts(row: dict[str, Any], index: int | None = None) -> tuple[str, str]:
    """``(query, full_text)`` of a row in the Nuggets template."""
    return nuggets_texts(*row_fields(row, index))
