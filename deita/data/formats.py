"""Pure normalisers: one raw record (a dict) of a known format → canonical rows.

Three kinds of canonical row:

* ``sft``: ``{"id": str, "messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``.
  After an optional leading system message the roles alternate user/assistant starting with user, with
  at least one assistant turn (a row with nothing to train on is an error). A conversation may end on
  a user turn: selection scores that turn with an empty response, as DEITA does, and SFT trains
  without it (:func:`trainable_messages`).
  Rows read from Alpaca-style records (``alpaca``, ``self_instruct``; ``openai`` rows that already carry
  them) also carry ``"instruction": str, "input": str``: the original split of their FIRST user turn,
  verbatim (``input`` is ``""`` when absent or null). ``messages`` stays as it is (the user content joins
  the two, see :func:`_user_text`); the split lets the methods whose reference prompt keeps instruction
  and input apart (Nuggets, IFD, Superfiltering, the ``alpaca`` SFT template) rebuild that prompt
  exactly (:func:`instruction_split`). A LLaMA-Factory row with ``history`` carries no split: its first
  user turn is a history turn.
* ``preference``: ``{"id", "prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}``. The prompt is a
  valid conversation ending on a user turn that has text; chosen/rejected are the reply that continues
  it (starting and ending with an assistant turn, usually one message), and they differ.
* ``prompts``: ``{"id": str, "turns": [str, ...], "category": str | None}`` for generation/evaluation.

Each normaliser takes ``(record, default_id)`` and returns a list of rows (self-instruct gives one row
per instance). ``default_id`` is used when the record has no ``id``/``question_id``; the loader passes
``"{file stem}:{index}"``. Bad input raises :class:`~deita.data.errors.DataError` naming the field path
(``conversations[3].from``); the loader adds file and record. Content is kept verbatim (empty strings
allowed: codealpaca has 2 empty outputs); only the HH parser strips, as there it is transcript layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from deita.data.errors import MISSING, DataError, expected
from deita.registry import Registry

KINDS = ("sft", "preference", "prompts")
"""The kinds of canonical row, in the order auto-detection considers them."""


@dataclass(frozen=True)
class Format:
    """A registered input format."""

    name: str
    """The name a user types (``data.format=sharegpt``)."""
    kind: str
    """Which canonical rows it yields: ``sft``, ``preference`` or ``prompts``."""
    signature: str
    """Human-readable key pattern, listed in detection errors."""
    matches: Callable[[dict], bool]
    """Whether a record's keys look like this format (used by auto-detection)."""
    normalise: Callable[[dict, str], list[dict]]
    """``(record, default_id) -> rows``; raises DataError on bad input."""


FORMATS: Registry[Format] = Registry("data format")
DETECTION_ORDER: list[str] = []
"""Format names in the order auto-detection tries them (most specific first)."""


def _format(name: str, kind: str, signature: str, matches: Callable[[dict], bool]):
    def wrap(fn: Callable[[dict, str], list[dict]]):
        FORMATS.register(name)(Format(name, kind, signature, matches, fn))
        DETECTION_ORDER.append(name)
        return fn

    return wrap


# ---------------------------------------------------------------- small checks


class _Msg(NamedTuple):
    role: str  # canonical role
    content: str
    raw_role: Any  # the role as written, for error messages
    path: str  # field path of the role, e.g. "conversations[3].from"
    content_path: str | None = None  # field path of the content when it differs ("conversations[3].value")


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
OPENAI_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


def _string(value: Any, field: str, what: str = "a string") -> str:
    if not isinstance(value, str):
        raise expected(what, value, field)
    return value


def _nonempty_list(value: Any, field: str, what: str) -> list:
    if not isinstance(value, list) or not value:
        raise expected(f"a non-empty list of {what}", value, field)
    return value


def record_id(record: dict, default_id: str) -> str:
    """The record's own ``id`` (or ``question_id``) as a string, else ``default_id``."""
    for key in ("id", "question_id"):
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise expected("a string or integer id", value, key)
        return str(value)
    return default_id


