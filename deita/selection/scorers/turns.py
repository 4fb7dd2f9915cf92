"""Canonical conversation → (instruction, response) turns, the unit the DEITA scorers see.

Rules (reference ``score_pipeline._load_sharegpt`` plus the embedder's role handling):

* leading ``system`` messages are not scored (the reference has no system role; its embedder drops a
  leading non-human message, and its scorer would otherwise score the system text as an instruction);
* a leading ``assistant`` message (a conversation that opens with the bot) is dropped, as the reference
  embedder does;
* then roles must alternate user, assistant, user, ...; each user message with the following answer is
  one turn, scored with no earlier context; a trailing unanswered user message gets response ``""``.
"""

from __future__ import annotations


class ConversationError(ValueError):
    """A row whose messages cannot be split into user/assistant turns."""


def dialogue_messages(messages: list[dict], row_id: str = "?") -> list[tuple[str, str]]:
    """``(role, content)`` of the alternating user/assistant body of a conversation (see module doc)."""
    msgs = list(messages or [])
    start = 0
    while start < len(msgs) and msgs[start].get("role") == "system":
        start += 1
    if start < len(msgs) and msgs[start].get("role") == "assistant":
        start += 1
    body = msgs[start:]
    if not body:
        raise ConversationError(f"row {row_id!r}: no user message to score (messages: {len(msgs)})")
    out: list[tuple[str, str]] = []
    for j, msg in enumerate(body):
        expected = "user" if j % 2 == 0 else "assistant"
        role = msg.get("role")
        if role != expected:
            raise ConversationError(
                f"row {row_id!r}, message {start + j}: expected role {expected!r} (user/assistant must "
                f"alternate after leading system messages), found {role!r}"
            )
        content = msg.get("content")
        if not isinstance(content, str):
            raise ConversationError(
                f"row {row_id!r}, message {start + j}: content must be a string, found {type(content).__name__}"
            )
        out.append((role, content))
    return out


def conversation_turns(messages: list[dict], row_id: str = "?") -> list[tuple[str, str]]:
    """Split canonical ``messages`` into ``(instruction, response)`` pairs (see module doc)."""
    turns: list[tuple[str, str]] = []
    for role, content in dialogue_messages(messages, row_id):
        if role == "user":
            turns.append((content, ""))
        else:
            turns[-1] = (turns[-1][0], content)
    return turns
