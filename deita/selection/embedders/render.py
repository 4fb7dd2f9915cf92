"""Text an embedder sees for a conversation.

``vicuna_v1.1`` is the reference (hkust-nlp/deita ``embedder/utils.preprocess`` with FastChat's
``vicuna_v1.1`` template): the conversation's user/assistant body rendered by the one FastChat renderer,
:func:`deita.data.templates.render_vicuna`, always with the fixed Vicuna system prompt::

    SYSTEM + " " + "USER: " + q1 + " " + "ASSISTANT: " + a1 + "</s>" + "USER: " + q2 + " " + ...

The row's own system messages are not rendered and a leading assistant message is dropped, as the
reference embedder does (:func:`deita.selection.scorers.turns.dialogue_messages`); SFT's template, by
contrast, renders a first system message in place of the default. ``only_answer`` joins the assistant
messages with "\\n" (reference option); ``plain`` joins every user/assistant message with "\\n\\n" (for
sentence embedders).
"""

from __future__ import annotations

from deita.data.templates import render_vicuna
from deita.selection.scorers.turns import dialogue_messages


def render_vicuna_dialogue(messages: list[dict], row_id: str = "?") -> str:
    """The reference embedder's vicuna_v1.1 text of a conversation (see module doc)."""
    return render_vicuna([{"role": role, "content": content} for role, content in dialogue_messages(messages, row_id)])


def render_only_answer(messages: list[dict], row_id: str = "?") -> str:
    """The assistant messages joined with "\\n" (the reference's ``only_answer`` option)."""
    return "\n".join(c for r, c in dialogue_messages(messages, row_id) if r == "assistant")


def render_plain(messages: list[dict], row_id: str = "?") -> str:
    """Every user/assistant message joined with a blank line."""
    return "\n\n".join(c for _, c in dialogue_messages(messages, row_id))


RENDERERS = {"vicuna_v1.1": render_vicuna_dialogue, "only_answer": render_only_answer, "plain": render_plain}
"""Template name (embedder config ``template``) → renderer."""


def render_rows(rows: list[dict], template: str) -> list[str]:
    """Render each canonical row with ``template``; errors name the row id."""
    if template not in RENDERERS:
        raise ValueError(f"embedder template must be one of {sorted(RENDERERS)}, got {template!r}")
    fn = RENDERERS[template]
    return [fn(row.get("messages", []), str(row.get("id", i))) for i, row in enumerate(rows)]


def template_head(template: str) -> str | None:
    """The text every conversation rendered with ``template`` starts with (vicuna_v1.1: the system prompt and
    ``"USER: "``), or None when the template has no fixed head."""
    if template not in RENDERERS:
        raise ValueError(f"embedder template must be one of {sorted(RENDERERS)}, got {template!r}")
    mark = "\x00deita-head\x00"
    text = RENDERERS[template]([{"role": "user", "content": mark}, {"role": "assistant", "content": mark}])
    return text.split(mark, 1)[0] or None
