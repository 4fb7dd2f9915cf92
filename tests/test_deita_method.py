"""The `deita` selection method end to end on shared data with tiny scorers/embedder; caching; top-k."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deita.selection.base import SELECTORS, SelectionContext
from deita.selection.stage import rank_and_cut


def _alpaca_rows(shared_data, n):
    raw = json.loads((shared_data / "instruct" / "llamafactory_alpaca_en_demo.json").read_text())[:n]
    rows = []
    for i, r in enumerate(raw):
        q = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        rows.append({"id": f"alpaca-{i}", "messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": r["output"]}]})
    return rows


def _ctx(tmp_path, models, **cache_options):
    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.fingerprint import hash_rows

    def resolver(ref):
        return str(models[ref])

    cache = ContentCache(tmp_path / "cache", **cache_options)
    return cache, lambda rows: SelectionContext(cache=cache, dist=DistInfo(), data_fingerprint=hash_rows(rows),
                                                model_resolver=resolver)


def _config(**kw):
    from deita.selection.methods.deita import DeitaEmbedderOptions, DeitaScorerOptions, DeitaSelectionConfig

    return DeitaSelectionConfig(
        scorer=DeitaScorerOptions(complexity_model="tiny:llama", quality_model="tiny:mistral", max_length=256),
        embedder=DeitaEmbedderOptions(model="tiny:llama", max_length=256, batch_size=8), **kw)


def test_deita_end_to_end_and_cache(shared_data, tmp_path, tiny_llama, tiny_mistral):
    rows = _alpaca_rows(shared_data, 40)
    rows.append({"id": "mt", "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                          {"role": "user", "content": "q2"}]})
    cache, make_ctx = _ctx(tmp_path, {"tiny:llama": tiny_llama, "tiny:mistral": tiny_mistral})
    cfg = _config(budget=10, tau=0.999)
    sel = SELECTORS.get("deita")(cfg)
    res, order = rank_and_cut(sel, rows, make_ctx(rows))
    t = res.table
    assert len(order) == 10 and len(set(order)) == 10 and res.ranking == order  # the filter stopped at the budget
    for col in ("complexity_turns", "quality_turns", "complexity", "quality", "evol_score", "n_turns", "nn_sim"):
        assert len(t[col]) == len(rows)
    assert t["n_turns"][-1] == 2 and len(t["quality_turns"][-1]) == 2
    for i in range(len(rows)):
        assert t["evol_score"][i] == pytest.approx(sum(c * q for c, q in zip(t["complexity_turns"][i], t["quality_turns"][i])))
        assert all(1.0 <= s <= 6.0 for s in t["complexity_turns"][i] + t["quality_turns"][i])
    # selection order follows the greedy walk over the stable score order: the first pick is the top score
    evol = np.asarray(t["evol_score"])
    assert order[0] == int(np.argmax(evol))
    assert res.report["rejected_by_tau"] + 10 == res.report["scanned"]
    assert math.isnan(t["nn_sim"][order[0]]) and all(t["nn_sim"][i] <= 0.999 + 1e-6 for i in order[1:])
    # the report's trace of the filter: kept rows in ranking order, their nearest-kept similarities, tau
    assert res.greedy.kept.size == 10 and res.greedy.tau == 0.999 and res.greedy.scanned == res.report["scanned"]
    assert np.allclose(res.greedy.nn_sim[1:], [t["nn_sim"][i] for i in order[1:]], equal_nan=True)
    assert res.score_column == "evol_score" and res.scatter == ("complexity", "quality")
    misses = len(cache.stats["misses"])
    assert misses == 3 and not cache.stats["hits"]
    again, again_order = rank_and_cut(SELECTORS.get("deita")(cfg), rows, make_ctx(rows))
    assert len(cache.stats["hits"]) == 3 and len(cache.stats["misses"]) == misses
    assert again_order == order and again.table["evol_score"] == pytest.approx(t["evol_score"])


def test_deita_top_k_without_diversity_and_nan_rows(shared_data, tmp_path, tiny_llama, tiny_mistral):
    rows = _alpaca_rows(shared_data, 12)
    rows.insert(3, {"id": "broken", "messages": [{"role": "assistant", "content": "x"}]})
    _, make_ctx = _ctx(tmp_path, {"tiny:llama": tiny_llama, "tiny:mistral": tiny_mistral})
    with pytest.raises(ValueError, match="'broken'"):
        rank_and_cut(SELECTORS.get("deita")(_config(budget=5, diversity=False)), rows, make_ctx(rows))
    res, order = rank_and_cut(SELECTORS.get("deita")(_config(budget=5, diversity=False, sort_key="complexity",
                                                             on_error="nan")), rows, make_ctx(rows))
    c = res.table["complexity"]
    assert "quality" not in res.table and math.isnan(c[3]) and "broken" in res.table["score_error"][3]
    expected = sorted((i for i in range(len(rows)) if i != 3), key=lambda i: (-c[i], i))[:5]
    assert order == expected and res.report["nan_rows"] == 1 and res.report["complexity_nan_turns"] == 1
    full, full_order = rank_and_cut(SELECTORS.get("deita")(_config(budget=-1, on_error="nan", tau=0.9999)), rows,
                                    make_ctx(rows))
    assert 3 not in full_order and len(full_order) + full.report["rejected_by_tau"] == len(rows) - 1


def _reference_greedy(evol, emb, tau: float, budget: int) -> list[int]:
    """The DEITA reference's Combined_Filter written out the slow way: pandas ``sort_values(ascending=False)``
    on the evol score, then keep a row iff its cosine similarity to every kept row is <= tau."""
    import pandas as pd

    df = pd.DataFrame({"final_score": evol})
    kept: list[int] = []
    for i in df.sort_values("final_score", ascending=False).index:
        if len(kept) >= budget:
            break
        if not kept or float(np.max(emb[kept] @ emb[i])) <= tau:
            kept.append(int(i))
    return kept


def test_tie_break_reference_selects_the_ids_the_original_selects_on_duplicate_rows(shared_data, tmp_path,
                                                                                      tiny_llama, tiny_mistral):
    """A pool where every row appears several times: duplicates tie on the evol score and are at
    similarity 1, so which copy the filter keeps is decided by the tie order alone. Chunks of 8 rows put
    the copies of a row in different chunks, scored apart."""
    pytest.importorskip("pandas")
    base = _alpaca_rows(shared_data, 6)
    rng = np.random.default_rng(0)
    copies = rng.permutation(np.repeat(np.arange(len(base)), 7))
    rows = [{"id": f"dup-{j}", "messages": base[k]["messages"]} for j, k in enumerate(copies)]
    _, make_ctx = _ctx(tmp_path, {"tiny:llama": tiny_llama, "tiny:mistral": tiny_mistral}, chunk_rows=8)
    ref_cfg = _config(budget=4, tau=0.999, tie_break="reference")
    res, order = rank_and_cut(SELECTORS.get("deita")(ref_cfg), rows, make_ctx(rows))
    evol = np.asarray(res.table["evol_score"])
    for k in range(len(base)):  # the premise: copies of a row tie exactly
        assert len(set(evol[copies == k].tolist())) == 1
    emb = SELECTORS.get("deita")(ref_cfg).embed(rows, make_ctx(rows))
    ids = [rows[i]["id"] for i in order]
    assert ids == [rows[i]["id"] for i in _reference_greedy(evol, emb, 0.999, 4)]
    assert res.report["tie_break"] == "reference"
    _, stable = rank_and_cut(SELECTORS.get("deita")(_config(budget=4, tau=0.999)), rows, make_ctx(rows))
    assert [rows[i]["id"] for i in stable] != ids  # the default keeps the first copy of each row instead
    assert all(i == min(np.flatnonzero(copies == copies[i])) for i in stable)


def test_unknown_tie_break_names_the_key_before_any_scoring(tmp_path):
    from deita.validate import ConfigError

    cfg = _config(tie_break="pandas")
    with pytest.raises(ConfigError, match="selection.tie_break.*'stable', 'reference'"):
        SELECTORS.get("deita")(cfg).rank([], None, None)
