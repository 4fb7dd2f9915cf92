"""Chat templates for SFT, keyed by the name a user types (``sft.chat_template=vicuna_v1.1``).

Every template is a Jinja string that ``tokenizer.apply_chat_template`` renders. The tokens that carry loss
(an assistant turn's content plus its end token) sit inside ``{% generation %}...{% endgeneration %}``, which
is what TRL's ``assistant_only_loss=True`` reads to build the label mask. Templates read the tokenizer's
``bos_token`` / ``eos_token`` variables instead of hard-coding ``<s>`` / ``</s>``, and emit ``bos_token`` once
at the start (when the tokenizer has one), because ``apply_chat_template(tokenize=True)`` tokenizes with
``add_special_tokens=False``.

Registered names:

- ``alpaca``: stanford_alpaca's training prompt (see :data:`ALPACA_JINJA`).
- ``vicuna_v1.1``: FastChat's ``vicuna_v1.1`` conversation (the DEITA reference's SFT template),
  ``system + " " + "USER: " + q1 + " " + "ASSISTANT: " + a1 + eos + "USER: " + q2 ...``.
- ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n``.
- ``zephyr``: ``<|role|>\\ncontent`` + eos + ``\\n``.
- ``tokenizer``: keep the tokenizer's own template.

:func:`render_vicuna` is a pure-Python rendering of FastChat's ``vicuna_v1.1`` (no Jinja, no tokenizer), used
by the DEITA embedder and as an independent oracle for the Jinja template in tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deita.registry import Registry

#: FastChat ``vicuna_v1.1`` default system message.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatTemplate:
    """One registered chat template."""

    name: str
    """The name a user types in a config (``vicuna_v1.1``, ``chatml``, ``zephyr``, ``tokenizer``)."""
    jinja: str | None
    """The Jinja source; ``None`` means "keep the tokenizer's own template"."""
    needs_eos: bool
    """Whether the template renders ``eos_token`` (then the tokenizer must define one)."""
    description: str
    """One line for docs and error messages."""


CHAT_TEMPLATES: Registry[ChatTemplate] = Registry("chat template")

_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"

# FastChat SeparatorStyle.ADD_COLON_TWO with sep=" ", sep2=eos: a message with content renders as
# ROLE + ": " + content + sep, an empty one as ROLE + ":" (no separator). The space after "ASSISTANT:" is
# inside the generation span because the generation prompt is "ASSISTANT:" (no trailing space): at inference
# the model itself emits " " + answer + eos, so those are exactly the tokens it is trained on.
VICUNA_JINJA = (
    _BOS
    + "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] %}{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set system_message = '" + VICUNA_SYSTEM.replace("'", "\\'") + "' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{{ system_message + ' ' }}"
    "{% for message in loop_messages %}"
    "{% if message['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('vicuna_v1.1: message ' ~ loop.index0 ~ ' has role ' ~ message['role']"
    " ~ '; only a first system message, then alternating user/assistant, are supported') }}"
    "{% endif %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('vicuna_v1.1: turns must alternate user/assistant starting with user; message '"
    " ~ loop.index0 ~ ' (after the system message) is ' ~ message['role']) }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if message['content'] %}{{ 'USER: ' + message['content'] + ' ' }}{% else %}{{ 'USER:' }}{% endif %}"
    "{% else %}"
    "{% if message['content'] %}"
    "{{ 'ASSISTANT:' }}{% generation %}{{ ' ' + message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ 'ASSISTANT:' }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

CHATML_JINJA = (
    _BOS
    + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ZEPHYR_JINJA = (
    _BOS
    + "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
ALPACA_PREAMBLE_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
#: stanford_alpaca's training prompt (the Nuggets reference SFT): ``PROMPT_DICT["prompt_input"]`` when the row
#: carries an Alpaca split with a non-empty input (``### Input:`` block, "paired with an input" preamble),
#: else ``PROMPT_DICT["prompt_no_input"]``, then the output and eos, as stanford_alpaca's ``train.py`` builds
#: ``source + output + eos`` ("### Response:" directly followed by the output). The split comes in the
#: template variable ``alpaca_split`` (:func:`template_kwargs`; TRL passes a row's ``chat_template_kwargs``).
#: Without a split (ShareGPT, messages rows) the first user turn's whole content is the instruction. Later
#: turns (multi-turn rows, not in the reference) repeat the ``### Instruction``/``### Response:`` block after a
#: blank line; system messages are dropped.
ALPACA_JINJA = (
    _BOS
    + "{% set split = alpaca_split if alpaca_split is defined and alpaca_split is not none else none %}"
    "{% set with_input = split is not none and split['input'] != '' %}"
    "{% if with_input %}{{ '" + ALPACA_PREAMBLE_INPUT + "\n\n' }}{% else %}{{ '" + ALPACA_PREAMBLE + "\n\n' }}{% endif %}"
    "{% set ns = namespace(first=true) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if not ns.first %}{{ '\n\n' }}{% endif %}"
    "{% if ns.first and split is not none %}{{ '### Instruction:\n' + split['instruction'] }}"
    "{% if with_input %}{{ '\n\n### Input:\n' + split['input'] }}{% endif %}"
    "{% else %}{{ '### Instruction:\n' + message['content'] }}{% endif %}"
    "{{ '\n\n### Response:' }}"
    "{% set ns.first = false %}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)


def template_kwargs(row: dict) -> dict:
    """Extra chat-template variables of a canonical row: ``alpaca_split`` (``{"instruction", "input"}``) when
    the row carries the Alpaca split of its first user turn (:func:`deita.data.formats.instruction_split`),
    which the ``alpaca`` template renders as the reference prompt; ``{}`` otherwise. Other templates ignore it."""
    from deita.data.formats import instruction_split

    split = instruction_split(row)
    return {} if split is None else {"alpaca_split": {"instruction": split[0], "input": split[1]}}


for _t in (
    ChatTemplate("alpaca", ALPACA_JINJA, True, "stanford_alpaca prompt, with ### Input: for rows that carry an input "
                 "(Nuggets reference SFT); system messages dropped"),
    ChatTemplate("vicuna_v1.1", VICUNA_JINJA, True, "FastChat vicuna_v1.1 (DEITA reference SFT template)"),
    ChatTemplate("chatml", CHATML_JINJA, False, "ChatML <|im_start|>role ... <|im_end|>"),
    ChatTemplate("zephyr", ZEPHYR_JINJA, True, "Zephyr <|user|>/<|assistant|>/<|system|> ended by eos"),
    ChatTemplate("tokenizer", None, False, "the tokenizer's own chat template, unchanged"),
):
    CHAT_TEMPLATES.register(_t.name)(_t)


def has_generation_markers(chat_template: str | None) -> bool:
    """Whether ``chat_template`` contains a ``{% generation %}`` block (any whitespace-trim variant)."""
    return bool(chat_template) and _GENERATION_MARKER.search(chat_template) is not None


def _check_messages(messages: list[dict[str, Any]], where: str) -> None:
    """Raise ``ValueError`` unless ``messages`` is a list of ``{"role", "content": str}`` dicts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages, found {type(messages).__name__} {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{where}: message {i} must be {{'role': one of {_ROLES}, 'content': str}}, found {m!r:.120}"
            )