def _message(m: Any, path: str, role_key: str, content_key: str, roles: dict[str, str]) -> _Msg:
    if not isinstance(m, dict):
        raise expected(f"an object with '{role_key}' and '{content_key}'", m, path)
    raw = m.get(role_key, MISSING)
    if not isinstance(raw, str) or raw not in roles:
        raise expected("one of " + "/".join(roles), raw, f"{path}.{role_key}")
    content = _string(m.get(content_key, MISSING), f"{path}.{content_key}")
    return _Msg(roles[raw], content, raw, f"{path}.{role_key}", f"{path}.{content_key}")


def _messages(value: Any, path: str, role_key: str, content_key: str, roles: dict[str, str]) -> list[_Msg]:
    items = _nonempty_list(value, path, "turns")
    return [_message(m, f"{path}[{i}]", role_key, content_key, roles) for i, m in enumerate(items)]


def _check_order(msgs: list[_Msg], field: str) -> None:
    """Optional leading system message, then user/assistant alternating from user; ≥ 1 user turn."""
    if not msgs:
        raise expected("a non-empty list of turns", [], field)
    start = 1 if msgs[0].role == "system" else 0
    if start == len(msgs):
        raise DataError("expected at least one user turn after the system message, found none", field=field)
    for k in range(start, len(msgs)):
        want = "user" if (k - start) % 2 == 0 else "assistant"
        if msgs[k].role != want:
            what = f"{'a user' if want == 'user' else 'an assistant'} turn (roles alternate user/assistant after an optional leading system message)"
            raise expected(what, msgs[k].raw_role, msgs[k].path)


def _canon(msgs: list[_Msg]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in msgs]


def _sft_row(rid: str, msgs: list[_Msg], field: str) -> dict:
    _check_order(msgs, field)
    if not any(m.role == "assistant" for m in msgs):
        raise DataError("expected at least one assistant turn (a reply to train on), found none", field=field)
    return {"id": rid, "messages": _canon(msgs)}


def _user_text(instruction: str, inp: str) -> str:
    """Alpaca/self-instruct user content: the instruction, then ``"\\n\\n" + input`` when the input
    has any non-whitespace character. This keeps both parts verbatim without imposing a prompt
    template (chat templates are applied later by the tokenizer)."""
    return instruction + "\n\n" + inp if inp.strip() else instruction


SPLIT_KEYS = ("instruction", "input")
"""The keys of a canonical sft row that hold the instruction/input split of its first user turn."""


def _with_split(row: dict, instruction: str, inp: str) -> dict:
    """``row`` with the Alpaca split of its first user turn (see the module doc)."""
    return {**row, "instruction": instruction, "input": inp}


def instruction_split(row: dict) -> tuple[str, str] | None:
    """``(instruction, input)`` of a canonical row's first user turn as its Alpaca-style source wrote them,
    or ``None`` when the row carries no split (ShareGPT, messages, LLaMA-Factory rows with ``history``):
    then the first user turn's content is the whole instruction and there is no input."""
    instruction, inp = row.get("instruction"), row.get("input")
    if isinstance(instruction, str) and isinstance(inp, str):
        return instruction, inp
    return None


def _optional_string(record: dict, key: str, field: str | None = None) -> str:
    value = record.get(key)
    return "" if value is None else _string(value, field or key)


def _system(record: dict) -> list[_Msg]:
    text = _optional_string(record, "system")
    return [_Msg("system", text, "system", "system")] if text else []


# ---------------------------------------------------------------- preference formats


