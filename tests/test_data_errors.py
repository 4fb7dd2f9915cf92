"""DataError wording and location, and the exact messages of malformed inputs (file, record, field)."""

from __future__ import annotations

import gzip
import json
import logging

import pytest

from deita.data.errors import MISSING, DataError, describe, expected
from deita.data.loading import load_rows, read_jsonl


def test_str_has_parts_in_fixed_order():
    e = DataError("expected x, found y", file="d.jsonl", index=12, line=14, field="conversations[3].from")
    assert str(e) == "d.jsonl: record 12 (line 14): field 'conversations[3].from': expected x, found y"
    assert str(DataError("m", field="f")) == "field 'f': m"
    assert str(DataError("m", file="a.json", index=0)) == "a.json: record 0: m"
    assert str(DataError("m", file="a.json", line=3)) == "a.json: line 3: m"
    assert isinstance(e, ValueError)
    assert (e.file, e.index, e.line, e.field, e.message) == ("d.jsonl", 12, 14, "conversations[3].from", "expected x, found y")


def test_at_fills_only_unknown_parts():
    e = DataError("m", field="output").at(file="a.json", index=4)
    assert str(e) == "a.json: record 4: field 'output': m"
    assert str(e.at(file="b.json", index=9, line=2)) == "a.json: record 4 (line 2): field 'output': m"


@pytest.mark.parametrize(
    "value, text",
    [
        (MISSING, "no such key"),
        (None, "null"),
        ("bot", "'bot'"),
        ("x" * 70, repr("x" * 57 + "...")),
        (True, "boolean True"),
        (5, "number 5"),
        (1.5, "number 1.5"),
        ([], "an empty list"),
        ([1], "a list of 1 item"),
        ([1, 2], "a list of 2 items"),
        ({"b": 1, "a": 2}, "an object with keys ['a', 'b']"),
    ],
)
def test_describe(value, text):
    assert describe(value) == text


def test_expected_helper():
    assert str(expected("a string", 5, "output")) == "field 'output': expected a string, found number 5"


