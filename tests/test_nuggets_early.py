"""Nuggets early decision: the selected rows and their order equal the full computation's, the pairs that
run equal the full pass's bit for bit, and the store keeps early and exact entries apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deita.selection.nuggets.early import (ThresholdRule, TopKRule, batch_order, bounds, make_rule, wins_losses,
                                           wins_needed)
from deita.selection.nuggets.golden import golden_scores, select_candidates


def test_wins_needed_matches_the_full_paths_division():
    for m in range(1, 40):
        for t in [-0.5, 0.0, 1.0, 1.5] + [w / m for w in range(m + 1)] + [w / m + 1e-12 for w in range(m)]:
            need = wins_needed(t, m)
            passing = [w for w in range(m + 1) if w / m > t]
            assert need == (passing[0] if passing else m + 1), (m, t)


def _early_sums(zero, one, batches, rule_of, chunks):
    """Drive a rule over ``one`` as the scoring loop does, chunk by chunk: per candidate, anchor batches in
    order until rejected; NaN where a pair never ran. A harness standing in for the model."""
    out = np.full_like(one, np.nan)
    for start, end in chunks:
        rule = rule_of()
        for c in range(start, end):
            if rule.rejected(c, out[c]):
                continue
            for b in batches:
                out[c, b] = one[c, b]
                if rule.rejected(c, out[c]):
                    break
            if not np.isnan(out[c]).any():
                rule.finished(c, out[c])
    return out


@pytest.mark.parametrize("seed", range(60))
def test_selection_equals_the_full_computation_with_ties(seed):
    """Many seeds, sums from a few values (pair ties with the zero-shot sum, hence losses; many equal
    golden scores), thresholds at exact fractions, top_k and top_fraction across random chunkings."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(1, 13))
    zero = rng.integers(-3, 3, m).astype(float)
    one = rng.integers(-3, 3, (n, m)).astype(float)
    one[:, rng.random(m) < 0.1] = 0.0  # an anchor that is never scored: 0 in both passes
    zero[np.all(one == 0.0, axis=0)] = 0.0
    full = golden_scores(zero, one)
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(0, 4))), replace=False)) if n > 1 else []
    chunks = list(zip([0, *cuts], [*cuts, n]))
    batches = np.array_split(rng.permutation(m), int(rng.integers(1, m + 1)))
    rules = [("threshold", float(rng.integers(-1, m + 1)) / m), ("threshold", float(rng.random())),
             ("top_k", int(rng.integers(0, n + 2))), ("top_fraction", float(rng.random()))]
    for name, value in rules:
        k = value if name == "top_k" else int(n * value) if name == "top_fraction" else None
        t = value if name == "threshold" else None
        early = _early_sums(zero, one, batches, lambda: make_rule(zero, threshold=t, k=k), chunks)
        b = bounds(zero, early)
        ran = ~np.isnan(early)
        assert np.array_equal(early[ran], one[ran])
        assert np.all(b["low"] <= full) and np.all(full <= b["high"])
        assert np.array_equal(b["golden_score"][b["exact"]], full[b["exact"]])
        got = select_candidates(b["golden_score"], **{name: value})
        assert got == select_candidates(full, **{name: value}), (name, value)


def test_rules_reject_only_for_certain():
    zero = np.zeros(10)
    row = np.full(10, np.nan)
    rule = ThresholdRule(zero, 0.85)  # needs 9 wins of 10: one loss allowed
    row[:1] = -1.0
    assert wins_losses(zero, row) == (0, 1) and not rule.rejected(0, row)
    row[1] = 0.0  # a tie is a loss
    assert rule.rejected(0, row)
    top = TopKRule(zero, 1)
    full = np.ones(10)
    full[5:] = -1.0  # exact GS 0.5
    top.finished(3, full)
    row = np.full(10, np.nan)
    row[:5] = -1.0  # at most 0.5: equal score, ranks above candidate 3 only with a lower index
    assert top.rejected(4, row) and not top.rejected(2, row)
    assert ThresholdRule(zero, 1.0).rejected(0, np.full(10, np.nan))  # nothing can pass: no anchor runs
    assert batch_order(5, 0) == batch_order(5, 0) and sorted(batch_order(5, 1)) == list(range(5))