def _preference_row(rid: str, prompt: list[_Msg], chosen: list[_Msg], rejected: list[_Msg], fields) -> dict:
    """A checked pair. Besides the shape, two pairs that would train nothing are errors: a prompt whose
    last user turn is blank, and a rejected reply equal to the chosen one (ignoring surrounding
    whitespace), which makes the DPO loss constant at ln 2."""
    _check_order(prompt, fields[0])
    if prompt[-1].role != "user":
        raise expected("the prompt to end with a user turn", prompt[-1].raw_role, prompt[-1].path)
    if not prompt[-1].content.strip():
        raise expected("a prompt whose last user turn has text", prompt[-1].content, _content_path(prompt[-1]))
    for reply, field in ((chosen, fields[1]), (rejected, fields[2])):
        if not reply:
            raise DataError("expected at least one assistant turn after the prompt, found none", field=field)
        _check_order(prompt + reply, field)
        if reply[-1].role != "assistant":
            raise expected("the reply to end with an assistant turn", reply[-1].raw_role, reply[-1].path)
    if [m.content.strip() for m in chosen] == [m.content.strip() for m in rejected]:
        raise DataError("expected a rejected reply that differs from the chosen one, found the same text",
                        field=fields[2])
    return {"id": rid, "prompt": _canon(prompt), "chosen": _canon(chosen), "rejected": _canon(rejected)}


def _content_path(m: _Msg) -> str:
    return m.content_path or m.path


def _pref_side(value: Any, field: str, role: str) -> list[_Msg]:
    if isinstance(value, str):
        return [_Msg(role, value, role, field)]
    if isinstance(value, list):
        return _messages(value, field, "role", "content", OPENAI_ROLES)
    raise expected("a string or a list of messages", value, field)


def _same(a: _Msg, b: _Msg) -> bool:
    return a.role == b.role and a.content == b.content


@_format("llamafactory_preference", "preference", "conversations + chosen/rejected {from, value}",
         lambda r: "conversations" in r and ("chosen" in r or "rejected" in r))
def from_llamafactory_preference(record: dict, default_id: str) -> list[dict]:
    """LLaMA-Factory preference JSON: ``conversations`` (ShareGPT turns) is the prompt, ``chosen`` and
    ``rejected`` are single ``{from, value}`` assistant messages. A top-level ``system`` string becomes
    the leading system message."""
    prompt = _system(record) + _messages(record.get("conversations", MISSING), "conversations", "from", "value", SHAREGPT_ROLES)
    sides = [[_message(record.get(k, MISSING), k, "from", "value", SHAREGPT_ROLES)] for k in ("chosen", "rejected")]
    return [_preference_row(record_id(record, default_id), prompt, *sides, ("conversations", "chosen", "rejected"))]


_HH_SPLIT = re.compile(r"\n\n(Human|Assistant):")


def hh_turns(text: Any, field: str) -> list[_Msg]:
    """Parse an Anthropic HH transcript (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) into turns.

    Turn texts are stripped; consecutive same-speaker turns are merged, joined by ``"\\n\\n"``, so turns
    alternate as chat templates require. 9 of the 2,312 harmless-base test records have such doubled
    Assistant turns; in 5 the doubled turn is the final reply, so the text before the *last*
    ``\\n\\nAssistant:`` differs between chosen and rejected although both share one prompt.
    """
    text = _string(text, field, "a transcript string")
    parts = _HH_SPLIT.split(text)
    if parts[0].strip() or len(parts) == 1:
        raise expected("a transcript starting with '\\n\\nHuman:'", text, field)
    msgs: list[_Msg] = []
    for speaker, body in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        if msgs and msgs[-1].role == role:
            msgs[-1] = msgs[-1]._replace(content=msgs[-1].content + "\n\n" + body.strip())
        else:
            msgs.append(_Msg(role, body.strip(), speaker, field))
    return msgs


def _split_last_reply(msgs: list[_Msg], field: str) -> tuple[list[_Msg], list[_Msg]]:
    if msgs[-1].role != "assistant":
        raise DataError("expected the transcript to end with an '\\n\\nAssistant:' turn, found a Human turn", field=field)
    return msgs[:-1], msgs[-1:]


@_format("hh", "preference", "chosen/rejected transcript strings, no prompt",
         lambda r: "prompt" not in r and isinstance(r.get("chosen", r.get("rejected")), str))
