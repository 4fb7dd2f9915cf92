"""The selection report: a markdown summary plus PNG plots of pool vs selected score distributions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from deita.io import write_text_atomic
from deita.selection.base import SelectionResult

SKIP_COLUMNS = {"id", "selected", "rank"}


def numeric_columns(table) -> list[str]:
    """Scalar numeric columns of the per-row table (list columns such as per-turn scores are skipped)."""
    import pandas as pd

    return [c for c in table.columns if c not in SKIP_COLUMNS and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def plot_histogram(ax, pool_values, selected_values, column: str) -> None:
    """Overlaid, density-normalised histograms of one column for the pool and the selection."""
    import numpy as np

    pool = np.asarray(pool_values, dtype=float)
    pool = pool[np.isfinite(pool)]
    chosen = np.asarray(selected_values, dtype=float)
    chosen = chosen[np.isfinite(chosen)]
    if pool.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center")
        return
    bins = np.histogram_bin_edges(pool, bins=40)
    ax.hist(pool, bins=bins, alpha=0.5, density=True, label=f"pool (n={pool.size})")
    if chosen.size:
        ax.hist(chosen, bins=bins, alpha=0.5, density=True, label=f"selected (n={chosen.size})")
    ax.set_xlabel(column)
    ax.set_ylabel("density")
    ax.legend()


def write_report(out_dir: Path, table, result: SelectionResult, sel_cfg, counts: dict,
                 problem: Optional[str] = None) -> None:
    """Write ``report.md`` and ``plots/*.png`` into ``out_dir``; ``problem`` (a selection smaller than the
    budget or than a later stage needs) is shown under the counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = out_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    lines = [
        f"# Selection report: {sel_cfg.method}",
        "",
        f"- pool rows: {counts['pool_rows']}",
        f"- selected rows: {counts['selected_rows']} (budget {sel_cfg.budget})",
        *([f"- **shortfall**: {problem}"] if problem else []),
        f"- malformed records skipped at load: {counts.get('skipped_records', 0)}",
    ]
    for key, value in sorted(result.report.items()):
        lines.append(f"- {key.replace('_', ' ')}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    lines += ["", "## Score distributions, pool vs selected", ""]
    selected = table[table["selected"]]
    cols = numeric_columns(table)
    if cols:
        lines += ["| column | pool mean | selected mean | pool min | pool max |", "|---|---|---|---|---|"]
    for column in cols:
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_histogram(ax, table[column], selected[column], column)
        fig.tight_layout()
        fig.savefig(plots_dir / f"hist_{column}.png", dpi=100)
        plt.close(fig)
        sel_mean = selected[column].mean() if len(selected) else float("nan")
        lines.append(f"| {column} | {table[column].mean():.4g} | {sel_mean:.4g} | {table[column].min():.4g} | {table[column].max():.4g} |")
    for stem, draw in result.plots.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax)
        fig.tight_layout()
        fig.savefig(plots_dir / f"{stem}.png", dpi=100)
        plt.close(fig)
    pngs = sorted(p.name for p in plots_dir.glob("*.png"))
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{name}](plots/{name})" for name in pngs]
    write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
