"""The select stage: load the pool, let the selection method score and choose, write the artifacts.

Reads like the recipe it implements: load → select → check → write. Writes, into the stage directory:

* ``scores.parquet``: one row per pool row: ``id``, the method's score columns, ``selected``, ``rank``
  (position in selection order, -1 when not selected);
* ``selected.jsonl``: the selected canonical rows in selection order (what SFT trains on);
* ``report.md`` and ``plots/*.png``: the selection report (logged to W&B when W&B is on).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from deita.selection.base import SELECTORS, SelectionContext, SelectionResult

log = logging.getLogger(__name__)


def load_pool(sources) -> tuple[list[dict], dict]:
    """Load and concatenate the pool sources into canonical rows; ids must be unique across sources."""
    from deita.data.loading import load_rows

    rows: list[dict] = []
    per_source, skipped = {}, 0
    for src in sources:
        result = load_rows(str(src.path), kind="sft", fmt=src.format, split=src.split,
                           on_error=src.on_error, limit=src.limit)
        rows.extend(result.rows)
        per_source[str(src.path)] = len(result.rows)
        skipped += result.skipped
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row["id"] in seen:
            raise ValueError(
                f"pool row id {row['id']!r} appears twice (pool rows {seen[row['id']]} and {i}); "
                "give each source distinct ids"
            )
        seen[row["id"]] = i
    return rows, {"pool_rows": len(rows), "rows_per_source": per_source, "skipped_records": skipped}


def check_result(result: SelectionResult, n_rows: int, budget: int, method: str) -> None:
    """A method's result must index the pool, without repeats, within the budget."""
    order = result.order
    if len(set(order)) != len(order):
        raise RuntimeError(f"selection method {method!r} returned repeated rows")
    if any(not (0 <= i < n_rows) for i in order):
        raise RuntimeError(f"selection method {method!r} returned a row outside the pool of {n_rows}")
    if budget >= 0 and len(order) > budget:
        raise RuntimeError(f"selection method {method!r} returned {len(order)} rows for a budget of {budget}")
    for column, values in result.table.items():
        if len(values) != n_rows:
            raise RuntimeError(f"selection method {method!r}: column {column!r} has {len(values)} values for {n_rows} rows")


def build_table(rows: list[dict], result: SelectionResult):
    """The per-pool-row table: id, the method's columns, selected flag and rank."""
    import pandas as pd

    rank = [-1] * len(rows)
    for position, i in enumerate(result.order):
        rank[i] = position
    table = pd.DataFrame({"id": [r["id"] for r in rows], **result.table})
    table["selected"] = [r >= 0 for r in rank]
    table["rank"] = rank
    return table


def run_select_stage(cfg: DictConfig, ctx) -> dict:
    """Run the configured selection method over the pool and write the stage's artifacts."""
    from deita.cache import ContentCache
    from deita.data.loading import write_jsonl
    from deita.fingerprint import hash_rows
    from deita.models.resolve import resolve_model
    from deita.selection.report import write_report

    rows, counts = load_pool(cfg.data.pool)
    sel_cfg = cfg.selection
    selector = SELECTORS.get(sel_cfg.method)(sel_cfg)
    cache = ContentCache(Path(cfg.paths.cache_dir) / "selection", is_writer=ctx.dist.is_main)
    sctx = SelectionContext(
        cache=cache,
        dist=ctx.dist,
        data_fingerprint=hash_rows(rows),
        model_resolver=lambda ref: resolve_model(ref, cfg.paths.cache_dir),
    )
    if ctx.dist.is_main:
        log.info("select: %d pool rows, method %s, budget %s", len(rows), sel_cfg.method, sel_cfg.budget)
    result = selector.select(rows, sctx)
    check_result(result, len(rows), sel_cfg.budget, sel_cfg.method)
    selected = [rows[i] for i in result.order]
    counts.update(selected_rows=len(selected), cache={"hits": cache.stats["hits"], "misses": cache.stats["misses"]},
                  method_report=result.report)
    if ctx.dist.is_main:
        table = build_table(rows, result)
        table.to_parquet(ctx.work_dir / "scores.parquet", index=False)
        write_jsonl(selected, ctx.work_dir / "selected.jsonl")
        write_report(ctx.work_dir, table, result, sel_cfg, counts)
        _log_to_tracker(cfg, ctx)
    return counts


def _log_to_tracker(cfg: DictConfig, ctx) -> None:
    """Send the selection report and its plots to W&B when W&B is on."""
    if cfg.logger.backend != "wandb":
        return
    from deita.tracking import tracked_run

    with tracked_run(cfg, "select", ctx.run_dir) as run:
        if run is None:
            return
        import wandb

        run.log({f"select/{p.stem}": wandb.Image(str(p)) for p in sorted((ctx.work_dir / "plots").glob("*.png"))})
        run.log({"select/report": wandb.Html("<pre>" + (ctx.work_dir / "report.md").read_text() + "</pre>")})