def from_hh(record: dict, default_id: str) -> list[dict]:
    """Anthropic HH: ``chosen``/``rejected`` are full transcripts. The prompt is every turn before the
    final assistant turn; both transcripts must have the same prompt (error otherwise)."""
    prompt_c, chosen = _split_last_reply(hh_turns(record.get("chosen", MISSING), "chosen"), "chosen")
    prompt_r, rejected = _split_last_reply(hh_turns(record.get("rejected", MISSING), "rejected"), "rejected")
    if len(prompt_c) != len(prompt_r) or not all(map(_same, prompt_c, prompt_r)):
        k = next((i for i, (a, b) in enumerate(zip(prompt_c, prompt_r)) if not _same(a, b)), min(len(prompt_c), len(prompt_r)))
        raise DataError(
            f"expected the same prompt turns as 'chosen', found a difference at prompt turn {k} "
            f"(prompt lengths: chosen {len(prompt_c)}, rejected {len(prompt_r)})",
            field="rejected",
        )
    return [_preference_row(record_id(record, default_id), prompt_c, chosen, rejected, ("chosen", "chosen", "rejected"))]


@_format("preference", "preference", "prompt + chosen + rejected (strings or message lists), or chosen/rejected message lists",
         lambda r: ("prompt" in r and ("chosen" in r or "rejected" in r)) or isinstance(r.get("chosen"), list))
def from_preference(record: dict, default_id: str) -> list[dict]:
    """``prompt``/``chosen``/``rejected``, each a string or a ``[{role, content}]`` list (TRL style).

    When chosen/rejected are full conversations that start with the prompt's messages
    (UltraFeedback-binarized), that shared prefix is removed. Without a ``prompt`` key the prompt is
    the longest shared prefix of chosen and rejected, cut back to end on its last user turn.
    """
    chosen = _pref_side(record.get("chosen", MISSING), "chosen", "assistant")
    rejected = _pref_side(record.get("rejected", MISSING), "rejected", "assistant")
    if "prompt" in record:
        prompt = _pref_side(record["prompt"], "prompt", "user")
    else:
        n = 0
        while n < min(len(chosen), len(rejected)) and _same(chosen[n], rejected[n]):
            n += 1
        while n and chosen[n - 1].role != "user":
            n -= 1
        prompt = chosen[:n]
        if not prompt:
            raise DataError("expected chosen and rejected to start with the same user turn, found none shared", field="chosen")
    p = len(prompt)
    if len(chosen) > p and all(map(_same, prompt, chosen[:p])):
        chosen = chosen[p:]
    if len(rejected) > p and all(map(_same, prompt, rejected[:p])):
        rejected = rejected[p:]
    return [_preference_row(record_id(record, default_id), prompt, chosen, rejected, ("prompt", "chosen", "rejected"))]


# ---------------------------------------------------------------- prompt formats


def _turn_strings(value: Any, field: str) -> list[str]:
    items = _nonempty_list(value, field, "strings")
    return [_string(t, f"{field}[{i}]") for i, t in enumerate(items)]


def _category(record: dict, key: str) -> str | None:
    value = record.get(key)
    return None if value is None else _string(value, key, "a string or null")


@_format("mt_bench_reference", "prompts", "question_id + choices[{index, turns}] (FastChat reference answers)",
         lambda r: "choices" in r and ("question_id" in r or "answer_id" in r))
def from_mt_bench_reference(record: dict, default_id: str) -> list[dict]:
    """FastChat reference answers: ``turns`` are the answer texts of ``choices[0]`` (one per question
    turn); ``category`` is the record's ``category`` if present (the gpt-4 file has none → None)."""
    choices = _nonempty_list(record.get("choices", MISSING), "choices", "choices")
    first = choices[0]
    if not isinstance(first, dict):
        raise expected("an object with 'turns'", first, "choices[0]")
    turns = _turn_strings(first.get("turns", MISSING), "choices[0].turns")
    return [{"id": record_id(record, default_id), "turns": turns, "category": _category(record, "category")}]


