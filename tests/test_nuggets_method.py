"""The nuggets method end to end on the tiny model: anchors from a file, then the diversity filter."""

from __future__ import annotations

import json

import numpy as np


def _rows(n=10):
    words = ["data", "code", "story", "poem", "email", "sort", "number", "text", "answer", "list"]
    return [{"id": str(i), "messages": [{"role": "user", "content": f"Write a {w} for case {i}"},
                                        {"role": "assistant", "content": f"Here is the {w}: one two {i * 3}"}]}
            for i, w in enumerate(words[:n])]


def test_file_anchors_and_diversity_filter(tmp_path, tiny_llama):
    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext
    from deita.selection.embedders import EMBEDDERS
    from deita.selection.embedders.render import render_rows
    from deita.selection.filters import greedy_diverse_naive
    from deita.selection.stage import rank_and_cut

    anchors = tmp_path / "anchors.json"
    anchors.write_text(json.dumps([{"instruction": f"Say {w}", "output": f"{w} {w}"} for w in ("yes", "no", "maybe")]))
    rows = _rows()
    ctx = SelectionContext(cache=ContentCache(tmp_path / "cache"), dist=DistInfo(), data_fingerprint="fp",
                           model_resolver=lambda ref: str(tiny_llama))
    nuggets = SELECTORS.get("nuggets")
    cfg = nuggets.config_class(model="tiny", mode="clean", anchor_max_length=48, threshold=None, top_k=6, exact_scores=True,
                               diversity=True, tau=0.995, diversity_embedder="clm_mean")
    cfg.anchors.method, cfg.anchors.path = "file", str(anchors)
    result, order = rank_and_cut(nuggets(cfg), rows, ctx)

    assert result.report["anchors"] == 3 and not any(result.table["is_anchor"])  # file anchors are not pool rows
    gs = np.asarray(result.table["golden_score"])
    assert set(np.round(gs * 3, 6)) <= {0.0, 1.0, 2.0, 3.0}  # fractions of 3 anchors
    accepted = sorted(range(len(rows)), key=lambda i: (-gs[i], i))[:6]  # top_k by GS, ties by index
    emb = EMBEDDERS.get("clm_mean")(str(tiny_llama)).embed_texts(render_rows([rows[i] for i in accepted], "vicuna_v1.1"))
    expected = [accepted[j] for j in greedy_diverse_naive(emb, np.arange(6), tau=0.995, budget=-1)]
    assert result.ranking == order == expected  # budget -1: the stage keeps the whole ranking
    assert result.report["accepted_by_rule"] == 6
    assert result.report["rejected_by_tau"] == 6 - len(expected)
    assert 0 < len(expected) < 6  # the filter really rejected some rows at this tau


def test_scoring_leaves_gradients_on_for_the_process(tmp_path, tiny_llama):
    """Selection runs in the same process as training: it must not switch autograd off globally."""
    import torch

    from deita.selection.nuggets.run import load_scoring_model
    from deita.selection.methods.nuggets import NuggetsSelectionConfig

    _, model = load_scoring_model(str(tiny_llama), NuggetsSelectionConfig(model="tiny", mode="clean"))
    assert torch.is_grad_enabled()
    assert not any(p.requires_grad for p in model.parameters())


def _alpaca_pool(shared_data, with_input: int, without_input: int) -> list[dict]:
    """Short records of the shared Alpaca demo file: ``with_input`` that have an input, then ``without_input``
    that have none, interleaved so anchors drawn at random get both kinds."""
    raw = json.loads((shared_data / "instruct" / "llamafactory_alpaca_en_demo.json").read_text())
    short = [r for r in raw if len(r["output"]) < 300 and len(r["instruction"]) < 120 and len(r["input"]) < 120]
    a = [r for r in short if r["input"]][:with_input]
    b = [r for r in short if not r["input"]][:without_input]
    mixed = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
    return [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]} for r in mixed]


def test_pipeline_golden_scores_equal_the_python_api_faithful_path_on_alpaca_rows_with_inputs(
        tmp_path, shared_data, tiny_llama):
    """train.py (data layer → canonical rows → select stage) and the Python API on the raw Alpaca records
    (the reference's view: instruction, input, output) score every row alike, the rows with an input
    included: the data layer keeps the split, so the ``Input:`` block of the reference prompt survives."""
    import pandas as pd

    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext
    from tests.helpers import run_train, shared_paths

    records = _alpaca_pool(shared_data, 7, 5)
    pool = tmp_path / "alpaca.json"
    pool.write_text(json.dumps(records))
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection=nuggets", f"selection.model={tiny_llama}",
            "selection.mode=faithful", "selection.anchors.method=random", "selection.anchors.k=5",
            "selection.threshold=null", "selection.top_k=4", "selection.budget=-1", "selection.exact_scores=true",
            f"data.pool=[{{path: {pool}}}]", *shared_paths(tmp_path, shared_data)]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    select = next((tmp_path / "runs" / "tiny").iterdir()) / "select"
    table = pd.read_parquet(select / "scores.parquet")
    assert list(table["id"]) == [f"alpaca:{i}" for i in range(len(records))]

    nuggets = SELECTORS.get("nuggets")
    cfg = nuggets.config_class(model="tiny", mode="faithful", threshold=None, top_k=4, exact_scores=True)
    cfg.anchors.method, cfg.anchors.k = "random", 5
    ctx = SelectionContext(cache=ContentCache(tmp_path / "api-cache"), dist=DistInfo(), data_fingerprint="raw",
                           model_resolver=lambda ref: str(tiny_llama))
    api = nuggets(cfg).rank(records, ctx, None).table

    has_input = np.array([r["input"] != "" for r in records])
    assert has_input.sum() == 7 and has_input[np.asarray(api["is_anchor"])].any()  # inputs in candidates and anchors
    assert list(table["is_anchor"]) == api["is_anchor"]
    assert list(table["golden_score"]) == api["golden_score"]
    assert list(table["anchor_wins"]) == api["anchor_wins"]
