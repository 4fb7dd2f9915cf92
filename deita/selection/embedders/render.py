"""Text an embedder sees for a conversation.

``vicuna_v1.1`` is the reference (hkust-nlp/deita ``embedder/utils.preprocess`` with FastChat's
``vicuna_v1.1`` template, ``SeparatorStyle.ADD_COLON_TWO``)::

    SYSTEM + " " + "USER: " + q1 + " " + "ASSISTANT: " + a1 + "</s>" + "USER: " + q2 + " " + ...

An empty message renders as ``ROLE + ":"`` with no separator, as FastChat does. The row's own system
message is not rendered (the reference drops a leading non-human message and always uses the fixed
Vicuna system prompt). ``only_answer`` joins the assistant messages with "\\n" (reference option);
``plain`` joins every user/assistant message with "\\n\\n" (for sentence embedders).
"""

from __future__ import annotations

from deita.selection.scorers.turns import dialogue_messages

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
"""FastChat vicuna_v1.1 system prompt."""

VICUNA_ROLES = {"user": "USER", "assistant": "ASSISTANT"}
"""Canonical role → vicuna role name."""

VICUNA_SEPS = (" ", "</s>")
"""sep (after user turns and the system prompt) and sep2 (after assistant turns)."""


def render_vicuna(messages: list[dict], row_id: str = "?") -> str:
    """The conversation in FastChat vicuna_v1.1 form (see module doc)."""
    text = VICUNA_SYSTEM + VICUNA_SEPS[0]
    for i, (role, content) in enumerate(dialogue_messages(messages, row_id)):
        name = VICUNA_ROLES[role]
        text += f"{name}: {content}{VICUNA_SEPS[i % 2]}" if content else f"{name}:"
    return text


def render_only_answer(messages: list[dict], row_id: str = "?") -> str:
    """The assistant messages joined with "\\n" (the reference's ``only_answer`` option)."""
    return "\n".join(c for r, c in dialogue_messages(messages, row_id) if r == "assistant")


def render_plain(messages: list[dict], row_id: str = "?") -> str:
    """Every user/assistant message joined with a blank line."""
    return "\n\n".join(c for _, c in dialogue_messages(messages, row_id))


RENDERERS = {"vicuna_v1.1": render_vicuna, "only_answer": render_only_answer, "plain": render_plain}
"""Template name (embedder config ``template``) → renderer."""


def render_rows(rows: list[dict], template: str) -> list[str]:
    """Render each canonical row with ``template``; errors name the row id."""
    if template not in RENDERERS:
        raise ValueError(f"embedder template must be one of {sorted(RENDERERS)}, got {template!r}")
    fn = RENDERERS[template]
    return [fn(row.get("messages", []), str(row.get("id", i))) for i, row in enumerate(rows)]