@_format("mt_bench", "prompts", "turns [+ question_id, category] (MT-Bench questions)", lambda r: "turns" in r)
def from_mt_bench(record: dict, default_id: str) -> list[dict]:
    """FastChat MT-Bench ``question.jsonl``: ``turns`` (the user prompts) and ``category``."""
    turns = _turn_strings(record.get("turns", MISSING), "turns")
    return [{"id": record_id(record, default_id), "turns": turns, "category": _category(record, "category")}]


@_format("alpaca_eval", "prompts", "instruction + dataset|generator, no input (AlpacaEval)",
         lambda r: "instruction" in r and ("dataset" in r or "generator" in r) and "input" not in r and "instances" not in r)
def from_alpaca_eval(record: dict, default_id: str) -> list[dict]:
    """AlpacaEval prompt list: ``turns = [instruction]``, ``category = dataset`` (or None)."""
    instruction = _string(record.get("instruction", MISSING), "instruction")
    return [{"id": record_id(record, default_id), "turns": [instruction], "category": _category(record, "dataset")}]


# ---------------------------------------------------------------- sft formats


@_format("sharegpt", "sft", "conversations [{from, value}]", lambda r: "conversations" in r)
def from_sharegpt(record: dict, default_id: str) -> list[dict]:
    """ShareGPT/Vicuna ``conversations: [{from, value}]`` with ``from`` in human/gpt/system (user and
    assistant are accepted too). A top-level ``system`` string becomes the leading system message."""
    msgs = _system(record) + _messages(record.get("conversations", MISSING), "conversations", "from", "value", SHAREGPT_ROLES)
    return [_sft_row(record_id(record, default_id), msgs, "conversations")]


@_format("openai", "sft", "messages [{role, content}]", lambda r: "messages" in r)
def from_openai(record: dict, default_id: str) -> list[dict]:
    """OpenAI-style ``messages: [{role, content}]`` with roles system/user/assistant. A row that also has
    ``instruction`` and ``input`` strings (a canonical row written by an earlier run) keeps them as its
    split when they make up its first user turn; otherwise that is an error naming ``instruction``."""
    msgs = _messages(record.get("messages", MISSING), "messages", "role", "content", OPENAI_ROLES)
    row = _sft_row(record_id(record, default_id), msgs, "messages")
    if all(record.get(k) is not None for k in SPLIT_KEYS):
        instruction, inp = (_string(record[k], k) for k in SPLIT_KEYS)
        first = next(m for m in msgs if m.role == "user")
        if first.content != _user_text(instruction, inp):
            raise DataError("expected 'instruction' and 'input' that make up the first user turn (instruction, "
                            "then a blank line and the input when it is not blank), found a different user turn",
                            field="instruction")
        row = _with_split(row, instruction, inp)
    return [row]


@_format("self_instruct", "sft", "instruction + instances [{input, output}]", lambda r: "instruction" in r and "instances" in r)
def from_self_instruct(record: dict, default_id: str) -> list[dict]:
    """self-instruct: one row per instance ``k`` with id ``"{id}:{k}"``; user content and split as for Alpaca."""
    instruction = _string(record.get("instruction", MISSING), "instruction")
    instances = _nonempty_list(record.get("instances", MISSING), "instances", "instances")
    rid, rows = record_id(record, default_id), []
    for k, inst in enumerate(instances):
        path = f"instances[{k}]"
        if not isinstance(inst, dict):
            raise expected("an object with 'input' and 'output'", inst, path)
        inp = _optional_string(inst, "input", f"{path}.input")
        output = _string(inst.get("output", MISSING), f"{path}.output")
        messages = [{"role": "user", "content": _user_text(instruction, inp)}, {"role": "assistant", "content": output}]
        rows.append(_with_split({"id": f"{rid}:{k}", "messages": messages}, instruction, inp))
    return rows


