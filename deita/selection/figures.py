"""The selection report's figures: pure functions from the per-row table (and the diversity filter's
trace) to matplotlib figures; a figure whose data carries no information is not drawn (None).

Which columns get a histogram is decided once, by :func:`histogram_columns`: a column with a single value,
one defined only on the selected rows (nothing to compare with the pool), or one that is an exact linear
function of a column already shown (the same picture twice) gets none.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from deita.plotting import new_figure

POOL_COLOR, SELECTED_COLOR, TAU_COLOR = "#9e9e9e", "#d95f02", "#1b4f9c"
SCATTER_POOL_POINTS = 20_000
"""At most this many pool rows are drawn in a scatter (a fixed, seeded subsample); every selected row is."""
CURVE_POINTS = 2_000
"""At most this many points are drawn per running-count curve (exact at every drawn position)."""
DISCRETE_VALUES = 12
"""A column of at most this many distinct values is drawn as bars per value, not as a histogram."""


def finite(values: Any) -> np.ndarray:
    """``values`` as float64 with NaN/None/inf dropped."""
    arr = np.asarray(values, dtype=np.float64)
    return arr[np.isfinite(arr)]


def informative(values: Any) -> bool:
    """True when the finite values hold at least two distinct numbers."""
    arr = finite(values)
    return arr.size > 1 and bool(arr.min() != arr.max())


def same_picture(a: Any, b: Any) -> bool:
    """True when ``a`` is an exact linear function of ``b`` where both are finite (|correlation| = 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3 or not informative(a[both]) or not informative(b[both]):
        return False
    return bool(abs(np.corrcoef(a[both], b[both])[0, 1]) > 1 - 1e-9)


def histogram_columns(columns: dict[str, Any], selected: np.ndarray) -> tuple[list[str], dict[str, str]]:
    """Which of ``columns`` (name → per-row values, in the order to show them) get a pool-vs-selected
    histogram, and why each other one does not (name → reason)."""
    shown: list[str] = []
    skipped: dict[str, str] = {}
    for name, values in columns.items():
        arr = np.asarray(values, dtype=np.float64)
        if not np.isfinite(arr[~selected]).any():
            skipped[name] = "defined on the selected rows only"
        elif not informative(arr):
            skipped[name] = "one value on every row"
        else:
            twin = next((s for s in shown if same_picture(arr, columns[s])), None)
            if twin is None:
                shown.append(name)
            else:
                skipped[name] = f"a linear function of {twin} (same histogram)"
    return shown, skipped


def score_histogram(pool_values: Any, selected_values: Any, label: str) -> Any:
    """Pool vs selected distribution of one column, each as % of its own rows per bin. A column of at most
    ``DISCRETE_VALUES`` distinct values (counts, flags, wins out of a few anchors) gets one pair of bars per
    value."""
    pool, chosen = finite(pool_values), finite(selected_values)
    fig, ax = new_figure()
    values = np.unique(pool)
    pct = lambda arr: np.full(arr.size, 100.0 / max(arr.size, 1))
    if values.size <= DISCRETE_VALUES:
        pool_share = [100.0 * np.mean(pool == v) for v in values]
        sel_share = [100.0 * np.mean(chosen == v) if chosen.size else 0.0 for v in values]
        x = np.arange(values.size)
        ax.bar(x - 0.2, pool_share, width=0.4, color=POOL_COLOR, label=f"pool ({n_rows(pool.size)})")
        ax.bar(x + 0.2, sel_share, width=0.4, color=SELECTED_COLOR, label=f"selected ({n_rows(chosen.size)})")
        ax.set_xticks(x, [f"{v:.3g}" for v in values])
        ax.set_ylabel("rows with this value (% of pool / of selection)")
    else:
        bins = np.histogram_bin_edges(pool, bins=min(40, max(10, int(np.sqrt(pool.size)))))
        ax.hist(pool, bins=bins, weights=pct(pool), color=POOL_COLOR, alpha=0.7, label=f"pool ({n_rows(pool.size)})")
        if chosen.size:
            ax.hist(chosen, bins=bins, weights=pct(chosen), color=SELECTED_COLOR, alpha=0.6,
                    label=f"selected ({n_rows(chosen.size)})")
        ax.set_ylabel("rows in bin (% of pool / of selection)")
    ax.set_title(f"{short(label)}: pool vs selected")
    ax.set_xlabel(label)
    ax.legend(loc="best")
    return fig


def score_scatter(x: Any, y: Any, selected: np.ndarray, x_label: str, y_label: str) -> Optional[Any]:
    """``y`` against ``x`` for every row, the selected rows highlighted; None unless both vary."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (informative(x) and informative(y)):
        return None
    ok = np.isfinite(x) & np.isfinite(y)
    rest = np.flatnonzero(ok & ~selected)
    shown = rest
    if rest.size > SCATTER_POOL_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(rest, SCATTER_POOL_POINTS, replace=False))
    chosen = np.flatnonzero(ok & selected)
    fig, ax = new_figure(7.0, 5.0)
    size = 6 if ok.sum() > 5000 else 14
    note = f", {shown.size:,} shown" if shown.size < rest.size else ""
    ax.scatter(x[shown], y[shown], s=size, color=POOL_COLOR, alpha=0.5, linewidths=0, rasterized=True,
               label=f"not selected ({n_rows(rest.size)}{note})")
    ax.scatter(x[chosen], y[chosen], s=size * 1.5, color=SELECTED_COLOR, alpha=0.8, linewidths=0, rasterized=True,
               label=f"selected ({n_rows(chosen.size)})")
    ax.set_title(f"{short(x_label)} x {short(y_label)}\nselected rows highlighted")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.legend(loc="best", framealpha=0.95)
    return fig


def nn_similarity(greedy: Any, n_selected: int) -> Optional[Any]:
    """Histogram of each selected row's cosine similarity to its nearest earlier kept row, τ marked; None
    when fewer than two rows were kept (the first kept row has no earlier one)."""
    sims = finite(np.asarray(greedy.nn_sim)[:n_selected])
    if sims.size == 0:
        return None
    fig, ax = new_figure()
    ax.hist(sims, bins=min(40, max(10, int(np.sqrt(sims.size)))), color=SELECTED_COLOR, alpha=0.8,
            label=f"selected rows ({sims.size:,}; the first has no earlier row)")
    ax.axvline(greedy.tau, color=TAU_COLOR, linestyle="--", linewidth=2, label=f"τ = {greedy.tau:g} (rejected above)")
    lo = min(float(sims.min()), greedy.tau)
    ax.set_xlim(lo - 0.05 * (1.0 - lo + 1e-3), 1.0)
    ax.set_title("Nearest-kept-neighbour similarity of the selected rows")
    ax.set_xlabel("cosine similarity to the nearest earlier kept row")
    ax.set_ylabel("selected rows (count)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # headroom for the legend
    ax.legend(loc="upper left")
    return fig


def rejection_curve(greedy: Any) -> Optional[Any]:
    """Running counts of rows kept and rejected by τ against scan position (candidates in score order)."""
    if greedy.scanned == 0:
        return None
    n = int(greedy.scanned)
    pos = np.unique(np.linspace(1, n, min(n, CURVE_POINTS)).round().astype(np.int64))
    rejected = greedy.rejected_by(pos)
    fig, ax = new_figure()
    step = "steps-post" if pos.size == n else "default"  # every position drawn: exact steps
    ax.plot(pos, pos - rejected, color=SELECTED_COLOR, linewidth=2, drawstyle=step,
            label=f"kept ({n - greedy.rejected:,})")
    ax.plot(pos, rejected, color=TAU_COLOR, linewidth=2, drawstyle=step,
            label=f"rejected by τ = {greedy.tau:g} ({greedy.rejected:,})")
    ax.set_title(f"Greedy diversity filter: {greedy.rejected:,} of {n:,} scanned rows rejected by τ")
    ax.set_xlabel("scan position (candidates examined, best score first)")
    ax.set_ylabel("rows (running count)")
    ax.set_xlim(0, n * 1.02 + 1)
    ax.set_ylim(0, None)
    ax.legend(loc="upper left")
    return fig


def source_composition(pool_counts: dict[str, int], selected_counts: dict[str, int]) -> Optional[Any]:
    """Each source's share of the pool and of the selection (bars labelled with row counts); None with a
    single source."""
    names = list(pool_counts)
    if len(names) < 2:
        return None
    n_pool, n_sel = sum(pool_counts.values()), sum(selected_counts.values())
    pool_pct = [100.0 * pool_counts[s] / n_pool for s in names]
    sel_pct = [100.0 * selected_counts.get(s, 0) / n_sel if n_sel else 0.0 for s in names]
    y = np.arange(len(names))
    fig, ax = new_figure(7.0, max(3.2, 1.2 + 0.6 * len(names)))
    pool_bars = ax.barh(y - 0.2, pool_pct, height=0.4, color=POOL_COLOR, label=f"pool ({n_rows(n_pool)})")
    sel_bars = ax.barh(y + 0.2, sel_pct, height=0.4, color=SELECTED_COLOR, label=f"selected ({n_rows(n_sel)})")
    ax.bar_label(pool_bars, labels=[str(pool_counts[s]) for s in names], padding=2, fontsize=8)
    ax.bar_label(sel_bars, labels=[str(selected_counts.get(s, 0)) for s in names], padding=2, fontsize=8)
    ax.set_yticks(y, [short(s, 40) for s in names])
    ax.invert_yaxis()
    ax.set_xlim(0, max(pool_pct + sel_pct) * 1.15)
    ax.set_title("Sources: share of the pool vs of the selection")
    ax.set_xlabel("share of rows (%); bar labels: rows")
    ax.legend(loc="best")
    return fig


def n_rows(n: int) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} row" if n == 1 else f"{n:,} rows"


def short(text: str, width: int = 45) -> str:
    """``text`` up to its first parenthesis, cut to ``width`` characters."""
    head = text.split(" (")[0]
    return head if len(head) <= width else head[: width - 1] + "…"
