"""DataError wording and location, and the exact messages of malformed inputs (file, record, field)."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from deita.data.errors import MISSING, DataError, describe, expected
from deita.data.loading import load_rows
from deita.data.readers import read_jsonl
from tests.helpers import run_train


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
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         {"messages": [{"role": "user", "content": 5}]}],
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
    with pytest.raises(ValueError, match="unknown data format 'alpacca'; registered: alpaca, alpaca_eval"):
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


# ------------------------------------------------------------------ files that cannot be read as a whole

GOOD = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(6)]
GOOD_JSONL = "".join(json.dumps(r) + "\n" for r in GOOD).encode()


def _gzip_with_bad_crc(data: bytes) -> bytes:
    blob = bytearray(gzip.compress(data))
    blob[-8] ^= 0xFF  # the CRC32 in the trailer
    return bytes(blob)


def _parquet_bytes(tmp_path) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(GOOD), tmp_path / "good.parquet")
    return (tmp_path / "good.parquet").read_bytes()


def _damaged_disk_folder(path) -> None:
    from datasets import Dataset

    Dataset.from_list(GOOD).save_to_disk(str(path))
    for arrow in path.glob("*.arrow"):
        arrow.unlink()


BAD_UTF8_JSON = b'[{"instruction": "a", "output": "b"},\n {"instruction": "caf\xe9", "output": "d"}]'
"""Latin-1 'é' (0xe9) on line 2, byte offset 59."""


def make_file_faults(root) -> dict[str, tuple[str, str]]:
    """Broken sources built in ``root``: name -> (source as given in the config, the exact error line).

    Each error is one line that names the file (and the record, line and byte offset where they apply).
    """
    root.mkdir(parents=True, exist_ok=True)
    parquet = _parquet_bytes(root)
    line2 = len(json.dumps(GOOD[0])) + 1 + 10  # byte offset of the bad byte: 10 bytes into line 2
    bad_utf8 = GOOD_JSONL[:line2] + b"\xff" + GOOD_JSONL[line2:]
    files = {
        "truncated.jsonl.gz": gzip.compress(GOOD_JSONL)[:40],
        "not_gzip.jsonl.gz": GOOD_JSONL,
        "bad_crc.jsonl.gz": _gzip_with_bad_crc(GOOD_JSONL),
        "bad_utf8.jsonl": bad_utf8,
        "bad_utf8.jsonl.gz": gzip.compress(bad_utf8),
        "bad_utf8.json": BAD_UTF8_JSON,
        "truncated.parquet": parquet[: len(parquet) // 2],
        "not_parquet.parquet": b"instruction,output\na,b\n",
        "folder/a.jsonl": GOOD_JSONL,
        "folder/b.jsonl.gz": gzip.compress(GOOD_JSONL)[:30],
        "empty_folder/notes.txt": b"no data here",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    _damaged_disk_folder(root / "disk")
    os.mkfifo(root / "pipe.jsonl")
    gz_truncated = "expected complete gzip data, found a truncated file (it ends before the gzip end-of-stream marker)"
    bad_parquet = "expected a parquet file, found one pyarrow cannot read ("

    def at(name: str, message: str) -> tuple[str, str]:
        return str(root / name), f"{root / name}: {message}"

    return {
        "truncated gzip": at("truncated.jsonl.gz", gz_truncated),
        "not gzip": at("not_gzip.jsonl.gz", "expected gzip data (the name ends in .gz), found a file that is not gzip"),
        "gzip bad crc": at("bad_crc.jsonl.gz", "expected intact gzip data, found corrupt data (CRC check failed "),
        "invalid utf-8 jsonl": at("bad_utf8.jsonl", "record 1 (line 2): expected UTF-8 text, found byte 0xff "
                                  f"(invalid start byte) at byte offset {line2}"),
        "invalid utf-8 jsonl.gz": at("bad_utf8.jsonl.gz", "record 1 (line 2): expected UTF-8 text, found byte 0xff "
                                     f"(invalid start byte) at byte offset {line2} of the decompressed data"),
        "invalid utf-8 json": at("bad_utf8.json", "line 2: expected UTF-8 text, found byte 0xe9 (invalid continuation "
                                 f"byte) at byte offset {BAD_UTF8_JSON.index(0xE9)}"),
        "truncated parquet": at("truncated.parquet", bad_parquet + "Parquet magic bytes not found in footer. "),
        "not parquet": at("not_parquet.parquet", bad_parquet),
        "missing path": at("nope.jsonl", "no such file or folder"),
        "missing relative path": ("no/such/pool.jsonl",
                                  "no/such/pool.jsonl: no such file or folder (relative to the working directory "),
        "folder with a broken file": (str(root / "folder"), f"{root / 'folder' / 'b.jsonl.gz'}: {gz_truncated}"),
        "folder without data files": at("empty_folder", "expected data files (.jsonl.gz, .json.gz, .jsonl, .json, "
                                        ".parquet) or a datasets.save_to_disk folder, found none"),
        "damaged save_to_disk folder": at("disk", "expected a datasets.save_to_disk folder, found one that cannot be "
                                          "loaded ([Errno 2] No such file or directory: "),
        "named pipe": at("pipe.jsonl", "expected a regular file or a folder, found a named pipe"),
        "not a hub name": ("my pool", "my pool: expected a data file, a folder or a hub dataset name ('name' or "
                           "'org/name'), found no such file or folder, and not a hub name either"),
        "hub name that fails offline": ("no-such-org/no-such-data", "no-such-org/no-such-data: no such local file or "
                                        "folder, and the hub dataset cannot be loaded ("),
    }


def _assert_error_line(text: str, want: str, case: str) -> None:
    """``text`` is the exact message ``want`` (a prefix where ``want`` ends in a space or '(')."""
    if want.endswith((" ", "(")):
        assert text.startswith(want) and "\n" not in text, f"{case}: {text!r} does not start with {want!r}"
    else:
        assert text == want, f"{case}: {text!r} != {want!r}"


def test_file_level_faults_raise_one_data_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for case, (source, want) in make_file_faults(tmp_path).items():
        for on_error in ("raise", "skip"):  # a file that cannot be read is never skipped as "bad records"
            if on_error == "skip" and case.startswith("invalid utf-8 jsonl"):
                continue  # a line that is not UTF-8 is one bad record: skippable (tested below)
            with pytest.raises(DataError) as info:
                load_rows(source, on_error=on_error)
            _assert_error_line(str(info.value), want, f"{case} ({on_error})")


def test_invalid_utf8_line_is_a_skippable_record(tmp_path):
    source, _ = make_file_faults(tmp_path)["invalid utf-8 jsonl"]
    result = load_rows(source, on_error="skip")
    assert (len(result.rows), result.skipped) == (len(GOOD) - 1, 1)
    assert "byte offset" in str(result.first_error)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_escape_is_a_record_error_naming_the_field(tmp_path, suffix):
    """JSON's "\\ud800" parses to a string no tokenizer or UTF-8 writer accepts: a record error naming the
    field (was an encode error at the first write, naming no record), skippable under on_error: skip."""
    bad = '{"instruction": "ok", "input": "x\\ud800y", "output": "a"}'
    good = '{"instruction": "q", "output": "a"}'
    path = tmp_path / f"pool{suffix}"
    path.write_text(f"{good}\n{bad}\n" if suffix == ".jsonl" else f"[{good}, {bad}]")
    with pytest.raises(DataError) as err:
        load_rows(str(path))
    assert str(err.value) == (f"{path}: record 1{' (line 2)' if suffix == '.jsonl' else ''}: field 'input': "
                              "expected valid Unicode text, found a lone surrogate '\\ud800' at character 1")
    result = load_rows(str(path), on_error="skip")
    assert (len(result.rows), result.skipped) == (1, 1)


def test_utf8_bom_is_read_as_an_encoding_mark(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + GOOD_JSONL)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    for name in ("bom.jsonl", "bom.json"):
        assert [r["messages"][0]["content"] for r in load_rows(str(tmp_path / name)).rows] == [g["instruction"] for g in GOOD]


def _without_file_permission_bypass() -> list[str] | None:
    """Launcher under which a chmod-000 file cannot be read: none for a normal user; as root (who reads
    anything), ``setpriv`` dropping the two capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return None
    setpriv = shutil.which("setpriv")
    args = [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None
    probe = subprocess.run([*args, "cat", "/proc/self/status"], capture_output=True) if args else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return [*args, sys.executable]


def _run_cases(tmp_path, cases: dict[str, tuple[str, str]], launcher=None, extra=()) -> list[str]:
    """Run ``train.py recipe=tiny stages=[select]`` once per case (in parallel), with the case's source
    as the pool; return what went wrong (rc other than 2, a traceback, the message not on stderr). Preflight
    (deita/preflight.py) catches these before the stage, so each message starts with the pool's config key."""
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        case, (source, want) = item
        args = ["recipe=tiny", "stages=[select]", "logger=none", f"paths.runs_dir={tmp_path / 'runs' / str(abs(hash(case)))}",
                f"paths.cache_dir={tmp_path / 'cache'}", f"data.pool=[{{path: '{source}'}}]", *extra]
        proc = run_train(args, launcher=launcher, env={"HF_DATASETS_OFFLINE": "1"}, timeout=300)
        errors = [line[len("error: "):] for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if proc.returncode != 2 or "Traceback" in proc.stderr + proc.stdout or len(errors) != 1:
            return f"{case}: rc {proc.returncode}, stderr tail: {proc.stderr[-800:]}"
        try:
            _assert_error_line(errors[0], f"data.pool[0].path: {want}", case)
        except AssertionError as e:
            return str(e)
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return [problem for problem in pool.map(one, cases.items()) if problem]


def test_cli_file_faults_exit_2_with_one_line_and_no_traceback(tmp_path):
    problems = _run_cases(tmp_path, make_file_faults(tmp_path / "data"))
    assert not problems, "\n".join(problems)


def test_cli_unreadable_file_and_folder_exit_2(tmp_path):
    launcher = _without_file_permission_bypass()
    root = tmp_path / "data"
    (root / "locked").mkdir(parents=True)
    (root / "locked" / "a.jsonl").write_bytes(GOOD_JSONL)
    for name in ("locked.jsonl", "locked.parquet", "locked.jsonl.gz"):
        (root / name).write_bytes(b"")
    try:
        for path in [*root.iterdir()]:
            path.chmod(0)
        cases = {name: (str(root / name), f"{root / name}: permission denied (cannot read it)")
                 for name in ("locked.jsonl", "locked.parquet", "locked.jsonl.gz")}
        cases["folder"] = (str(root / "locked"), f"{root / 'locked'}: permission denied (cannot read it)")
        problems = _run_cases(tmp_path, cases, launcher=launcher)
    finally:
        for path in root.iterdir():
            path.chmod(0o755)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ semantics that would train nothing

USER_ONLY = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(3)]

# (file name, records, expected error after "<path>: ")
MEANINGLESS = [
    ("pref_same_strings.json", [{"prompt": "q", "chosen": "same", "rejected": "same"}],
     "record 0: field 'rejected': expected a rejected reply that differs from the chosen one, found the same text"),
    ("pref_same_but_spaces.json", [{"prompt": "q", "chosen": "same", "rejected": " same\n"}],
     "record 0: field 'rejected': expected a rejected reply that differs from the chosen one, found the same text"),
    ("pref_same_lists.json", [{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                               "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     "record 0: field 'rejected': expected a rejected reply that differs from the chosen one, found the same text"),
    ("pref_same_llamafactory.json", [{"conversations": [{"from": "human", "value": "q"}],
                                      "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "a"}}],
     "record 0: field 'rejected': expected a rejected reply that differs from the chosen one, found the same text"),
    ("pref_same_hh.json", [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"}],
     "record 0: field 'rejected': expected a rejected reply that differs from the chosen one, found the same text"),
    ("pref_empty_prompt.json", [{"prompt": "", "chosen": "a", "rejected": "b"}],
     "record 0: field 'prompt': expected a prompt whose last user turn has text, found ''"),
    ("pref_blank_last_user_turn.json", [{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                                                    {"role": "user", "content": "  \n"}], "chosen": "c", "rejected": "r"}],
     "record 0: field 'prompt[2].content': expected a prompt whose last user turn has text, found '  \\n'"),
    ("pref_empty_llamafactory_prompt.json", [{"conversations": [{"from": "human", "value": ""}],
                                              "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}],
     "record 0: field 'conversations[0].value': expected a prompt whose last user turn has text, found ''"),
    ("sft_user_only.jsonl", USER_ONLY,
     "record 0 (line 1): field 'messages': expected at least one assistant turn (a reply to train on), found none"),
    ("sft_system_and_user.json", [{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}]}],
     "record 0: field 'conversations': expected at least one assistant turn (a reply to train on), found none"),
]


@pytest.mark.parametrize("name, records, message", MEANINGLESS, ids=[m[0] for m in MEANINGLESS])
def test_pairs_and_rows_that_train_nothing_are_data_errors(tmp_path, name, records, message):
    path = tmp_path / name
    text = "".join(json.dumps(r) + "\n" for r in records) if name.endswith(".jsonl") else json.dumps(records)
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    assert str(info.value) == f"{path}: {message}"


def test_meaningless_records_are_counted_skips_under_on_error_skip(tmp_path, caplog):
    pairs = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "x", "rejected": "x"},
             {"prompt": " ", "chosen": "a", "rejected": "b"}, {"prompt": "q4", "chosen": "c", "rejected": "d"}]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(pairs))
    with caplog.at_level(logging.WARNING, logger="deita.data.loading"):
        result = load_rows(str(path), on_error="skip")
    assert [r["prompt"][0]["content"] for r in result.rows] == ["q1", "q4"]
    assert result.skipped == 2 and "record 1: field 'rejected'" in str(result.first_error)
    assert f"{path}: skipped 2 bad record(s)" in caplog.text


def test_user_only_pool_fails_at_load_time_through_the_cli(tmp_path):
    pool = tmp_path / "user_only.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in USER_ONLY))
    want = f"{pool}: record 0 (line 1): field 'messages': expected at least one assistant turn (a reply to train on), found none"
    problems = _run_cases(tmp_path, {"user-only pool": (str(pool), want)})
    assert not problems, "\n".join(problems)


def test_user_only_rows_are_counted_skips_through_the_cli(tmp_path):
    pool = tmp_path / "mixed.jsonl"
    good = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in [*USER_ONLY, *good]))
    runs = tmp_path / "runs"
    proc = run_train(["recipe=tiny", "stages=[select]", "logger=none", f"paths.runs_dir={runs}",
                      f"paths.cache_dir={tmp_path / 'cache'}", f"data.pool=[{{path: '{pool}', on_error: skip}}]"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{pool}: skipped 3 bad record(s); the first: {pool}: record 0 (line 1): field 'messages'" in proc.stdout + proc.stderr
    manifest = json.loads(next(runs.rglob("select/manifest.json")).read_text())
    assert (manifest["pool_rows"], manifest["skipped_records"]) == (5, 3)


def test_dpo_stage_rejects_equal_pairs_before_loading_a_model(tmp_path):
    from types import SimpleNamespace

    from deita.stages.dpo import run_dpo_stage
    from tests.helpers import compose_config

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": "a"}]))
    cfg = compose_config(["recipe=tiny", f"data.preference=[{{path: '{pairs}'}}]"])
    ctx = SimpleNamespace(name="dpo", upstream={"sft": tmp_path / "no_sft_model_here"})  # loading a model from it would fail
    with pytest.raises(DataError, match=r"pairs.json: record 1: field 'rejected': expected a rejected reply that differs"):
        run_dpo_stage(cfg, ctx)


# ------------------------------------------------------------------ a conversation that ends on a user turn

ENDS_ON_USER = {"id": "c", "messages": [{"role": "user", "content": "first question"},
                                        {"role": "assistant", "content": "first answer"},
                                        {"role": "user", "content": "unanswered follow up"}]}


def test_trailing_user_turn_is_scored_with_an_empty_response():
    from deita.selection.scorers.turns import conversation_turns

    assert conversation_turns(ENDS_ON_USER["messages"]) == [("first question", "first answer"),
                                                            ("unanswered follow up", "")]


@pytest.mark.parametrize("assistant_only_loss", [False, True])
def test_sft_trains_without_the_trailing_user_turn(tiny_llama, tmp_path, assistant_only_loss):
    """What TRL tokenizes from the SFT stage's dataset: the unanswered turn is neither in the labels nor
    in the input (without the trim, ``assistant_only_loss=false`` would train on it)."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from deita.stages.sft import messages_dataset

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    dataset = messages_dataset([ENDS_ON_USER])
    assert dataset[0]["messages"] == ENDS_ON_USER["messages"][:2]
    args = SFTConfig(output_dir=str(tmp_path), bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                     save_strategy="no", max_steps=1, max_length=256, assistant_only_loss=assistant_only_loss,
                     per_device_train_batch_size=1, disable_tqdm=True)
    trainer = SFTTrainer(model=str(tiny_llama), args=args, train_dataset=dataset, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    text = tok.decode(ids)
    labelled = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert "first answer" in labelled and "first question" in text
    assert "follow up" not in text and "follow up" not in labelled