@_format("alpaca", "sft", "instruction + output|response [+ input, system, history]", lambda r: "instruction" in r and ("output" in r or "response" in r))
def from_alpaca(record: dict, default_id: str) -> list[dict]:
    """Alpaca ``instruction``, optional ``input``, and ``output`` (or GPTeacher's ``response``).

    User content is the instruction plus ``"\\n\\n" + input`` when the input is non-blank (``None``
    counts as empty: parquet and ``datasets`` fill absent columns with None). LLaMA-Factory's optional
    ``system`` string and ``history`` ``[[user, assistant], ...]`` pairs become the leading turns.
    Without ``history`` the row carries the split (``instruction``, ``input``; see the module doc).
    """
    instruction = _string(record.get("instruction", MISSING), "instruction")
    inp = _optional_string(record, "input")
    user = _user_text(instruction, inp)
    key = "output" if record.get("output") is not None or "response" not in record else "response"
    output = _string(record.get(key, MISSING), key, "a string under 'output' or 'response'")
    msgs = _system(record)
    history = record.get("history") or []
    if not isinstance(history, list):
        raise expected("a list of [user, assistant] pairs", history, "history")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise expected("a [user, assistant] pair", pair, f"history[{i}]")
        for j, role in enumerate(("user", "assistant")):
            msgs.append(_Msg(role, _string(pair[j], f"history[{i}][{j}]"), role, f"history[{i}][{j}]"))
    msgs += [_Msg("user", user, "user", "instruction"), _Msg("assistant", output, "assistant", key)]
    row = _sft_row(record_id(record, default_id), msgs, "instruction")
    return [row if history else _with_split(row, instruction, inp)]


def trainable_messages(messages: list[dict]) -> list[dict]:
    """The canonical ``messages`` SFT trains on: without a trailing user turn, which has no reply.

    TRL tokenizes a ``messages`` row whole: the unanswered turn would be trained on as if the model
    should write it (``assistant_only_loss=false``) or be dead weight in the sequence (``true``).
    """
    return messages[:-1] if messages and messages[-1]["role"] == "user" else messages


# ---------------------------------------------------------------- detection


def _listing(kind: str | None) -> str:
    names = [n for n in DETECTION_ORDER if kind is None or FORMATS.get(n).kind == kind]
    return "; ".join(f"{n}: {FORMATS.get(n).signature}" for n in names)


def detect_format(record: Any, kind: str | None = None) -> Format:
    """The first format (in :data:`DETECTION_ORDER`) whose key pattern the record matches, among
    formats of ``kind`` when given. Raises DataError listing the known patterns when none match."""
    if not isinstance(record, dict):
        raise expected("a JSON object", record)
    for name in DETECTION_ORDER:
        fmt = FORMATS.get(name)
        if (kind is None or fmt.kind == kind) and fmt.matches(record):
            return fmt
    what = f"the keys of a known {kind + ' ' if kind else ''}format ({_listing(kind)})"
    raise expected(what, record)


def normalise_record(record: Any, fmt: str | Format, default_id: str) -> list[dict]:
    """Canonical rows of one raw record in format ``fmt`` (a name or a :class:`Format`)."""
    fmt = FORMATS.get(fmt) if isinstance(fmt, str) else fmt
    if not isinstance(record, dict):
        raise expected("a JSON object", record)
    check_unicode(record)
    return fmt.normalise(record, default_id)


def check_unicode(value: Any, field: str = "") -> None:
    """Every string in ``value`` (a parsed record) is valid Unicode text: JSON's ``"\\ud800"`` escapes parse
    to lone surrogates, which no tokenizer or UTF-8 writer accepts. DataError naming the field otherwise."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise DataError(f"expected valid Unicode text, found a lone surrogate {value[err.start]!r} at character "
                            f"{err.start}", field=field or None) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_unicode(item, f"{field}.{key}" if field else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_unicode(item, f"{field}[{i}]")
