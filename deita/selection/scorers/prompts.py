"""The DEITA scorer prompt templates, byte-exact, and the pieces truncation needs.

The strings are the reference ``llama_scorer.py`` / ``mistral_scorer.py`` templates (hkust-nlp/deita
b279f2c). Note the double space before ``\\n##Complexity: `` and the trailing spaces: the scorers were
trained on ``template + score`` so the next token after the prompt is the score digit.
"""

from __future__ import annotations

COMPLEXITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the complexity score of the following user query. "
    "\n##Query: {instruction}  \n##Complexity: "
)
"""Complexity prompt; ``{instruction}`` is one user turn, scored without earlier context."""

QUALITY_TEMPLATE = (
    "You are a helpful assistant. Please identify the quality score of the Response corresponding to the "
    "Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: "
)
"""Quality prompt; ``{instruction}`` / ``{output}`` are one user turn and its answer ('' if unanswered)."""

TEMPLATES = {"complexity": COMPLEXITY_TEMPLATE, "quality": QUALITY_TEMPLATE}
"""Template per scorer kind."""

FIELDS = {"complexity": ("instruction",), "quality": ("instruction", "output")}
"""The free-text fields of each template, in the order they appear."""


def render_prompt(kind: str, instruction: str, output: str = "") -> str:
    """The exact prompt the reference scorer builds for ``kind`` ('complexity' or 'quality')."""
    if kind == "complexity":
        return COMPLEXITY_TEMPLATE.format(instruction=instruction)
    if kind == "quality":
        return QUALITY_TEMPLATE.format(instruction=instruction, output=output)
    raise ValueError(f"scorer kind must be 'complexity' or 'quality', got {kind!r}")


def field_spans(kind: str, instruction: str, output: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered prompt plus the [start, end) character span of each free-text field in it.

    Truncation cuts tokens that lie wholly inside these spans, so the template head and the tail
    (``##Complexity: `` / ``##Quality: ``) always survive.
    """
    template = TEMPLATES.get(kind)
    if template is None:
        raise ValueError(f"scorer kind must be 'complexity' or 'quality', got {kind!r}")
    values = {"instruction": instruction, "output": output}
    text, spans, rest = "", [], template
    for name in FIELDS[kind]:
        head, rest = rest.split("{" + name + "}", 1)
        text += head
        spans.append((len(text), len(text) + len(values[name])))
        text += values[name]
    text += rest
    return text, spans
