"""The selection report: ``report.md`` (counts and score summary), ``report.html`` (the same plus every
figure embedded and the highest- and lowest-scored rows, one self-contained file) and ``plots/*.png``.

Figures (each drawn once, only when its data carries information; see :mod:`deita.selection.figures`):
the method's two main scores against each other with the selected rows highlighted; pool-vs-selected
histograms of the informative score columns and of the response length; the selected rows' similarity to
their nearest earlier kept row with τ marked, and the running count of rows rejected by τ against scan
position (methods that ran the diversity filter); the per-source composition of pool and selection (two or
more sources); then any plot the method draws itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from deita.io import atomic_path, write_text_atomic
from deita.selection.base import SelectionResult

SKIP_COLUMNS = {"id", "selected", "rank"}
SHOWN_COUNTS = ("pool_rows", "selected_rows")
"""Method-report keys the report's own counts already show."""
LENGTH_COLUMN = "response length"
LENGTH_LABEL = "response length (characters, summed over turns)"
EXTREME_ROWS = 5
"""Rows shown at each end of the score ranking in the HTML report."""
TEXT_WIDTH = 160
"""Characters kept of an instruction or a response in the HTML report's row tables."""


def numeric_columns(table) -> list[str]:
    """Scalar numeric columns of the per-row table (list columns such as per-turn scores are skipped)."""
    import pandas as pd

    return [c for c in table.columns if c not in SKIP_COLUMNS and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


@dataclass
class ReportFigure:
    """One figure of the report: file stem, title, caption and the PNG itself."""

    name: str
    title: str
    caption: str
    png: bytes


def response_lengths(rows: list[dict]) -> list[int]:
    """Characters of each row's assistant messages, summed over turns."""
    from deita.data.fields import response_chars

    return [response_chars(r) for r in rows]


def build_figures(table, result: SelectionResult, rows: Optional[list[dict]],
                  lengths: Optional[list[int]] = None) -> tuple[list[ReportFigure], dict[str, str]]:
    """Every figure the data supports, in report order, and the columns left without a histogram (name →
    why). ``lengths`` (each pool row's response length, in table order), or else ``rows`` (the pool's
    canonical rows, from which they are counted), adds the response-length histogram."""
    import numpy as np

    from deita.plotting import png_bytes
    from deita.selection import figures as F

    label = lambda column: result.labels.get(column, column)
    selected = table["selected"].to_numpy(dtype=bool)
    n_selected = int(selected.sum())
    out: list[ReportFigure] = []

    def add(name: str, fig: Any, caption: str) -> None:
        if fig is not None:
            out.append(ReportFigure(name, fig.axes[0].get_title().replace("\n", ", "), caption, png_bytes(fig)))

    if len(result.scatter) == 2 and all(c in table for c in result.scatter):
        x, y = result.scatter
        add(f"scatter_{x}_{y}", F.score_scatter(table[x], table[y], selected, label(x), label(y)),
            "Each dot is a pool row; the selected rows are drawn on top in colour.")
    numeric = numeric_columns(table)
    order = ([result.score_column] if result.score_column in numeric else []) + \
        [c for c in numeric if c != result.score_column]
    columns = {c: table[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in order}
    if lengths is not None or rows is not None:
        columns[LENGTH_COLUMN] = np.asarray(response_lengths(rows) if lengths is None else lengths, dtype=np.float64)
    shown, skipped = F.histogram_columns(columns, selected)
    for column in shown:
        text = label(column) if column != LENGTH_COLUMN else LENGTH_LABEL
        add(f"hist_{column.replace(' ', '_')}", F.score_histogram(columns[column], columns[column][selected], text),
            "Bars are % of each group's rows, so pool and selection compare at any budget.")
    if result.greedy is not None:
        add("nn_similarity", F.nn_similarity(result.greedy, n_selected),
            "Each selected row was kept because its similarity to every earlier kept row was at most τ; "
            "mass piled against τ means τ is binding.")
        add("tau_rejections", F.rejection_curve(result.greedy),
            "Candidates are examined in score order; a steeper rejected curve means more near-duplicates "
            "among the high-scoring rows.")
    if "source" in table:
        pool_counts = table["source"].value_counts(sort=False).to_dict()
        sel_counts = table.loc[selected, "source"].value_counts(sort=False).to_dict()
        add("sources", F.source_composition(pool_counts, sel_counts),
            "Grey: each source's share of the pool; colour: its share of the selection.")
    for stem, draw in result.plots.items():
        from deita.plotting import new_figure

        fig, ax = new_figure()
        draw(ax)
        add(stem, fig, "")
    return out, skipped


def summary_rows(table) -> list[list[Any]]:
    """Per numeric column: pool mean, selected mean, pool min, pool max."""
    chosen = table[table["selected"]]
    rows = []
    for column in numeric_columns(table):
        sel_mean = float(chosen[column].mean()) if len(chosen) else math.nan
        rows.append([column, float(table[column].mean()), sel_mean, float(table[column].min()), float(table[column].max())])
    return rows


def facts(result: SelectionResult, sel_cfg, counts: dict) -> list[tuple[str, Any]]:
    """The report's key figures: counts, then the method's own report entries."""
    out = [("method", sel_cfg.method), ("pool rows", counts["pool_rows"]),
           ("selected rows", f"{counts['selected_rows']} (budget {sel_cfg.budget})"),
           ("malformed records skipped at load", counts.get("skipped_records", 0))]
    for key, value in sorted(result.report.items()):
        if key in SHOWN_COUNTS:
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            value = json.dumps(value)
        out.append((key.replace("_", " "), value))
    return out


def shorten(text: str, width: int = TEXT_WIDTH) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def first_message(row: dict, role: str) -> str:
    """The content of the row's first message with ``role`` ('' when none)."""
    return next((m.get("content") or "" for m in row.get("messages", []) if m.get("role") == role), "")


def extreme_rows(table, rows: list[dict], column: str, score_columns: list[str]) -> tuple[list[str], list[list], list[list]]:
    """Header and the highest- and lowest-scored rows by ``column`` (finite scores only; highest first,
    lowest last-first), each with its scores, selection rank, id (which names its source) and shortened
    text."""
    import numpy as np

    values = table[column].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = np.flatnonzero(np.isfinite(values))
    order = ok[np.argsort(-values[ok], kind="stable")]
    top = order[:EXTREME_ROWS].tolist()
    bottom = [i for i in order[::-1][:EXTREME_ROWS].tolist() if i not in top]
    cols = [column, *[c for c in score_columns if c != column]]
    header = [*cols, "selected (rank)", "id", "instruction", "response"]

    def line(i: int) -> list:
        rank = int(table["rank"].iat[i])
        return [*(float(table[c].iat[i]) for c in cols), f"yes ({rank + 1})" if rank >= 0 else "no",
                str(table["id"].iat[i]), shorten(first_message(rows[i], "user")),
                shorten(first_message(rows[i], "assistant"))]

    return header, [line(i) for i in top], [line(i) for i in bottom]


def composition_rows(table) -> list[list[Any]]:
    """Per source: pool rows, selected rows, share of the pool (%), share of the selection (%), rows kept (%)."""
    n_pool, selected = len(table), table["selected"]
    n_sel = int(selected.sum())
    out = []
    for source, group in table.groupby("source", sort=False):
        pool, sel = len(group), int(group["selected"].sum())
        out.append([source, pool, sel, 100.0 * pool / n_pool, 100.0 * sel / n_sel if n_sel else 0.0, 100.0 * sel / pool])
    return out


def markdown(result: SelectionResult, sel_cfg, counts: dict, table, figures: list[ReportFigure],
             problem: Optional[str]) -> str:
    """The text of ``report.md``."""
    lines = [f"# Selection report: {sel_cfg.method}", "",
             f"- pool rows: {counts['pool_rows']}",
             f"- selected rows: {counts['selected_rows']} (budget {sel_cfg.budget})",
             *([f"- **shortfall**: {problem}"] if problem else []),
             f"- malformed records skipped at load: {counts.get('skipped_records', 0)}"]
    for key, value in sorted(result.report.items()):
        if key in SHOWN_COUNTS:
            continue
        lines.append(f"- {key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    lines += ["", "The same report with every figure and the highest- and lowest-scored rows: `report.html`.",
              "", "## Score distributions, pool vs selected", ""]
    summary = summary_rows(table)
    if summary:
        lines += ["| column | pool mean | selected mean | pool min | pool max |", "|---|---|---|---|---|"]
        lines += [f"| {c} | {a:.4g} | {b:.4g} | {lo:.4g} | {hi:.4g} |" for c, a, b, lo, hi in summary]
    if figures:
        lines += ["", "## Plots", ""] + [f"![{f.title}](plots/{f.name}.png)" for f in figures]
    return "\n".join(lines) + "\n"


def html_report(result: SelectionResult, sel_cfg, counts: dict, table, rows: Optional[list[dict]],
                figures: list[ReportFigure], skipped: dict[str, str], problem: Optional[str]) -> str:
    """The text of ``report.html``: facts, figures, score summary, composition and extreme rows."""
    from deita import html as H

    body = []
    if problem:
        body.append(f'<p class="warning"><b>Shortfall:</b> {H.esc(problem)}</p>')
    body += ["<h2>Summary</h2>", H.table(None, facts(result, sel_cfg, counts))]
    body.append("<h2>Figures</h2>")
    body += [H.figure(f.png, f.title, f.caption) for f in figures] or ['<p class="note">No column of this '
                                                                      "selection varies: nothing to plot.</p>"]
    if skipped:
        body.append('<p class="note">Not plotted: ' + H.esc("; ".join(f"{c} ({why})" for c, why in skipped.items()))
                    + ".</p>")
    summary = summary_rows(table)
    if summary:
        body += ["<h2>Scores, pool vs selected</h2>",
                 H.table(["column", "pool mean", "selected mean", "pool min", "pool max"], summary)]
    if "source" in table:
        body += ["<h2>Pool and selection by source</h2>",
                 H.table(["source", "pool rows", "selected rows", "% of pool", "% of selection", "% of source kept"],
                         composition_rows(table))]
    if rows is not None and result.score_column in table:
        scores = [c for c in result.scatter if c in table]
        header, top, bottom = extreme_rows(table, rows, result.score_column, scores)
        if top:
            body += [f"<h2>The {len(top)} highest-scored rows ({H.esc(result.score_column)})</h2>", H.table(header, top)]
            if result.greedy is not None:
                body.append('<p class="note">A high-scored row that was not selected was rejected by τ (too similar '
                            "to a row kept before it) or came after the budget was met.</p>")
        if bottom:
            body += [f"<h2>The {len(bottom)} lowest-scored rows ({H.esc(result.score_column)})</h2>",
                     H.table(header, bottom)]
    return H.page(f"Selection report: {sel_cfg.method}", body)


def write_report(out_dir: Path, table, result: SelectionResult, sel_cfg, counts: dict,
                 problem: Optional[str] = None, rows: Optional[list[dict]] = None,
                 lengths: Optional[list[int]] = None) -> None:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out_dir``. ``problem`` (a selection
    smaller than the budget or than a later stage needs) is shown under the counts; ``rows`` (the pool's
    canonical rows, in table order; read by position) adds the extreme rows' text and, unless ``lengths``
    (each row's response length) is given, the response-length histogram."""
    figures, skipped = build_figures(table, result, rows, lengths)
    plots_dir = out_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    for stale in plots_dir.glob("*.png"):  # an earlier, unfinished attempt's figures
        stale.unlink()
    for fig in figures:
        with atomic_path(plots_dir / f"{fig.name}.png") as tmp:
            tmp.write_bytes(fig.png)
    write_text_atomic(out_dir / "report.md", markdown(result, sel_cfg, counts, table, figures, problem))
    write_text_atomic(out_dir / "report.html", html_report(result, sel_cfg, counts, table, rows, figures, skipped, problem))
