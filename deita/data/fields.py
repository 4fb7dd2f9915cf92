"""A canonical row as one ``(instruction, input, output)`` triple, for the selection methods that score a
single instruction and its answer (Nuggets, IFD/Superfiltering).

Mapping of a canonical row ``{"id", "messages"}``:

* rows read from Alpaca-style sources (``alpaca``, ``self_instruct``) carry the split of their first user
  turn (:func:`deita.data.formats.instruction_split`): instruction and input are that split, verbatim, so
  each method rebuilds its reference prompt exactly (Nuggets' ``Input:`` block, Cherry's "paired with an
  input" prompt, Superfiltering's ``"{instruction}\\n{input}\\n"``);
* rows without a split (ShareGPT, messages, LLaMA-Factory rows with ``history``): instruction = the whole
  content of the FIRST user message, input = ``""`` (so the no-input prompt, with any input the source had
  joined into the user text);
* output = the content of the FIRST assistant message.

Values are returned as stored (Nuggets strips them when it renders its template; IFD uses them as given).

Rows with an ``instruction``/``input``/``output`` triple (raw Alpaca) are accepted too.
"""

from __future__ import annotations

from typing import Any

from deita.data.formats import instruction_split


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
    split = instruction_split(row)
    if split is not None:
        return split[0], split[1], str(assistant["content"])
    return str(user["content"]), "", str(assistant["content"])


def response_chars(row: dict[str, Any]) -> int:
    """Characters of a canonical row's assistant messages, summed over turns (the report's response length)."""
    return sum(len(m.get("content") or "") for m in row.get("messages", []) if m.get("role") == "assistant")