@pytest.fixture(scope="module")
def scored(tiny_llama, shared_data):
    """Tiny llama (faithful [PAD] resize), 12 Alpaca anchors, 30 candidates and their full sums."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.selection.nuggets import scoring
    from deita.selection.nuggets.prompts import nuggets_texts
    from deita.selection.nuggets.tokens import add_reference_pad, encode_anchor, encode_demo, zero_shot_prefix

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    add_reference_pad(model, tok)
    data = json.loads((shared_data / "instruct" / "llamafactory_alpaca_en_demo.json").read_text())
    # short texts: the properties below hold at any length (bit-identity fails at once if batches differ)
    texts = [nuggets_texts(d["instruction"], d["input"], d["output"][:150]) for d in data[:42]]
    anchors = [encode_anchor(tok, q, f, 100) for q, f in texts[30:]]
    demos = [encode_demo(tok, f, "faithful") for _, f in texts[:30]]
    zero = scoring.zero_shot_sums(model, anchors, zero_shot_prefix(tok, "faithful"), accumulate="float32")
    return model, demos, anchors, zero


@pytest.mark.parametrize("accumulate,cb", [("float32", 1), ("float32", 3), ("float64", 2)])
def test_computed_pairs_are_bit_identical_and_selection_equal(scored, accumulate, cb):
    from deita.selection.nuggets import scoring

    model, demos, anchors, zero = scored
    kw = dict(anchor_batch_size=3, candidate_batch_size=cb, accumulate=accumulate)
    one = scoring.one_shot_sums(model, demos, anchors, **kw)
    zero = zero if accumulate == "float32" else scoring.zero_shot_sums(model, anchors, [], accumulate=accumulate)
    full = golden_scores(zero, one)
    assert len(set(full.tolist())) < len(full)  # golden scores tie
    for seed in (0, 1):
        for t in sorted(set(full.tolist()))[-3:-1]:  # thresholds a few rows pass
            early = scoring.one_shot_sums(model, demos, anchors, rule=ThresholdRule(zero, t), seed=seed, **kw)
            ran = ~np.isnan(early)
            assert np.array_equal(early[ran], one[ran])  # bit for bit
            assert cb > 1 or (~ran).sum() > 0  # shared forwards run on until every member is rejected
            b = bounds(zero, early)
            assert select_candidates(b["golden_score"], threshold=t) == select_candidates(full, threshold=t)
        early = scoring.one_shot_sums(model, demos, anchors, rule=TopKRule(zero, 4), seed=seed, first_index=7, **kw)
        ran = ~np.isnan(early)
        assert np.array_equal(early[ran], one[ran])
        got = select_candidates(bounds(zero, early)["golden_score"], top_k=4)
        assert got == select_candidates(full, top_k=4)


def test_batch_composition_is_the_full_passes(scored):
    """The early pass runs the full pass's anchor batches, only their order changes: each pair's sum is the
    same whatever order the batches run in (and a candidate's row never depends on which batches ran)."""
    from deita.selection.nuggets import scoring

    model, demos, anchors, zero = scored
    one = scoring.one_shot_sums(model, demos[:4], anchors, anchor_batch_size=3, accumulate="float32")
    never = ThresholdRule(zero, -1.0)  # rejects nobody: every batch runs, in the seeded order
    for seed in range(3):
        again = scoring.one_shot_sums(model, demos[:4], anchors, anchor_batch_size=3, accumulate="float32",
                                      rule=never, seed=seed)
        assert np.array_equal(again, one)


def _rows(n=24):
    words = ["data", "code", "story", "poem", "email", "sort", "number", "text", "answer", "list", "plan", "song"]
    return [{"id": str(i), "messages": [
        {"role": "user", "content": f"Write a {words[i % 12]} for case {i}"},
        {"role": "assistant", "content": f"Here is the {words[(i * 5) % 12]}: " + "one two " * (i % 4) + str(i * 3)}]}
        for i in range(n)]


def test_method_early_equals_exact_scores_and_reports_skips(tmp_path, tiny_llama):
    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext
    from deita.selection.stage import rank_and_cut

    rows = _rows()
    nuggets = SELECTORS.get("nuggets")
    cache = ContentCache(tmp_path / "cache", chunk_rows=12)
    ctx = SelectionContext(cache=cache, dist=DistInfo(), data_fingerprint="fp",
                           model_resolver=lambda ref: str(tiny_llama))
    results = {}
    for exact in (True, False):
        for rule in ({"threshold": 0.5}, {"threshold": None, "top_k": 2}):
            cfg = nuggets.config_class(model="tiny", mode="faithful", exact_scores=exact, anchor_batch_size=2, **rule)
            cfg.anchors.method, cfg.anchors.k = "random", 9
            results[exact, str(rule)] = rank_and_cut(nuggets(cfg), rows, ctx)
    for rule in ({"threshold": 0.5}, {"threshold": None, "top_k": 2}):
        (full, order_f), (early, order_e) = results[True, str(rule)], results[False, str(rule)]
        assert order_e == order_f and early.ranking == full.ranking and len(order_f) > 0
        gs_f, gs_e = np.asarray(full.table["golden_score"]), np.asarray(early.table["golden_score"])
        exact = np.asarray(early.table["golden_exact"])
        assert all(full.table["golden_exact"]) and not exact.all()
        assert np.array_equal(gs_e[exact], gs_f[exact]) and np.isnan(gs_e[~exact]).all()
        low, high = np.asarray(early.table["golden_score_low"]), np.asarray(early.table["golden_score_high"])
        assert np.all(low <= gs_f) and np.all(gs_f <= high)
        r = early.report
        assert r["exact_scores"] is False and r["exact_golden_scores"] == int(exact.sum())
        assert r["anchor_passes_skipped"] > 0 and 0 < r["anchor_passes_skipped_fraction"] < 1
        assert full.report["anchor_passes_skipped"] == 0 and full.report["exact_scores"] is True
    misses = [name for name in cache.stats["misses"] if name.startswith("nuggets_one_shot/")]
    hits = [name for name in cache.stats["hits"] if name.startswith("nuggets_one_shot/")]
    assert len(set(misses)) == 3 and hits == misses[:1]  # one exact entry for both rules; each early rule its own


def test_early_entry_resumes_from_its_chunks(tmp_path, tiny_llama):
    """A killed early run (index and one chunk gone) resumes: the chunk is recomputed from its rows alone,
    with the same NaN pattern and sums, so the result equals the uninterrupted run's."""
    import shutil

    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext

    rows = _rows()
    nuggets = SELECTORS.get("nuggets")
    cfg = nuggets.config_class(model="tiny", mode="faithful", anchor_batch_size=2, threshold=None, top_k=2)
    cfg.anchors.method, cfg.anchors.k = "random", 9

    def run(root):
        cache = ContentCache(root, chunk_rows=10)
        ctx = SelectionContext(cache=cache, dist=DistInfo(), data_fingerprint="fp",
                               model_resolver=lambda ref: str(tiny_llama))
        return nuggets(cfg).rank(rows, ctx, None), cache

    first, cache = run(tmp_path / "a")
    folder = tmp_path / "a" / cache.stats["misses"][-1]
    assert folder.parent.name == "nuggets_one_shot"
    (folder / "index.json").unlink()
    (folder / "rows-000000000010-000000000020.npy").unlink()
    again, cache = run(tmp_path / "a")
    assert list(cache.stats["chunks"].values())[-1] == {"chunks": 3, "resumed": 2, "computed": 1}
    assert again.ranking == first.ranking and again.table["golden_exact"] == first.table["golden_exact"]
    np.testing.assert_array_equal(again.table["golden_score_high"], first.table["golden_score_high"])
    shutil.rmtree(tmp_path / "a")
