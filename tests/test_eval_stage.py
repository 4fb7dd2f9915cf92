"""The eval stage: answer files in the judges' formats, multi-turn semantics, determinism, world-size
invariance, and the held-out loss against a hand computation."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from deita.distributed import DistInfo

MT_BENCH = "multiturn/fastchat_mt_bench_question.jsonl"
POOL = "instruct/llamafactory_alpaca_en_demo.json"
FASTCHAT_KEYS = {"question_id", "answer_id", "model_id", "choices", "tstamp"}
ALPACA_KEYS = {"instruction", "output", "generator", "dataset"}


def make_cfg(shared_data: Path, **eval_overrides):
    """A config holding only the keys the eval stage reads."""
    from omegaconf import OmegaConf

    ev = {"max_new_tokens": 6, "temperature": 0.0, "limit": 3, "model_id": "tiny-test", **eval_overrides}
    return OmegaConf.create({
        "eval": ev,
        "data": {"eval_prompts": [{"path": str(shared_data / MT_BENCH)}],
                 "pool": [{"path": str(shared_data / POOL), "limit": 6}]},
        "sft": {"max_length": 512},
        "model": {"dtype": "float32", "trust_remote_code": False, "attn_implementation": None},
    })


def make_ctx(tmp_path: Path, model_dir: Path, name: str = "eval", with_dpo: Path | None = None):
    """A stand-in for pipeline.StageContext: run dir with an SFT stage whose model is ``model_dir``."""
    run_dir = tmp_path / "run"
    sft = run_dir / "sft"
    sft.mkdir(parents=True, exist_ok=True)
    if not (sft / "model").exists():
        (sft / "model").symlink_to(model_dir)
    upstream = {"sft": sft}
    if with_dpo is not None:
        upstream["dpo"] = with_dpo
    work = run_dir / f".{name}.partial"
    work.mkdir(parents=True)
    if (run_dir / "select").is_dir():
        upstream = {"select": run_dir / "select", **upstream}
    return SimpleNamespace(name="eval", work_dir=work, run_dir=run_dir, upstream=upstream, dist=DistInfo())


def write_select_table(run_dir: Path, ids: list[str], heldout: set[str]) -> None:
    import pandas as pd

    (run_dir / "select").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "score": [0.5] * len(ids), "selected": [i not in heldout for i in ids]}).to_parquet(
        run_dir / "select" / "scores.parquet", index=False)


def read_questions(shared_data: Path, n: int) -> list[dict]:
    lines = (shared_data / MT_BENCH).read_text().splitlines()
    return [json.loads(x) for x in lines[:n]]


# ----------------------------------------------------------------------------- stage output formats


def test_answer_files_have_the_judges_formats(tiny_llama, shared_data, tmp_path):
    from deita.evaluation.stage import run_eval_stage

    ctx = make_ctx(tmp_path, tiny_llama)
    counts = run_eval_stage(make_cfg(shared_data), ctx)

    questions = read_questions(shared_data, 3)
    stem = "fastchat_mt_bench_question"
    lines = (ctx.work_dir / stem / "model_answer" / "tiny-test.jsonl").read_text().splitlines()
    answers = [json.loads(x) for x in lines]
    assert len(answers) == 3
    for q, a in zip(questions, answers):
        assert set(a) == FASTCHAT_KEYS
        assert a["question_id"] == q["question_id"] and isinstance(a["question_id"], int)
        assert a["model_id"] == "tiny-test"
        assert isinstance(a["answer_id"], str) and a["answer_id"]
        assert isinstance(a["tstamp"], float)
        assert len(a["choices"]) == 1 and set(a["choices"][0]) == {"index", "turns"}
        assert a["choices"][0]["index"] == 0
        turns = a["choices"][0]["turns"]
        assert len(turns) == 2 and all(isinstance(t, str) for t in turns)

    alpaca = json.loads((ctx.work_dir / stem / "alpaca_eval.json").read_text())
    assert isinstance(alpaca, list) and len(alpaca) == 3
    for q, a, rec in zip(questions, answers, alpaca):
        assert set(rec) == ALPACA_KEYS
        assert rec["instruction"] == q["turns"][0]
        assert rec["output"] == a["choices"][0]["turns"][0]
        assert rec["generator"] == "tiny-test"
        assert rec["dataset"] == q["category"]

    info = counts["prompt_sets"][stem]
    assert info["prompts"] == 3 and info["turns"] == 6 and info["format"] == "mt_bench"
    assert sorted(info["files"]) == [f"{stem}/alpaca_eval.json", f"{stem}/model_answer/tiny-test.jsonl"]
    assert counts["model_stage"] == "sft"
    # no select artifact in this run: held-out loss is skipped with a note, not invented
    assert counts["heldout_loss"] is None and counts["heldout_rows"] == 0
    assert "no select artifact" in counts["heldout_note"]
    assert not list(ctx.work_dir.rglob(".*.tmp*")), "temp files left behind"


def test_alpaca_eval_prompt_set_gets_only_alpaca_eval_output(tiny_llama, tmp_path):
    from omegaconf import OmegaConf

    from deita.evaluation.stage import run_eval_stage

    src = tmp_path / "my_alpaca_eval.json"
    recs = [{"instruction": "Write a poem about data.", "output": "x", "generator": "gpt4", "dataset": "koala"},
            {"instruction": "Explain sorting.", "output": "y", "generator": "gpt4", "dataset": "vicuna"}]
    src.write_text(json.dumps(recs))
    cfg = OmegaConf.create({"eval": {"max_new_tokens": 4, "temperature": 0.0, "limit": None, "model_id": "m1"},
                            "data": {"eval_prompts": [{"path": str(src)}], "pool": []}})
    ctx = make_ctx(tmp_path, tiny_llama)
    counts = run_eval_stage(cfg, ctx)
    assert counts["prompt_sets"]["my_alpaca_eval"]["files"] == ["my_alpaca_eval/alpaca_eval.json"]
    out = json.loads((ctx.work_dir / "my_alpaca_eval" / "alpaca_eval.json").read_text())
    assert [r["instruction"] for r in out] == [r["instruction"] for r in recs]
    assert [r["dataset"] for r in out] == ["koala", "vicuna"]
    assert all(set(r) == ALPACA_KEYS and r["generator"] == "m1" for r in out)
    assert not (ctx.work_dir / "my_alpaca_eval" / "model_answer").exists()


def test_greedy_generation_is_deterministic(tiny_llama, shared_data, tmp_path):
    from deita.evaluation.stage import run_eval_stage

    runs = []
    for name in ("a", "b"):
        ctx = make_ctx(tmp_path / name, tiny_llama)
        run_eval_stage(make_cfg(shared_data, limit=2), ctx)
        lines = (ctx.work_dir / "fastchat_mt_bench_question" / "model_answer" / "tiny-test.jsonl").read_text()
        runs.append([(a["question_id"], a["answer_id"], a["choices"]) for a in map(json.loads, lines.splitlines())])
    assert runs[0] == runs[1]


def test_dpo_model_is_preferred_when_present(tmp_path):
    from deita.evaluation.stage import final_model_dir

    for name in ("sft", "dpo"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
    assert final_model_dir({"sft": tmp_path / "sft"}) == ("sft", tmp_path / "sft" / "model")
    assert final_model_dir({"sft": tmp_path / "sft", "dpo": tmp_path / "dpo"}) == ("dpo", tmp_path / "dpo" / "model")
    # eval.model_stage picks another one that is there
    assert final_model_dir({"sft": tmp_path / "sft", "dpo": tmp_path / "dpo"}, "sft") == ("sft", tmp_path / "sft" / "model")
    with pytest.raises(RuntimeError, match="eval.model_stage='dpo' is neither in stages nor finished"):
        final_model_dir({"sft": tmp_path / "sft"}, "dpo")
    with pytest.raises(RuntimeError, match="needs a finished model stage"):
        final_model_dir({"select": tmp_path / "select"})
    with pytest.raises(FileNotFoundError, match="no config.json"):
        final_model_dir({"sft": tmp_path / "nothing"})


# ----------------------------------------------------------------------------- generation semantics


def test_turn_two_is_asked_with_the_models_own_turn_one_answer(tiny_llama, monkeypatch):
    from deita.evaluation import generate

    _, tok = generate.load_policy(tiny_llama)
    seen: list[list[str]] = []

    def fake_generate(model, tok_, texts, **kw):
        seen.append(list(texts))
        return [f"answer {len(seen)}.{i}" for i in range(len(texts))]

    monkeypatch.setattr(generate, "generate_batch", fake_generate)
    rows = [{"id": "1", "turns": ["q1a", "q1b"]}, {"id": "2", "turns": ["q2a"]}]
    answers = generate.answer_group(None, tok, rows, max_new_tokens=4, temperature=0.0)
    assert answers == [["answer 1.0", "answer 2.0"], ["answer 1.1"]]
    user = lambda c: {"role": "user", "content": c}  # noqa: E731
    assert seen[0] == [generate.render_prompt(tok, [user("q1a")]), generate.render_prompt(tok, [user("q2a")])]
    conv = [user("q1a"), {"role": "assistant", "content": "answer 1.0"}, user("q1b")]
    assert seen[1] == [generate.render_prompt(tok, conv)]
    assert seen[1][0].endswith("<|assistant|>\n") and "answer 1.0</s>" in seen[1][0]


def test_answers_do_not_depend_on_batching_or_world_size(tiny_llama, shared_data, monkeypatch):
    from deita.data.loading import load_rows
    from deita.evaluation.generate import answer_prompts, load_policy

    model, tok = load_policy(tiny_llama)
    rows = load_rows(str(shared_data / MT_BENCH), kind="prompts", limit=3).rows
    kw = dict(max_new_tokens=4, temperature=0.0)
    one_by_one = answer_prompts(model, tok, rows, batch_size=1, **kw)
    batched = answer_prompts(model, tok, rows, batch_size=3, **kw)  # one left-padded batch per turn
    assert batched == one_by_one
    # simulated 2-process run over fixed groups [[longest two], [shortest]]: rank 1 answers its shard
    # first (its gather is intercepted), then rank 0's gather returns its own part + rank 1's, as
    # all_gather_object would; the result must equal the 1-process answers
    import deita.distributed as dd

    class Gathered(Exception):
        pass

    def rank1_gather(part):
        rank1_part.extend(part)
        raise Gathered

    rank1_part: list = []
    monkeypatch.setattr(dd, "gather_concat", rank1_gather)
    with pytest.raises(Gathered):
        answer_prompts(model, tok, rows, batch_size=2, dist=DistInfo(1, 2), **kw)
    assert len(rank1_part) == 1 and len(rank1_part[0]) == 1  # one group of one prompt
    monkeypatch.setattr(dd, "gather_concat", lambda part: list(part) + rank1_part)
    assert answer_prompts(model, tok, rows, batch_size=2, dist=DistInfo(0, 2), **kw) == one_by_one


def test_fixed_groups_sort_longest_first_and_keep_ties_in_order():
    from deita.models.batching import fixed_groups

    assert fixed_groups([3, 7, 3, 9, 1], 2) == [[3, 1], [0, 2], [4]]
    assert fixed_groups([], 4) == []
    with pytest.raises(ValueError):
        fixed_groups([1], 0)


def test_fastchat_question_id_and_model_id_rules():
    from deita.evaluation.formats import check_model_id, question_id, source_stem

    assert question_id("81") == 81 and question_id("007") == "007" and question_id("a:1") == "a:1"
    assert source_stem("/x/y/question.jsonl") == "question" and source_stem("/d/set.json.gz") == "set"
    with pytest.raises(ValueError, match="model_id"):
        check_model_id("org/model")


# ----------------------------------------------------------------------------- held-out loss


def hand_loss(model, tok, messages: list[dict]) -> float:
    """Unbatched forward and cross-entropy over the assistant tokens, found by tokenizing text prefixes
    (independent of the template's generation markers)."""
    import torch
    import torch.nn.functional as F

    prefix = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    answer = messages[-1]["content"] + tok.eos_token
    assert full.startswith(prefix + answer)
    n_prefix = len(tok(prefix, add_special_tokens=False)["input_ids"])
    n_answer = len(tok(prefix + answer, add_special_tokens=False)["input_ids"]) - n_prefix
    ids = tok(full, add_special_tokens=False)["input_ids"]
    mask = torch.zeros(len(ids), dtype=torch.bool)
    mask[n_prefix:n_prefix + n_answer] = True
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    targets = torch.tensor(ids[1:])
    ce = F.cross_entropy(logits[:-1].double(), targets, reduction="none")
    return float(ce[mask[1:]].mean())


def test_heldout_loss_matches_hand_computation(tiny_llama, shared_data, tmp_path):
    from deita.data.loading import load_rows
    from deita.evaluation.generate import load_policy
    from deita.evaluation.stage import run_eval_stage

    pool = load_rows(str(shared_data / POOL), kind="sft", limit=6).rows
    held_id = pool[4]["id"]
    write_select_table(tmp_path / "run", [r["id"] for r in pool], {held_id})
    ctx = make_ctx(tmp_path, tiny_llama)  # select is upstream: its scores.parquet says what was held out
    counts = run_eval_stage(make_cfg(shared_data, limit=2), ctx)

    model, tok = load_policy(tiny_llama)
    expected = hand_loss(model, tok, pool[4]["messages"])
    assert counts["heldout_rows"] == 1 and "heldout_note" not in counts
    assert counts["heldout_loss"] == pytest.approx(expected, abs=1e-5)
    per_row = [json.loads(x) for x in (ctx.work_dir / "heldout_loss.jsonl").read_text().splitlines()]
    assert [r["id"] for r in per_row] == [held_id]
    assert per_row[0]["loss"] == pytest.approx(expected, abs=1e-5)


def test_heldout_loss_is_token_weighted_and_batch_invariant(tiny_llama, shared_data):
    from deita.data.loading import load_rows
    from deita.evaluation.generate import load_policy
    from deita.evaluation.heldout import heldout_loss

    model, tok = load_policy(tiny_llama)
    rows = load_rows(str(shared_data / POOL), kind="sft", limit=3).rows
    batched = heldout_loss(model, tok, rows, max_length=None, batch_size=3)  # right-padded batch
    singles = heldout_loss(model, tok, rows, max_length=None, batch_size=1)
    for a, b, row in zip(batched["per_row"], singles["per_row"], rows):
        assert a["tokens"] == b["tokens"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["loss"] == pytest.approx(hand_loss(model, tok, row["messages"]), abs=1e-5)
    weighted = sum(r["loss"] * r["tokens"] for r in batched["per_row"]) / batched["tokens"]
    assert batched["loss"] == pytest.approx(weighted, rel=1e-12)
    assert batched["loss"] != pytest.approx(sum(r["loss"] for r in batched["per_row"]) / 3, rel=1e-6)
    truncated = heldout_loss(model, tok, rows, max_length=8, batch_size=3)
    assert truncated["tokens"] < batched["tokens"]


def test_pick_heldout_draws_unselected_rows_in_pool_order():
    from deita.evaluation.heldout import pick_heldout

    pool = [{"id": f"r{i}", "messages": []} for i in range(10)]
    selected = {f"r{i}": i % 3 == 0 for i in range(10)}  # r0, r3, r6, r9 selected
    assert [r["id"] for r in pick_heldout(pool, selected, cap=100)] == ["r1", "r2", "r4", "r5", "r7", "r8"]
    capped = [r["id"] for r in pick_heldout(pool, selected, cap=3)]
    assert len(capped) == 3 and capped == sorted(capped, key=lambda x: int(x[1:]))
    assert not {"r0", "r3", "r6", "r9"} & set(capped)
    assert capped == [r["id"] for r in pick_heldout(pool, selected, cap=3)]
    with pytest.raises(ValueError, match="not in select/scores.parquet"):
        pick_heldout(pool + [{"id": "new", "messages": []}], selected, cap=3)


# ----------------------------------------------------------------------------- composed config


def test_stage_runs_on_the_composed_hydra_config(tiny_llama, shared_data, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from deita.config import register_configs
    from deita.evaluation.stage import run_eval_stage
    from deita.hydra_resolvers import register_resolvers

    conf = Path(__file__).resolve().parents[1] / "conf"
    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose("config", overrides=["stages=[eval]", "eval.model_id=composed", "eval.limit=1",
                                           "eval.max_new_tokens=3", f"paths.shared_data={shared_data}"])
    ctx = make_ctx(tmp_path, tiny_llama)
    counts = run_eval_stage(cfg, ctx)
    assert (ctx.work_dir / "fastchat_mt_bench_question" / "model_answer" / "composed.jsonl").is_file()
    assert counts["prompt_sets"]["fastchat_mt_bench_question"]["prompts"] == 1