HH_OK = {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
ALT = "(roles alternate user/assistant after an optional leading system message)"

# (file name, records or raw text, expected error after "<path>: ")
MALFORMED = [
    (
        "missing_output.json",
        [{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d"}],
        "record 1: field 'output': expected a string under 'output' or 'response', found no such key",
    ),
    (
        "bad_role.json",
        [{"conversations": [{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}]}],
        "record 0: field 'conversations[1].from': expected one of human/gpt/system/user/assistant, found 'bot'",
    ),
    (
        "not_alternating.json",
        [{"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]}],
        f"record 0: field 'conversations[1].from': expected an assistant turn {ALT}, found 'human'",
    ),
    (
        "starts_with_gpt.json",
        [{"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "b"}]}],
        f"record 0: field 'conversations[1].from': expected a user turn {ALT}, found 'gpt'",
    ),
    (
        "content_not_string.json",
        [{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "user", "content": 5}]}],
        "record 1: field 'messages[0].content': expected a string, found number 5",
    ),
    (
        "empty_conversations.json",
        [{"id": "z", "conversations": []}],
        "record 0: field 'conversations': expected a non-empty list of turns, found an empty list",
    ),
    (
        "only_system.json",
        [{"messages": [{"role": "system", "content": "s"}]}],
        "record 0: field 'messages': expected at least one user turn after the system message, found none",
    ),
    (
        "chosen_missing.json",
        [{"conversations": [{"from": "human", "value": "a"}], "rejected": {"from": "gpt", "value": "b"}}],
        "record 0: field 'chosen': expected an object with 'from' and 'value', found no such key",
    ),
    (
        "chosen_wrong_role.json",
        [{"conversations": [{"from": "human", "value": "a"}], "chosen": {"from": "human", "value": "b"},
          "rejected": {"from": "gpt", "value": "c"}}],
        f"record 0: field 'chosen.from': expected an assistant turn {ALT}, found 'human'",
    ),
    (
        "hh_prompts_differ.jsonl",
        "\n".join(json.dumps(r) for r in [HH_OK, HH_OK, {
            "chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: more\n\nAssistant: yes",
            "rejected": "\n\nHuman: hi\n\nAssistant: b\n\nHuman: more\n\nAssistant: no"}]) + "\n",
        "record 2 (line 3): field 'rejected': expected the same prompt turns as 'chosen', found a difference at "
        "prompt turn 1 (prompt lengths: chosen 3, rejected 3)",
    ),
    (
        "hh_no_human_start.jsonl",
        json.dumps({"chosen": "Human: hi\n\nAssistant: a", "rejected": "x"}) + "\n",
        "record 0 (line 1): field 'chosen': expected a transcript starting with '\\n\\nHuman:', found "
        "'Human: hi\\n\\nAssistant: a'",
    ),
    (
        "hh_ends_on_human.jsonl",
        json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: b", "rejected": HH_OK["rejected"]}) + "\n",
        "record 0 (line 1): field 'chosen': expected the transcript to end with an '\\n\\nAssistant:' turn, "
        "found a Human turn",
    ),
    (
        "bad_json_line.jsonl",
        '{"instruction": "a", "output": "b"}\n\n' * 3 + '{"instruction": "a", "output": }\n',
        "record 3 (line 7): invalid JSON: Expecting value (column 32)",
    ),
    (
        "not_an_object.jsonl",
        '{"instruction": "a", "output": "b"}\n[1, 2]\n',
        "record 1 (line 2): expected a JSON object, found a list of 2 items",
    ),
    (
        "instance_output.jsonl",
        json.dumps({"id": "t", "instruction": "i", "instances": [{"input": "", "output": "o"}, {"input": "x"}]}),
        "record 0 (line 1): field 'instances[1].output': expected a string, found no such key",
    ),
    (
        "pref_prompt_ends_assistant.json",
        [{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "chosen": "c", "rejected": "r"}],
        "record 0: field 'prompt[1].role': expected the prompt to end with a user turn, found 'assistant'",
    ),
    (
        "pref_reply_is_prompt.json",
        [{"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "r"}],
        f"record 0: field 'chosen[0].role': expected an assistant turn {ALT}, found 'user'",
    ),
    (
        "mt_bench_turns.jsonl",
        json.dumps({"question_id": 1, "category": "math", "turns": "what?"}) + "\n",
        "record 0 (line 1): field 'turns': expected a non-empty list of strings, found 'what?'",
    ),
    (
        "bad_id.json",
        [{"id": {"x": 1}, "instruction": "a", "output": "b"}],
        "record 0: field 'id': expected a string or integer id, found an object with keys ['x']",
    ),
    (
        "duplicate_ids.json",
        [{"id": 1, "instruction": "a", "output": "b"}, {"id": "1", "instruction": "c", "output": "d"}],
        "record 1: expected unique row ids, found '1' again (first at {path}: record 0)",
    ),
    (
        "unknown_keys.json",
        [{"text": "a"}],
        "record 0: expected the keys of a known format (",
    ),
    (
        "not_a_list.json",
        {"rows": [{"instruction": "a", "output": "b"}]},
        "expected a list of records, or an object with a list under 'train' or 'data', "
        "found an object with keys ['rows']",
    ),
    (
        "syntax.json",
        '[{"instruction": "a",\n "output": "b"}\n{"x": 1}]',
        "invalid JSON: Expecting ',' delimiter (line 3 column 1)",
    ),
    ("empty.json", [], "holds no usable records"),
]


@pytest.mark.parametrize("name, content, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_inputs_name_file_record_and_field(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    want = f"{path}: " + message.replace("{path}", str(path))
    if name == "unknown_keys.json":  # the full list of known formats follows; check its ends
        assert str(info.value).startswith(want) and str(info.value).endswith("found an object with keys ['text']")
        assert "alpaca: instruction + output|response" in str(info.value)
    else:
        assert str(info.value) == want
    assert info.value.file == str(path)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=f"data source not found: {missing}"):
        load_rows(str(missing))


def test_skip_keeps_good_rows_counts_bad_and_warns_once(tmp_path, caplog):
    lines = [
        json.dumps({"instruction": "a", "output": "1"}),
        '{"instruction": "b", "output": ',  # syntax error, line 2
        json.dumps({"instruction": "c", "output": "3"}),
        json.dumps({"instruction": "d"}),  # no output
        json.dumps({"instruction": "e", "response": "5"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="record 1 \\(line 2\\): invalid JSON"):
        load_rows(str(path))
    with caplog.at_level(logging.WARNING, logger="deita.data.loading"):
        res = load_rows(str(path), on_error="skip")
    assert [r["id"] for r in res.rows] == ["mixed:0", "mixed:2", "mixed:4"]
    assert [r["messages"][1]["content"] for r in res.rows] == ["1", "3", "5"]
    assert res.skipped == 2
    assert str(res.first_error) == f"{path}: record 1 (line 2): invalid JSON: Expecting value (column 32)"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage() == f"{path}: skipped 2 bad record(s); the first: {res.first_error}"


def test_skip_with_nothing_left_says_why(tmp_path):
    path = tmp_path / "allbad.json"
    path.write_text(json.dumps([{"instruction": "a"}, {"instruction": "b"}]))
    with pytest.raises(DataError) as info:
        load_rows(str(path), on_error="skip")
    assert str(info.value) == (
        f"{path}: holds no usable records (2 skipped; the first: {path}: record 0: "
        "expected the keys of a known format (" + str(info.value).split("known format (", 1)[1]
    )
    assert "found an object with keys ['instruction']" in str(info.value)


def test_read_jsonl_reports_line(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    assert str(info.value) == f"{path}: record 1 (line 3): invalid JSON: Expecting ',' delimiter (column 8)"


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind must be"):
        load_rows("x.json", "chat")
    with pytest.raises(ValueError, match="on_error must be"):
        load_rows("x.json", on_error="ignore")
    with pytest.raises(KeyError, match="unknown data format 'alpacca'; registered: alpaca, alpaca_eval"):
        load_rows("x.json", fmt="alpacca")
    with pytest.raises(ValueError, match="format 'hh' yields preference rows, but kind='sft' was asked for"):
        load_rows("x.json", "sft", fmt="hh")


def test_sharegpt_deita_drops_a_leading_assistant_message_like_the_reference(tmp_path):
    from deita.data.loading import load_rows

    path = tmp_path / "scraped.json"
    path.write_text(json.dumps([{"id": "c1", "conversations": [
        {"from": "gpt", "value": "Hi! How can I help?"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    rows = load_rows(str(path), kind="sft", fmt="sharegpt_deita").rows
    assert rows == [{"id": "c1", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(DataError, match=r"field 'conversations\[0\]\.from': expected a user turn"):
        load_rows(str(path), kind="sft", fmt="sharegpt")