def render_vicuna(messages: list[dict[str, Any]], eos: str = "</s>") -> str:
    """Render a conversation exactly as FastChat's ``get_conv_template("vicuna_v1.1").get_prompt()`` does.

    ``system + " " + "USER: " + q1 + " " + "ASSISTANT: " + a1 + eos + "USER: " + q2 + ...``. A first
    ``system`` message replaces the default :data:`VICUNA_SYSTEM`. A message with empty content renders as
    ``"ROLE:"`` with no separator (FastChat's ``if message`` branch). No BOS is added: the caller's tokenizer
    adds it (``add_special_tokens=True``), as in the reference embedder.

    Turns must alternate user/assistant starting with user (FastChat asserts the same). The reference
    embedder first drops a leading non-user turn; callers that want that must do it before calling.
    Pure function: no tokenizer, no Jinja.
    """
    _check_messages(messages, "render_vicuna")
    system, turns = VICUNA_SYSTEM, messages
    if messages[0]["role"] == "system":
        system, turns = messages[0]["content"], messages[1:]
    out = [system, " "]
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ValueError(
                f"render_vicuna: turns must alternate user/assistant starting with user; message {i} after the "
                f"system message is {m['role']!r}, expected {expected!r}"
            )
        role = "USER" if expected == "user" else "ASSISTANT"
        sep = " " if expected == "user" else eos
        out.append(f"{role}: {m['content']}{sep}" if m["content"] else f"{role}:")
    return "".join(out)


