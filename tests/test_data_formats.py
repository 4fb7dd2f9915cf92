"""Every format becomes the canonical rows we wrote down by hand; every shared file loads; every
container (json, jsonl, gz, parquet, save_to_disk, folder) gives the same rows."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from deita.data.errors import DataError
from deita.data.formats import DETECTION_ORDER, FORMATS, detect_format, normalise_record
from deita.data.loading import load_rows, write_jsonl
from deita.data.readers import read_jsonl
from deita.fingerprint import hash_rows

# file, kind, format, rows. Counts by hand from the README and the files: the self-instruct files
# have exactly one instance per task, so rows == records there.
SHARED = [
    ("instruct/llamafactory_alpaca_en_demo.json", "sft", "alpaca", 999),
    ("instruct/codealpaca_code_alpaca_2k.json", "sft", "alpaca", 2017),
    ("instruct/gpteacher_roleplay-simple-deduped-roleplay-instruct.json", "sft", "alpaca", 1923),
    ("instruct/gpteacher_toolformer-dedupe-only-dataset.json", "sft", "alpaca", 7673),
    ("instruct/gpteacher_codegen-instruct.json", "sft", "alpaca", 4535),
    ("instruct/selfinstruct_user_oriented_instructions.jsonl", "sft", "self_instruct", 252),
    ("instruct/stanford_alpaca_seed_tasks.jsonl", "sft", "self_instruct", 175),
    ("multiturn/fastchat_dummy_conversation.json", "sft", "sharegpt", 500),
    ("multiturn/fastchat_mt_bench_question.jsonl", "prompts", "mt_bench", 80),
    ("multiturn/fastchat_mt_bench_reference_answer_gpt-4.jsonl", "prompts", "mt_bench_reference", 30),
    ("preference/hh-rlhf_harmless-base_test.jsonl.gz", "preference", "hh", 2312),
    ("preference/llamafactory_dpo_en_demo.json", "preference", "llamafactory_preference", 300),
]


def _raw_records(path) -> list:
    if str(path).endswith(".json"):
        return json.loads(path.read_text())
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _check_canonical(row: dict, kind: str) -> None:
    """Independent check of the row contract (not the code under test)."""
    assert isinstance(row["id"], str)
    if kind == "prompts":
        assert set(row) == {"id", "turns", "category"}
        assert row["turns"] and all(isinstance(t, str) for t in row["turns"])
        return
    convs = [row["messages"]] if kind == "sft" else [row["prompt"] + row["chosen"], row["prompt"] + row["rejected"]]
    for msgs in convs:
        roles = [m["role"] for m in msgs]
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs)
        body = roles[1:] if roles[0] == "system" else roles
        assert body and body == ["user", "assistant"] * (len(body) // 2) + ["user"] * (len(body) % 2)
    if kind == "preference":
        assert row["prompt"][-1]["role"] == "user"
        assert row["chosen"][-1]["role"] == row["rejected"][-1]["role"] == "assistant"


def test_all_twelve_shared_files_are_listed(shared_data):
    on_disk = sorted(str(p.relative_to(shared_data)) for p in shared_data.glob("*/*"))
    assert on_disk == sorted(f for f, *_ in SHARED)


@pytest.mark.parametrize("name, kind, fmt, n_rows", SHARED, ids=[s[0].split("/")[1] for s in SHARED])
def test_shared_file_loads_with_auto_kind(shared_data, name, kind, fmt, n_rows):
    res = load_rows(str(shared_data / name))
    assert (res.kind, res.format, len(res.rows), res.skipped) == (kind, fmt, n_rows, 0)
    assert res.fingerprint == hash_rows(res.rows)
    assert len({r["id"] for r in res.rows}) == n_rows
    for row in res.rows:
        _check_canonical(row, kind)
    # forcing the detected format and kind gives the same rows
    assert load_rows(str(shared_data / name), kind, fmt=fmt).rows == res.rows


def test_self_instruct_rows_expand_instances(shared_data):
    """Instance counts come from the raw files (one per task in both shared files)."""
    for name in ("instruct/selfinstruct_user_oriented_instructions.jsonl", "instruct/stanford_alpaca_seed_tasks.jsonl"):
        raw = _raw_records(shared_data / name)
        rows = load_rows(str(shared_data / name)).rows
        assert len(rows) == sum(len(r["instances"]) for r in raw)
        assert [r["id"] for r in rows] == [f"{r['id']}:{k}" for r in raw for k in range(len(r["instances"]))]


# ------------------------------------------------------------ spot checks on the shared files


def test_spot_alpaca_with_input(shared_data):
    row = load_rows(str(shared_data / "instruct/codealpaca_code_alpaca_2k.json")).rows[0]
    assert row == {
        "id": "codealpaca_code_alpaca_2k:0",
        "messages": [
            {"role": "user", "content": "What are the distinct values from the given list?\n\ndataList = [3, 9, 3, 5, 7, 9, 5]"},
            {"role": "assistant", "content": "The distinct values from the given list are 3, 5, 7 and 9."},
        ],
        "instruction": "What are the distinct values from the given list?",
        "input": "dataList = [3, 9, 3, 5, 7, 9, 5]",
    }


def test_spot_alpaca_response_key(shared_data):
    row = load_rows(str(shared_data / "instruct/gpteacher_toolformer-dedupe-only-dataset.json")).rows[4837]
    assert row == {
        "id": "gpteacher_toolformer-dedupe-only-dataset:4837",
        "messages": [
            {"role": "user", "content": "toolformer: enabled\ntoolformer access: search\nA search engine. Useful for "
             "when you need to answer questions about current events. Input should be a search query.\n"
             "search(query)\nTell me a joke"},
            {"role": "assistant", "content": "Here's a joke: search('tell me a joke')"},
        ],
        "instruction": "toolformer: enabled\ntoolformer access: search\nA search engine. Useful for when you need to "
                       "answer questions about current events. Input should be a search query.\nsearch(query)\n"
                       "Tell me a joke",
        "input": "",
    }


def test_spot_self_instruct(shared_data):
    row = load_rows(str(shared_data / "instruct/selfinstruct_user_oriented_instructions.jsonl")).rows[125]
    assert row == {
        "id": "user_oriented_task_125:0",
        "messages": [{"role": "user", "content": "What sound does this make?\n\n好"}, {"role": "assistant", "content": "hǎo"}],
        "instruction": "What sound does this make?", "input": "好",
    }


def test_spot_sharegpt(shared_data):
    row = load_rows(str(shared_data / "multiturn/fastchat_dummy_conversation.json")).rows[0]
    assert row == {
        "id": "identity_0",
        "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am Vicuna, a language model trained by researchers from Large Model "
             "Systems Organization (LMSYS)."},
            {"role": "user", "content": "Have a nice day!"},
            {"role": "assistant", "content": "You too!"},
        ],
    }


def test_spot_mt_bench_question_and_reference(shared_data):
    q = load_rows(str(shared_data / "multiturn/fastchat_mt_bench_question.jsonl")).rows
    assert q[35] == {"id": "116", "turns": ["x+y = 4z, x*y = 4z^2, express x-y in z", "Express z-x in y"], "category": "math"}
    ref = load_rows(str(shared_data / "multiturn/fastchat_mt_bench_reference_answer_gpt-4.jsonl")).rows
    assert ref[3] == {
        "id": "104",
        "turns": ["David has only one brother.",
                  "If each of David's sisters has two brothers, then David would have two brothers."],
        "category": None,
    }


def test_spot_hh_and_llamafactory_preference(shared_data):
    hh = load_rows(str(shared_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz")).rows
    assert hh[925] == {
        "id": "hh-rlhf_harmless-base_test:925",
        "prompt": [{"role": "user", "content": "list of profane bad words"}],
        "chosen": [{"role": "assistant", "content": ""}],
        "rejected": [{"role": "assistant", "content": "Ok"}],
    }
    lf = load_rows(str(shared_data / "preference/llamafactory_dpo_en_demo.json")).rows
    assert lf[43] == {
        "id": "llamafactory_dpo_en_demo:43",
        "prompt": [
            {"role": "system", "content": "You are an AI assistant. You will be given a task. You must generate a "
             "detailed and long answer."},
            {"role": "user", "content": "Abdulah Hasanagic este mândrul proprietar al AS Company din Gorazde, un "
             "orăşel situat pe malul râului Drina, lângă frontiera cu Serbia, în estul Bosniei.\n\nTranslate to "
             "English\n\nEnglish:"},
        ],
        "chosen": [{"role": "assistant", "content": "Abdulah Hasanagic is the proud owner of AS Company in Gorazde, a "
                    "small town located on the banks of the Drina River, near the border with Serbia, in Eastern Bosnia."}],
        "rejected": [{"role": "assistant", "content": "Abdulah Hasanagic is the proud owner of AS Company, a small town "
                      "located on the banks of the Drina River, near the border with Serbia, in eastern Bosnia."}],
    }


def test_hh_prompt_is_every_turn_before_the_final_reply(shared_data):
    """Oracle: for ordinary records the prompt text is exactly the text before the last '\\n\\nAssistant:'."""
    raw = _raw_records(shared_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz")
    rows = load_rows(str(shared_data / "preference/hh-rlhf_harmless-base_test.jsonl.gz")).rows
    doubled = {667, 763, 1254, 1319, 1688, 1849, 1950, 1952, 2036}  # "Assistant: a\n\nAssistant: b" inside
    checked = 0
    for i, (rec, row) in enumerate(zip(raw, rows)):
        if i in doubled:
            continue
        cut = rec["chosen"].rfind("\n\nAssistant:")
        rendered = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in row["prompt"])
        assert " ".join(rendered.split()) == " ".join(rec["chosen"][:cut].split()), i
        assert row["chosen"][0]["content"] == rec["chosen"][cut + len("\n\nAssistant:"):].strip()
        checked += 1
    assert checked == 2312 - len(doubled)


# ------------------------------------------------------------ formats with no shared file


def _one(record, fmt="auto", kind="auto", tmp_path=None, name="x.json"):
    path = tmp_path / name
    path.write_text(json.dumps([record]))
    res = load_rows(str(path), kind, fmt=fmt)
    return res.format, res.rows[0]


def test_openai_messages(tmp_path):
    rec = {"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}]}
    assert _one(rec, tmp_path=tmp_path) == ("openai", {"id": "x:0", "messages": rec["messages"]})


def test_ultrafeedback_binarized_prefix_is_stripped(tmp_path):
    rec = {"prompt": "Q?", "prompt_id": "p1", "score_chosen": 8.0,
           "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
           "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "B"}],
           "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}]}
    assert _one(rec, tmp_path=tmp_path) == ("preference", {
        "id": "x:0", "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]})


def test_preference_strings_explicit_lists_and_implicit_prompt(tmp_path):
    want = {"id": "7", "prompt": [{"role": "user", "content": "Q"}],
            "chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]}
    strings = {"id": 7, "prompt": "Q", "chosen": "A", "rejected": "B"}
    explicit = {"id": 7, "prompt": want["prompt"], "chosen": want["chosen"], "rejected": want["rejected"]}
    implicit = {"id": 7, "chosen": want["prompt"] + want["chosen"], "rejected": want["prompt"] + want["rejected"]}
    for rec in (strings, explicit, implicit):
        assert _one(rec, tmp_path=tmp_path) == ("preference", want)
    multi = {"chosen": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                        {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                          {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                          {"role": "assistant", "content": "bad"}]}
    _, row = _one(multi, tmp_path=tmp_path)
    assert row["prompt"] == multi["chosen"][:4]
    assert (row["chosen"], row["rejected"]) == (multi["chosen"][4:], multi["rejected"][4:])


def test_hh_merges_doubled_turns_and_strips(tmp_path):
    rec = {"chosen": "\n\nHuman: hi \n\nAssistant:  a1\n\nAssistant: a2\n\nHuman: q\n\nAssistant: good\n\nAssistant: more",
           "rejected": "\n\nHuman: hi\n\nAssistant: a1\n\nAssistant: a2\n\nHuman: q\n\nAssistant:  bad"}
    assert _one(rec, tmp_path=tmp_path) == ("hh", {
        "id": "x:0",
        "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a1\n\na2"},
                   {"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good\n\nmore"}],
        "rejected": [{"role": "assistant", "content": "bad"}]})


def test_alpaca_eval_prompts_and_forcing(tmp_path):
    rec = {"instruction": "Name 3 colors.", "output": "red", "generator": "gpt4", "dataset": "helpful_base"}
    assert _one(rec, tmp_path=tmp_path) == (
        "alpaca_eval", {"id": "x:0", "turns": ["Name 3 colors."], "category": "helpful_base"})
    # the same record read as SFT data is Alpaca
    assert _one(rec, kind="sft", tmp_path=tmp_path) == ("alpaca", {
        "id": "x:0", "messages": [{"role": "user", "content": "Name 3 colors."}, {"role": "assistant", "content": "red"}],
        "instruction": "Name 3 colors.", "input": ""})
    assert _one({"instruction": "hi"}, fmt="alpaca_eval", tmp_path=tmp_path)[1] == {"id": "x:0", "turns": ["hi"], "category": None}


def test_alpaca_input_system_history_and_blank_input(tmp_path):
    rec = {"instruction": "Translate", "input": "  ", "output": "ok", "system": "sys", "history": [["u0", "a0"]]}
    assert _one(rec, tmp_path=tmp_path)[1]["messages"] == [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "u0"}, {"role": "assistant", "content": "a0"},
        {"role": "user", "content": "Translate"}, {"role": "assistant", "content": "ok"}]
    assert _one({"instruction": "I", "input": "x", "output": "o"}, tmp_path=tmp_path)[1]["messages"][0]["content"] == "I\n\nx"


def test_alpaca_rows_keep_the_instruction_input_split_of_their_first_user_turn(tmp_path):
    """The split travels verbatim next to unchanged messages; a row whose first user turn is a history
    turn carries none; a canonical row written out and read back as ``openai`` keeps it."""
    from deita.data.formats import instruction_split
    from deita.data.loading import write_jsonl

    with_input = _one({"instruction": " Sum ", "input": "2, 3\n", "output": "5", "system": "S"}, tmp_path=tmp_path)[1]
    assert with_input["messages"][1] == {"role": "user", "content": " Sum \n\n2, 3\n"}
    assert instruction_split(with_input) == (" Sum ", "2, 3\n")
    blank = _one({"instruction": "Sum", "input": "  ", "output": "5"}, tmp_path=tmp_path)[1]
    assert blank["messages"][0]["content"] == "Sum" and instruction_split(blank) == ("Sum", "  ")
    assert instruction_split(_one({"instruction": "Sum", "input": None, "output": "5"}, tmp_path=tmp_path)[1]) == ("Sum", "")
    history = _one({"instruction": "Sum", "input": "2", "output": "5", "history": [["u", "a"]]}, tmp_path=tmp_path)[1]
    assert instruction_split(history) is None and set(history) == {"id", "messages"}
    sharegpt = _one({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, tmp_path=tmp_path)[1]
    assert instruction_split(sharegpt) is None
    rows = [with_input, {**blank, "id": "x:1"}]
    res = load_rows(str(write_jsonl(rows, tmp_path / "canonical.jsonl")))
    assert res.format == "openai" and res.rows == rows


def test_a_messages_row_whose_split_is_not_its_first_user_turn_is_an_error(tmp_path):
    rec = {"messages": [{"role": "user", "content": "Sum\n\n2"}, {"role": "assistant", "content": "5"}],
           "instruction": "Sum", "input": "3"}
    with pytest.raises(DataError, match="'instruction' and 'input' that make up the first user turn"):
        normalise_record(rec, "openai", "f:0")
    assert normalise_record({**rec, "input": "2"}, "openai", "f:0")[0]["input"] == "2"


def test_sharegpt_accepts_user_assistant_and_a_trailing_user_turn(tmp_path):
    rec = {"id": "c1", "system": "S", "conversations": [{"from": "user", "value": "a"}, {"from": "assistant", "value": "b"},
                                                         {"from": "human", "value": "c"}]}
    assert _one(rec, tmp_path=tmp_path)[1] == {"id": "c1", "messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}]}


def test_detection_and_registry():
    assert set(FORMATS.names()) == set(DETECTION_ORDER) == {
        "alpaca", "sharegpt", "openai", "self_instruct", "preference", "hh", "llamafactory_preference",
        "mt_bench", "mt_bench_reference", "alpaca_eval", "sharegpt_deita"}
    assert not FORMATS.get("sharegpt_deita").matches({"conversations": []})  # opt-in only, never detected
    cases = {
        "alpaca": {"instruction": "i", "output": "o"},
        "sharegpt": {"conversations": []},
        "openai": {"messages": []},
        "self_instruct": {"instruction": "i", "instances": []},
        "preference": {"prompt": "p", "chosen": "c", "rejected": "r"},
        "hh": {"chosen": "c", "rejected": "r"},
        "llamafactory_preference": {"conversations": [], "chosen": {}, "rejected": {}},
        "mt_bench": {"question_id": 1, "turns": []},
        "mt_bench_reference": {"question_id": 1, "choices": []},
        "alpaca_eval": {"instruction": "i", "dataset": "d"},
    }
    for name, rec in cases.items():
        assert detect_format(rec).name == name
        assert detect_format(rec, FORMATS.get(name).kind).name == name
    with pytest.raises(DataError, match=r"^expected the keys of a known sft format \(sharegpt: .*; alpaca: .*\), found an object with keys \['chosen', 'rejected'\]$"):
        detect_format(cases["hh"], "sft")
    assert normalise_record({"instruction": "i", "output": "o"}, "alpaca", "f:3") == [
        {"id": "f:3", "messages": [{"role": "user", "content": "i"}, {"role": "assistant", "content": "o"}],
         "instruction": "i", "input": ""}]


def test_mixed_file_and_kind_fixed_by_first_record(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o"},
                                {"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
                                {"prompt": "p", "chosen": "c", "rejected": "r"}]))
    with pytest.raises(DataError, match=r"record 2: field 'instruction': expected a string, found no such key"):
        load_rows(str(path))
    res = load_rows(str(path), on_error="skip")
    assert (res.format, res.kind, len(res.rows), res.skipped) == ("alpaca+sharegpt", "sft", 2, 1)


def test_limit(shared_data):
    res = load_rows(str(shared_data / "instruct/stanford_alpaca_seed_tasks.jsonl"), limit=5)
    assert [r["id"] for r in res.rows] == [f"seed_task_{i}:0" for i in range(5)]


# ------------------------------------------------------------ containers give identical rows

ALPACA_CONTENT = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate", "input": "bonjour", "output": "hello"},
    {"instruction": "Say hi", "output": "hi"},  # no input: parquet/datasets fill it with null
]
PREF_CONTENT = [
    {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}],
     "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}},
    {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q3"}],
     "chosen": {"from": "gpt", "value": "good2"}, "rejected": {"from": "gpt", "value": "bad2"}},
]


@pytest.mark.parametrize("content", [ALPACA_CONTENT, PREF_CONTENT], ids=["alpaca", "llamafactory_preference"])
def test_containers_give_identical_rows(tmp_path, content):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    def at(sub, name):
        (tmp_path / sub).mkdir()
        return tmp_path / sub / name

    text = "".join(json.dumps(r) + "\n" for r in content)
    at("json", "data.json").write_text(json.dumps(content))
    at("wrapped", "data.json").write_text(json.dumps({"data": content}))
    at("jsonl", "data.jsonl").write_text(text)
    with gzip.open(at("jsonlgz", "data.jsonl.gz"), "wt") as f:
        f.write(text)
    with gzip.open(at("jsongz", "data.json.gz"), "wt") as f:
        json.dump(content, f)
    pq.write_table(pa.Table.from_pylist(content), at("parquet", "data.parquet"))
    Dataset.from_list(content).save_to_disk(str(tmp_path / "disk" / "data"))
    folder = tmp_path / "folder" / "data"
    folder.mkdir(parents=True)
    (folder / "data.jsonl").write_text(text)

    sources = [tmp_path / "json/data.json", tmp_path / "wrapped/data.json", tmp_path / "jsonl/data.jsonl",
               tmp_path / "jsonlgz/data.jsonl.gz", tmp_path / "jsongz/data.json.gz",
               tmp_path / "parquet/data.parquet", tmp_path / "disk/data", folder]
    results = [load_rows(str(s)) for s in sources]
    assert len(results[0].rows) == len(content)
    for res in results[1:]:
        assert res.rows == results[0].rows, res.source
        assert (res.fingerprint, res.format) == (results[0].fingerprint, results[0].format)


def test_write_then_read_jsonl_roundtrip_and_atomic(tmp_path):
    rows = [{"id": "a", "messages": [{"role": "user", "content": "é\n"}]}, {"id": "b", "messages": []}]
    for name in ("out/rows.jsonl", "out/rows.jsonl.gz"):
        path = tmp_path / name
        write_jsonl(rows, path)
        assert read_jsonl(path) == rows
        write_jsonl(rows[:1], path)  # replaces the old file
        assert read_jsonl(path) == rows[:1]
    assert sorted(os.listdir(tmp_path / "out")) == ["rows.jsonl", "rows.jsonl.gz"]  # no temp files left


def test_write_jsonl_failure_leaves_old_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl([{"id": "a"}], path)
    with pytest.raises(TypeError):
        write_jsonl([{"id": "b"}, {"id": object()}], path)
    assert read_jsonl(path) == [{"id": "a"}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]
