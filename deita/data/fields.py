"""A canonical row as one ``(instruction, input, output)`` triple, for the selection methods that score a
single instruction and its answer (Nuggets, IFD/Superfiltering).

Mapping of a canonical row ``{"id", "messages"}``:

* instruction = the whole content of the FIRST user message;
* input = the row's explicit ``input`` key when present, else ``""``. The data layer joins an
  Alpaca ``input`` into the user content with ``"\\n\\n"``; that join cannot be undone reliably, so such a
  row is rendered with the joined text as its instruction and no ``Input:`` block unless the row also
  carries ``input`` (then ``instruction`` is taken from the row's ``instruction`` key when present);
* output = the content of the FIRST assistant message.

Values are returned as stored (Nuggets strips them when it renders its template; IFD uses them as given).

Rows with an ``instruction``/``input``/``output`` triple (raw Alpaca) are accepted too.
"""

from __future__ import annotations

from typing import Any


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