def get_template(name: str) -> ChatTemplate:
    """The registered :class:`ChatTemplate` called ``name`` (``KeyError`` listing the valid names)."""
    return CHAT_TEMPLATES.get(name)


def render_text(
    messages: list[dict[str, Any]],
    name: str,
    *,
    bos_token: str = "",
    eos_token: str = "</s>",
    add_generation_prompt: bool = False,
    **variables: Any,
) -> str:
    """Render ``messages`` with the registered Jinja template ``name`` to a plain string (no tokenizer).
    ``variables`` are extra template variables (:func:`template_kwargs`).

    Uses transformers' own chat-template renderer, so the text is byte-identical to what
    ``tokenizer.apply_chat_template(..., tokenize=False)`` gives for a tokenizer with these bos/eos tokens.
    ``bos_token=""`` (the default) leaves the BOS out, as for text that a tokenizer later encodes with
    ``add_special_tokens=True``.
    """
    template = get_template(name)
    if template.jinja is None:
        raise ValueError(f"chat template {name!r} means 'the tokenizer's own template'; render it with the tokenizer")
    _check_messages(messages, f"render_text({name!r})")
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages],
        chat_template=template.jinja,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **variables,
    )
    return rendered[0]


def apply_template(tokenizer, name: str, *, assistant_only_loss: bool = True) -> str:
    """Set ``tokenizer.chat_template`` to the registered template ``name`` and return it.

    ``name="tokenizer"`` keeps the tokenizer's own template: it is an error if the tokenizer has none, or if
    ``assistant_only_loss`` is on and the template has no ``{% generation %}`` markers and TRL ships no
    training variant for it (TRL's ``get_training_chat_template`` swaps known templates such as Llama-3 or
    Qwen at trainer construction). Templates that render ``eos_token`` require the tokenizer to have one.
    """
    template = get_template(name)
    where = f"chat template {name!r} for tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}"
    if template.jinja is not None:
        if template.needs_eos and not getattr(tokenizer, "eos_token", None):
            raise ValueError(f"{where}: the template ends turns with eos_token but the tokenizer has no eos_token")
        tokenizer.chat_template = template.jinja
        return tokenizer.chat_template
    own = tokenizer.chat_template
    if isinstance(own, dict):
        own = own.get("default")
    if not own:
        raise ValueError(
            f"{where}: the tokenizer has no chat template of its own; pick a named template "
            f"({', '.join(n for n in CHAT_TEMPLATES.names() if n != 'tokenizer')})"
        )
    if assistant_only_loss and not has_generation_markers(own):
        try:  # TRL swaps in its training variant at trainer construction; make sure it has one
            from trl.chat_template_utils import get_training_chat_template

            get_training_chat_template(tokenizer)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{where}: assistant_only_loss needs {{% generation %}}...{{% endgeneration %}} around the "
                "assistant tokens, the tokenizer's template has none and TRL has no training variant for it "
                f"({err}). Pick a named template (vicuna_v1.1, chatml, zephyr) or set assistant_only_loss=false"
            ) from None
    return tokenizer.chat_template
