"""The answer files the judges read: FastChat ``model_answer`` JSONL and AlpacaEval JSON. Pure builders;
the eval stage writes them atomically (:mod:`deita.io`).

FastChat llm_judge (``gen_judgment.py``) joins answers to questions by ``question_id`` and takes the model
name from the answer file's name, so the file is ``model_answer/<model_id>.jsonl`` and ``question_id``
keeps the question file's type (an integer when the source id was an integer). AlpacaEval reads a JSON
list of ``{"instruction", "output", "generator", "dataset"}``.
"""

from __future__ import annotations

import hashlib
import json
import time

from deita.data.readers import DATA_SUFFIXES


def source_stem(source: str) -> str:
    """The name output files are named after: the file name without its data suffix, a folder's or hub
    dataset's last path component (``.../fastchat_mt_bench_question.jsonl`` → ``fastchat_mt_bench_question``)."""
    name = str(source).rstrip("/").split("/")[-1]
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_model_id(model_id: str) -> str:
    """``model_id`` names a file, so it must be non-empty and free of path separators."""
    if not model_id or "/" in model_id or "\\" in model_id or model_id in (".", ".."):
        raise ValueError(
            f"eval.model_id names the answer file model_answer/<model_id>.jsonl; expected a non-empty name "
            f"without '/' or '\\', found {model_id!r}"
        )
    return model_id


def question_id(row_id: str) -> int | str:
    """FastChat's ``question_id``: the integer when the canonical id is one (MT-Bench ids are), else the id."""
    try:
        value = int(row_id)
    except ValueError:
        return row_id
    return value if str(value) == row_id else row_id


def answer_id(model_id: str, row_id: str, turns: list[str]) -> str:
    """A deterministic answer id (FastChat draws a random shortuuid; ours is a content hash, 22 hex chars)."""
    payload = json.dumps([model_id, row_id, turns], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:22]


def fastchat_answers(rows: list[dict], answers: list[list[str]], model_id: str,
                     tstamp: float | None = None) -> list[dict]:
    """FastChat ``model_answer`` records, one per prompt row, in row order.

    Each is ``{"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [...]}], "tstamp"}``
    with one answer per question turn.
    """
    if len(rows) != len(answers):
        raise ValueError(f"expected one answer list per prompt row, found {len(answers)} for {len(rows)} rows")
    stamp = time.time() if tstamp is None else tstamp
    out = []
    for row, turns in zip(rows, answers):
        if len(turns) != len(row["turns"]):
            raise ValueError(f"prompt {row['id']!r}: {len(row['turns'])} turns but {len(turns)} answers")
        out.append({
            "question_id": question_id(row["id"]),
            "answer_id": answer_id(model_id, row["id"], turns),
            "model_id": model_id,
            "choices": [{"index": 0, "turns": list(turns)}],
            "tstamp": stamp,
        })
    return out


def alpaca_eval_outputs(rows: list[dict], answers: list[list[str]], model_id: str, dataset: str) -> list[dict]:
    """AlpacaEval model outputs: the first turn of each prompt and its answer.

    ``dataset`` is the row's ``category`` (AlpacaEval's own subset name, or MT-Bench's category) and
    ``dataset`` (the source stem) when the row has none.
    """
    if len(rows) != len(answers):
        raise ValueError(f"expected one answer list per prompt row, found {len(answers)} for {len(rows)} rows")
    return [
        {"instruction": row["turns"][0], "output": turns[0], "generator": model_id,
         "dataset": row.get("category") or dataset}
        for row, turns in zip(rows, answers)
    ]
