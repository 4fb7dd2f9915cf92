"""The selection report: report.html is self-contained, every figure appears once, uninformative columns
get no figure, and every method's result shape gives a report without crashing or empty plots."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from deita.selection.base import SelectionResult
from deita.selection.figures import histogram_columns, same_picture
from deita.selection.filters import greedy_diverse
from deita.selection.report import write_report
from deita.selection.stage import build_table
from tests.helpers import run_train, shared_paths

INSTRUCT = "instruct"


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"question {i} " + "word " * int(rng.integers(1, 30))},
                                         {"role": "assistant", "content": "answer " * int(rng.integers(1, 80))}]}
            for i in range(n)]


def embedded_images(html: str) -> list[tuple[str, bytes]]:
    """(alt text, PNG bytes) of every ``<img>`` in ``html``."""
    return [(alt, base64.b64decode(data)) for data, alt in
            re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)">', html)]


def assert_self_contained(html: str) -> None:
    """No reference leaves the file: every src is a data URI; no href, script, stylesheet link or url()."""
    assert html.count("<img") == len(embedded_images(html))
    for attr in re.findall(r'\b(?:src|href)\s*=\s*["\']?([^"\'\s>]*)', html):
        assert attr.startswith("data:"), attr
    assert "href=" not in html and "<script" not in html and "<link" not in html and "url(" not in html


def assert_drawn(png: bytes) -> None:
    """A real picture: a PNG of sensible size with more than a blank canvas in it."""
    import matplotlib.image

    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[0] >= 300 and img.shape[1] >= 600
    ink = (img[..., :3] < 0.9).any(axis=2).mean()  # share of pixels that are not (near) white
    assert ink > 0.02, ink


def check_report(select: Path) -> dict[str, bytes]:
    """Checks every report must pass; returns figure name → PNG bytes."""
    html = (select / "report.html").read_text()
    assert_self_contained(html)
    pngs = {p.stem: p.read_bytes() for p in sorted((select / "plots").glob("*.png"))}
    embedded = embedded_images(html)
    assert sorted(png for _, png in embedded) == sorted(pngs.values())  # each file embedded exactly once
    for png in pngs.values():
        assert_drawn(png)
    md = (select / "report.md").read_text()
    for name in pngs:
        assert md.count(f"(plots/{name}.png)") == 1
    titles = [alt for alt, _ in embedded]
    assert len(set(titles)) == len(titles)  # no figure twice under another name either
    return pngs


# ---------------------------------------------------------------------------------------------------
# Which columns get a histogram
# ---------------------------------------------------------------------------------------------------

def test_histogram_columns_skip_constant_selected_only_and_linear_twins():
    selected = np.array([True, True, False, False, False])
    columns = {
        "score": [1.0, 2.0, 0.5, 3.0, 0.1],
        "n_turns": [1, 1, 1, 1, 1],
        "nn_sim": [np.nan, 0.4, np.nan, np.nan, np.nan],
        "wins": [10.0, 20.0, 5.0, 30.0, 1.0],  # 10 x score
        "other": [3.0, 1.0, 2.0, 2.0, np.nan],
    }
    shown, skipped = histogram_columns(columns, selected)
    assert shown == ["score", "other"]
    assert skipped == {"n_turns": "one value on every row", "nn_sim": "defined on the selected rows only",
                       "wins": "a linear function of score (same histogram)"}
    assert same_picture([1, 2, 3, np.nan], [-2, -4, -6, 7])  # decreasing linear: the same picture mirrored
    assert not same_picture([1, 2, 3, 4], [1, 4, 9, 16])


# ---------------------------------------------------------------------------------------------------
# Every method's result shape (synthetic results, the real report writer)
# ---------------------------------------------------------------------------------------------------

def _result(method: str, rows: list[dict]) -> tuple[SelectionResult, list[int]]:
    """A result shaped as ``method`` returns it, over ``rows``, and the selected positions (budget 12)."""
    n, rng = len(rows), np.random.default_rng(1)
    if method == "random":
        ranking = rng.permutation(n)[:12].tolist()
        draw = [None] * n
        for pos, i in enumerate(ranking):
            draw[i] = pos
        return SelectionResult(table={"random_draw": draw}, ranking=ranking), ranking
    if method == "length":
        lengths = [sum(len(m["content"]) for m in r["messages"] if m["role"] == "assistant") for r in rows]
        ranking = np.argsort(-np.asarray(lengths), kind="stable").tolist()
        return SelectionResult(table={"length_response_chars": lengths}, ranking=ranking,
                               score_column="length_response_chars"), ranking[:12]
    if method == "ifd":
        lc, ld = rng.uniform(1, 3, n), rng.uniform(1, 3, n)
        ifd = np.exp(lc) / np.exp(ld)
        ranking = np.argsort(-ifd, kind="stable").tolist()
        return SelectionResult(table={"loss_condition": lc.tolist(), "loss_direct": ld.tolist(), "ifd": ifd.tolist()},
                               ranking=ranking, score_column="ifd", scatter=("loss_direct", "loss_condition")), ranking[:12]
    # nuggets / deita: scores, then the real greedy filter over random embeddings with near-duplicates
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb[1::3] = emb[0::3][: emb[1::3].shape[0]] + 0.01 * rng.normal(size=emb[1::3].shape)
    score = rng.integers(0, 8, n) / 7 if method == "nuggets" else rng.uniform(0, 1, n)  # golden: wins / anchors
    order = np.argsort(-score, kind="stable")
    greedy = greedy_diverse(emb, order, tau=0.9, budget=12)
    ranking = greedy.kept.tolist()
    if method == "nuggets":
        table = {"golden_score": score.tolist(), "anchor_wins": np.rint(score * 7).tolist(), "is_anchor": [False] * n}
        return SelectionResult(table=table, ranking=ranking, score_column="golden_score", greedy=greedy), ranking
    c, q = rng.uniform(1, 6, n), rng.uniform(1, 6, n)
    table = {"complexity": c.tolist(), "quality": q.tolist(), "evol_score": (c * q).tolist(), "n_turns": [1] * n,
             "nn_sim": [np.nan] * n}
    return SelectionResult(table=table, ranking=ranking, score_column="evol_score", scatter=("complexity", "quality"),
                           greedy=greedy), ranking


EXPECTED = {
    "random": {"hist_response_length", "sources"},
    "length": {"hist_length_response_chars", "sources"},  # response length = the score: drawn once
    "ifd": {"scatter_loss_direct_loss_condition", "hist_ifd", "hist_loss_condition", "hist_loss_direct",
            "hist_response_length", "sources"},
    "nuggets": {"hist_golden_score", "hist_response_length", "nn_similarity", "tau_rejections", "sources"},
    "deita": {"scatter_complexity_quality", "hist_evol_score", "hist_complexity", "hist_quality",
              "hist_response_length", "nn_similarity", "tau_rejections", "sources"},
}


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_gets_its_figures_once(tmp_path, method):
    rows = _rows(60)
    result, selected = _result(method, rows)
    table = build_table([r["id"] for r in rows], result, selected, ["a.json"] * 40 + ["b.jsonl"] * 20)
    counts = {"pool_rows": 60, "selected_rows": len(selected)}
    write_report(tmp_path, table, result, OmegaConf.create({"method": method, "budget": 12}), counts, rows=rows)
    pngs = check_report(tmp_path)
    assert set(pngs) == EXPECTED[method]
    html = (tmp_path / "report.html").read_text()
    if result.score_column:
        assert "5 highest-scored rows" in html and "5 lowest-scored rows" in html
    else:
        assert "highest-scored" not in html
    if method == "deita":
        assert "n_turns (one value on every row)" in html
    if method == "nuggets":
        assert "anchor_wins (a linear function of golden_score" in html


def test_one_source_and_no_variation_give_no_figure_but_a_report(tmp_path):
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
            for i in range(6)]
    result = SelectionResult(table={"score": [1.0] * 6}, ranking=[0, 1, 2], score_column="score")
    table = build_table([r["id"] for r in rows], result, [0, 1, 2], ["only.json"] * 6)
    write_report(tmp_path, table, result, OmegaConf.create({"method": "m", "budget": 3}),
                 {"pool_rows": 6, "selected_rows": 3}, rows=rows)
    assert check_report(tmp_path) == {}
    assert "nothing to plot" in (tmp_path / "report.html").read_text()


def test_a_rerun_leaves_no_stale_figure(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "hist_old.png").write_bytes(b"old")
    rows = _rows(30)
    result, selected = _result("random", rows)
    write_report(tmp_path, build_table([r["id"] for r in rows], result, selected), result, OmegaConf.create({"method": "random", "budget": 12}),
                 {"pool_rows": 30, "selected_rows": 12}, rows=rows)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["hist_response_length.png"]


# ---------------------------------------------------------------------------------------------------
# The real select stage
# ---------------------------------------------------------------------------------------------------

def _two_code_sources(shared_data: Path, limit: int) -> str:
    """Two code sources that share near-identical rows (so tau rejects some)."""
    return (f"data.pool=[{{path: {shared_data / INSTRUCT / 'gpteacher_codegen-instruct.json'}, limit: {limit}}},"
            f"{{path: {shared_data / INSTRUCT / 'codealpaca_code_alpaca_2k.json'}, limit: {limit}}}]")


def test_random_select_run_writes_report_html(tmp_path, shared_data):
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection.budget=16", _two_code_sources(shared_data, 30),
            *shared_paths(tmp_path, shared_data)]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    select = next((tmp_path / "runs" / "tiny").iterdir()) / "select"
    assert set(check_report(select)) == {"hist_response_length", "sources"}  # random_draw: selected rows only
    html = (select / "report.html").read_text()
    assert "random_draw (defined on the selected rows only)" in html and "highest-scored" not in html


def test_deita_select_run_writes_every_figure(tmp_path, shared_data):
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", "selection.budget=16",
            "selection.tau=0.65", "selection.scorer.max_length=128", "selection.embedder.max_length=128",
            "selection.chunk_rows=16", _two_code_sources(shared_data, 30), *shared_paths(tmp_path, shared_data)]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    select = next((tmp_path / "runs" / "tiny").iterdir()) / "select"
    manifest = json.loads((select / "manifest.json").read_text())
    assert manifest["method_report"]["rejected_by_tau"] > 0
    chunks = manifest["cache"]["chunks"]  # complexity, quality, embeddings: ~60 rows in chunks of 16, none resumed
    assert len(chunks) == 3 and all(c["resumed"] == 0 and c["computed"] == c["chunks"] >= 3 for c in chunks.values())
    assert manifest["cache"]["resumed_chunks"] == 0
    pngs = check_report(select)
    assert {"scatter_complexity_quality", "hist_evol_score", "hist_complexity", "hist_quality", "hist_response_length",
            "nn_similarity", "tau_rejections", "sources"} <= set(pngs)
    assert "hist_n_turns" not in pngs and "hist_nn_sim" not in pngs  # single-turn data; selected rows only
    assert (select / "report.md").read_text().count("pool rows: ") == 1  # the method's own count is not repeated
    html = (select / "report.html").read_text()
    assert "n_turns (one value on every row)" in html
    assert f"{manifest['method_report']['rejected_by_tau']} of {manifest['method_report']['scanned']} scanned rows " \
           "rejected by τ" in html
    for name in ("gpteacher_codegen-instruct.json", "codealpaca_code_alpaca_2k.json"):
        assert f"<td>{name}</td>" in html
    assert "The 5 highest-scored rows (evol_score)" in html and "The 5 lowest-scored rows (evol_score)" in html
