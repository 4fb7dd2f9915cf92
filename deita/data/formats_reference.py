"""Opt-in formats that read records as a reference implementation does, where it is more lenient.

They are never auto-detected: a source asks for one by name (``format: sharegpt_deita``).
"""

from __future__ import annotations

from deita.data.formats import _format, from_sharegpt

HUMAN_ROLES = ("human", "user")


@_format("sharegpt_deita", "sft", "ShareGPT; a leading non-human message is dropped (DEITA/FastChat)", lambda r: False)
def from_sharegpt_deita(record: dict, default_id: str) -> list[dict]:
    """ShareGPT as the DEITA and FastChat loaders read it: when the first message is not from the human,
    it is dropped (scraped ShareGPT often opens with the assistant); everything else is checked as in
    ``sharegpt``, so roles must then alternate."""
    conversations = record.get("conversations")
    if isinstance(conversations, list) and conversations and isinstance(conversations[0], dict) \
            and conversations[0].get("from") not in HUMAN_ROLES:
        record = {**record, "conversations": conversations[1:]}
    return from_sharegpt(record, default_id)
