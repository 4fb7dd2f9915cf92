"""Precomputed scores and embeddings (deita/selection/precomputed.py): DEITA's exact ordering and tau filter on
inputs made elsewhere, with no scorer or embedder loaded; ids matched to the pool, mismatches exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deita.selection.filters import greedy_diverse_naive
from deita.selection.precomputed import load_embeddings, load_scores, preflight
from deita.validate import ConfigError
from tests.helpers import compose_config, run_train

N, DIM, TAU, BUDGET = 40, 16, 0.8, 12
NO_MODEL = "/no/such/model/must/not/be/touched"


def _pool(tmp_path: Path) -> tuple[Path, list[str], list[int]]:
    """A jsonl pool of N rows, every third one with two turns; returns its path, ids and turn counts."""
    rows, turns = [], []
    for i in range(N):
        messages = [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
        if i % 3 == 0:
            messages += [{"role": "user", "content": f"follow-up {i}"}, {"role": "assistant", "content": f"more {i}"}]
        rows.append({"id": f"row-{i}", "messages": messages})
        turns.append(len(messages) // 2)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["id"] for r in rows], turns


def _inputs(tmp_path: Path, ids: list[str], turns: list[int], seed: int = 0):
    """Per-turn scores (with ties and a NaN) and clustered embeddings, in pool order."""
    rng = np.random.default_rng(seed)
    comp = [[float(rng.integers(1, 4)) for _ in range(t)] for t in turns]
    qual = [[float(rng.integers(1, 4)) for _ in range(t)] for t in turns]
    comp[5] = [float("nan")]
    centers = rng.normal(size=(15, DIM))
    emb = (centers[rng.integers(0, 15, N)] + 0.4 * rng.normal(size=(N, DIM))).astype(np.float32)
    return comp, qual, emb


def _oracle(comp, qual, emb) -> list[int]:
    """Naive DEITA: evol = Σ c·q, descending, ties by pool index, NaN out; the one-at-a-time greedy filter."""
    evol = np.array([sum(c * q for c, q in zip(cs, qs)) for cs, qs in zip(comp, qual)])
    order = [i for i in sorted(range(N), key=lambda i: (-evol[i], i)) if not np.isnan(evol[i])]
    return greedy_diverse_naive(emb, np.asarray(order), tau=TAU, budget=BUDGET).tolist()


def _write(tmp_path: Path, ids, comp, qual, emb, drop: str | None = None, extra: str | None = None):
    """Scores parquet and embeddings .npy + .ids.json, each in its own shuffled row order."""
    rng = np.random.default_rng(1)
    keep = [i for i in range(N) if ids[i] != drop]
    perm = [keep[j] for j in rng.permutation(len(keep))]
    frame = pd.DataFrame({"id": [ids[i] for i in perm], "complexity_turns": [comp[i] for i in perm],
                          "quality_turns": [qual[i] for i in perm]})
    if extra:
        frame = pd.concat([frame, pd.DataFrame({"id": [extra], "complexity_turns": [[1.0]], "quality_turns": [[1.0]]})])
    scores = tmp_path / "scores.parquet"
    frame.to_parquet(scores, index=False)
    perm2 = [keep[j] for j in rng.permutation(len(keep))]
    emb_path = tmp_path / "emb.npy"
    np.save(emb_path, emb[perm2])
    (tmp_path / "emb.ids.json").write_text(json.dumps([ids[i] for i in perm2]))
    return scores, emb_path


def _args(tmp_path, pool, scores, emb_path) -> list[str]:
    return ["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", f"data.pool=[{{path: {pool}}}]",
            f"selection.budget={BUDGET}", f"selection.tau={TAU}", f"selection.precomputed.scores={scores}",
            f"selection.precomputed.embeddings={emb_path}", f"selection.scorer.complexity_model={NO_MODEL}",
            f"selection.scorer.quality_model={NO_MODEL}", f"selection.embedder.model={NO_MODEL}",
            f"paths.runs_dir={tmp_path / 'runs'}", f"paths.cache_dir={tmp_path / 'cache'}"]


def test_train_py_selects_what_the_oracle_selects_on_precomputed_inputs_without_a_model(tmp_path):
    pool, ids, turns = _pool(tmp_path)
    comp, qual, emb = _inputs(tmp_path, ids, turns)
    scores, emb_path = _write(tmp_path, ids, comp, qual, emb)
    result = run_train(_args(tmp_path, pool, scores, emb_path))
    assert result.returncode == 0, result.stderr[-4000:]
    select = next((tmp_path / "runs" / "tiny").iterdir()) / "select"
    selected = [json.loads(line)["id"] for line in (select / "selected.jsonl").read_text().splitlines()]
    expected = [ids[i] for i in _oracle(comp, qual, emb)]
    assert selected == expected and len(expected) == BUDGET
    table = pd.read_parquet(select / "scores.parquet")
    assert table["complexity_turns"].map(list).tolist()[:4] == [comp[0], comp[1], comp[2], comp[3]]
    assert np.isnan(table["evol_score"][5])
    manifest = json.loads((select / "manifest.json").read_text())
    assert manifest["method_report"]["rejected_by_tau"] > 0  # the filter did work on these embeddings
    assert not (tmp_path / "cache" / "selection").exists() or not any((tmp_path / "cache" / "selection").rglob("*.npy"))


@pytest.mark.parametrize("case", ["missing", "extra"])
def test_an_id_mismatch_stops_train_py_before_any_model_naming_file_id_and_count(tmp_path, case):
    pool, ids, turns = _pool(tmp_path)
    comp, qual, emb = _inputs(tmp_path, ids, turns)
    scores, emb_path = _write(tmp_path, ids, comp, qual, emb, drop="row-7" if case == "missing" else None,
                              extra="stranger" if case == "extra" else None)
    result = run_train(_args(tmp_path, pool, scores, emb_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-4000:]
    # the embeddings are matched first (before the scores), so a row missing from both is named there
    message = (f"selection.precomputed.embeddings: {emb_path}: 1 of {N} pool ids are missing, e.g. 'row-7'"
               if case == "missing" else
               f"selection.precomputed.scores: {scores}: 1 ids are not in the pool, e.g. 'stranger'")
    assert message in result.stderr


def test_score_columns_scalars_final_scores_and_npz(tmp_path):
    ids = ["a", "b", "c"]
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "c", "complexity": 2.0, "quality": 3.0}, {"id": "a", "complexity": 1.0, "quality": 5.0, "evol_score": 9.5},
        {"id": "b", "complexity": 4.0, "quality": 1.0}]))
    table = load_scores(str(jsonl), ids, "evol")
    assert table["complexity"] == [1.0, 4.0, 2.0] and table["complexity_turns"] == [[1.0], [4.0], [2.0]]
    assert table["evol_score"] == [9.5, 4.0, 6.0]  # given for 'a', c·q (one turn) elsewhere
    final = tmp_path / "final.jsonl"
    final.write_text("".join(json.dumps({"id": i, "evol_score": v}) + "\n" for i, v in zip("bca", (1.0, 2.0, 3.0))))
    assert load_scores(str(final), ids, "evol")["evol_score"] == [3.0, 1.0, 2.0]
    with pytest.raises(ConfigError, match=r"selection.sort_key='complexity' needs a 'complexity' column"):
        load_scores(str(final), ids, "complexity")
    npz = tmp_path / "e.npz"
    np.savez(npz, embeddings=np.eye(3, dtype=np.float32), ids=np.array(["c", "a", "b"]))
    matrix, rows = load_embeddings(str(npz), ids)
    assert rows.tolist() == [1, 2, 0] and matrix.shape == (3, 3)
    twice = tmp_path / "twice.npz"
    np.savez(twice, embeddings=np.eye(3, dtype=np.float32), ids=np.array(["a", "a", "b"]))
    with pytest.raises(ConfigError, match=rf"{twice}: 1 ids appear more than once, e.g. 'a'"):
        load_embeddings(str(twice), ids)


def test_preflight_checks_the_files_and_skips_the_models_they_replace(tmp_path):
    from deita.preflight import preflight as run_preflight
    from deita.stages.select import selection_files, selection_model_refs

    pool, ids, turns = _pool(tmp_path)
    comp, qual, emb = _inputs(tmp_path, ids, turns)
    scores, emb_path = _write(tmp_path, ids, comp, qual, emb)
    overrides = [a for a in _args(tmp_path, pool, scores, emb_path) if not a.startswith("logger=")]
    cfg = compose_config(overrides)
    assert selection_model_refs(cfg) == {}
    assert set(selection_files(cfg)) == {"selection.precomputed.scores", "selection.precomputed.embeddings",
                                         "selection.precomputed.embeddings (ids)"}
    run_preflight(cfg)  # no model is resolved: the sentinel paths do not exist
    (tmp_path / "emb.ids.json").write_text(json.dumps(ids[:-1]))
    with pytest.raises(ConfigError, match=rf"selection.precomputed.embeddings: {emb_path}: {N} rows but {N - 1} ids"):
        run_preflight(cfg)
    pd.DataFrame({"id": ids, "quality": [1.0] * N}).to_parquet(scores, index=False)
    with pytest.raises(ConfigError, match=r"needs a 'evol_score' column or complexity and quality"):
        preflight(cfg.selection.precomputed, "evol")
    cfg2 = compose_config([*overrides[:-3], f"selection.precomputed.embeddings=null"])
    assert list(selection_model_refs(cfg2)) == ["selection.embedder.model"]
    # no filter: the embeddings (their ids file still one short) are neither hashed nor opened
    cfg3 = compose_config([*overrides, "selection.diversity=false", "selection.sort_key=quality"])
    assert set(selection_files(cfg3)) == {"selection.precomputed.scores"}
    run_preflight(cfg3)


def test_distinct_conversations_equals_grouping_by_messages():
    """Digest-keyed grouping == grouping by the messages themselves (first copy wins, pool order)."""
    from deita.selection.methods.deita import distinct_conversations

    rng = np.random.default_rng(3)
    texts = ["a", "b", "ü", "a b", "{\"x\": 1}"]
    rows = [{"id": str(i), "messages": [{"role": "user", "content": texts[int(rng.integers(0, 5))]},
                                        {"role": "assistant", "content": texts[int(rng.integers(0, 2))]}]}
            for i in range(60)]
    unique, slot = distinct_conversations(rows)
    seen: list = []
    for row in rows:
        if row["messages"] not in seen:
            seen.append(row["messages"])
    assert [u["messages"] for u in unique] == seen
    assert [unique[j]["messages"] for j in slot] == [r["messages"] for r in rows]
    assert [u["id"] for u in unique] == [next(r["id"] for r in rows if r["messages"] == m) for m in seen]
