"""The select stage: load the pool, let the selection method score and rank, cut to the budget, write.

Reads like the recipe it implements: load → rank → cut → write → check. The budget is applied here and
nowhere else (:func:`apply_budget`): methods return a ranking. A selection smaller than the budget is a
warning (report, manifest, log); an empty one, or one smaller than a later stage needs
(:func:`rows_needed`), stops the run with the method's reason (:class:`SelectionError`, exit status 2),
after the artifacts below are written into the unfinished stage folder for inspection.

Writes, into the stage directory:

* ``scores.parquet``: one row per pool row: ``id``, ``source``, the method's score columns, ``selected``, ``rank``
  (position in selection order, -1 when not selected);
* ``selected.jsonl``: the selected canonical rows in selection order (what SFT trains on);
* ``report.md``, ``report.html`` (self-contained, figures embedded) and ``plots/*.png``: the selection
  report (:mod:`deita.selection.report`; logged to W&B when W&B is on).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from deita.selection.base import SELECTORS, SelectionContext, SelectionResult, Selector
from deita.validate import ConfigError

log = logging.getLogger(__name__)


class SelectionError(ConfigError):
    """The selection is empty or smaller than a later stage needs; the message says why and what to change."""


def apply_budget(ranking: list[int], budget: int) -> list[int]:
    """The budget rule: the first ``budget`` rows of the method's ranking; ``-1`` keeps them all."""
    if budget < -1:
        raise ValueError(f"selection.budget: expected -1 (all) or a count >= 0, found {budget}")
    return list(ranking) if budget == -1 else list(ranking[:budget])


def rank_and_cut(selector: Selector, rows: list[dict], ctx: SelectionContext) -> tuple[SelectionResult, list[int]]:
    """Let the method rank ``rows`` (stopping at the budget if it can), check the ranking, and cut it to
    ``selector.cfg.budget``. Returns the method's result and the selected pool positions, best first."""
    budget, method = int(selector.cfg.budget), selector.cfg.method
    result = selector.rank(rows, ctx, None if budget < 0 else budget)
    check_ranking(result, len(rows), method)
    return result, apply_budget(result.ranking, budget)


def check_ranking(result: SelectionResult, n_rows: int, method: str) -> None:
    """A method's ranking must index the pool without repeats; its columns must cover the pool."""
    ranking = result.ranking
    if len(set(ranking)) != len(ranking):
        raise RuntimeError(f"selection method {method!r} returned repeated rows")
    if any(not (0 <= i < n_rows) for i in ranking):
        raise RuntimeError(f"selection method {method!r} returned a row outside the pool of {n_rows}")
    for column, values in result.table.items():
        if len(values) != n_rows:
            raise RuntimeError(f"selection method {method!r}: column {column!r} has {len(values)} values for {n_rows} rows")


def rows_needed(cfg: DictConfig) -> tuple[int, str]:
    """The fewest selected rows this run can use, and a clause that says who needs them.

    When sft runs: one full batch on a process, ``sft.per_device_batch_size`` rows (fewer cannot fill a
    single batch; zero ends in TRL's bare ``StopIteration``). Rows that ``sft.eval_fraction`` holds out
    are not counted. Otherwise one row.
    """
    if "sft" in cfg.stages:
        n = int(cfg.sft.per_device_batch_size)
        return n, f"sft needs {n} for one full batch (sft.per_device_batch_size={n})"
    return 1, "the run needs at least one"


def shortfall_messages(cfg: DictConfig, result: SelectionResult, selected: list[int], n_pool: int) -> tuple[Optional[str], Optional[str]]:
    """``(error, warning)`` for a selection of ``selected`` rows: an error when it is empty or smaller than
    :func:`rows_needed`, a warning when it is smaller than the budget; None when there is nothing to say."""
    method, budget, k = cfg.selection.method, int(cfg.selection.budget), len(selected)
    if 0 <= budget <= len(result.ranking):
        reason = f"selection.budget={budget} keeps {k} rows; raise it"
    else:
        reason = result.shortfall or f"the method ranked {len(result.ranking)} of {n_pool} pool rows"
    need, who = rows_needed(cfg)
    if k == 0:
        return f"select: {method} selected no rows: {reason}", None
    if k < need:
        return f"select: {method} selected {k} rows, but {who}: {reason}", None
    if 0 <= k < budget:
        return None, f"select: {method} selected {k} rows, fewer than selection.budget={budget}: {reason}"
    return None, None


def source_labels(source_counts: list[tuple[str, int]]) -> list[str]:
    """Per pool row, the name of the source that gave it (``source_counts``: each source as given and its
    rows, in order): its file or folder name (or hub name), with the source's position appended where two
    sources share a name."""
    names = [Path(source).name or source for source, _ in source_counts]
    labels = [f"{n} (source {k + 1})" if names.count(n) > 1 else n for k, n in enumerate(names)]
    return [label for label, (_, count) in zip(labels, source_counts) for _ in range(count)]


def build_table(ids: list[str], result: SelectionResult, selected: list[int], sources: Optional[list[str]] = None):
    """The per-pool-row table: ``id`` (the pool's row ids, in order), ``source`` (when given), the method's
    columns, selected flag and rank (position in ``selected``)."""
    import pandas as pd

    rank = [-1] * len(ids)
    for position, i in enumerate(selected):
        rank[i] = position
    table = pd.DataFrame({"id": ids, **({"source": sources} if sources else {}), **result.table})
    table["selected"] = [r >= 0 for r in rank]
    table["rank"] = rank
    return table


def cache_report(stats: dict) -> dict:
    """The manifest's ``cache`` entry: hits, misses, each chunked entry's chunks (total, resumed from an
    unfinished run, computed now) and ``resumed_chunks``, their sum."""
    chunks = stats.get("chunks", {})
    return {"hits": stats["hits"], "misses": stats["misses"], "chunks": chunks,
            "resumed_chunks": sum(c["resumed"] for c in chunks.values())}


def run_select_stage(cfg: DictConfig, ctx) -> dict:
    """Run the configured selection method over the pool and write the stage's artifacts."""
    from deita.cache import ContentCache
    from deita.data.loading import write_jsonl
    from deita.data.pool_file import load_pool
    from deita.distributed import barrier
    from deita.models.resolve import resolve_model
    from deita.selection.report import write_report

    pool = load_pool(cfg.data.pool, cfg.data.pool_store, cfg.paths.cache_dir, is_main=ctx.dist.is_main)
    rows = pool.rows
    counts = {"pool_rows": len(rows), "rows_per_source": pool.rows_per_source, "skipped_records": pool.skipped}
    sel_cfg = cfg.selection
    selector = SELECTORS.get(sel_cfg.method)(sel_cfg)
    cache = ContentCache(Path(cfg.paths.cache_dir) / "selection", is_writer=ctx.dist.is_main,
                         chunk_rows=int(sel_cfg.chunk_rows))
    sctx = SelectionContext(
        cache=cache,
        dist=ctx.dist,
        data_fingerprint=pool.fingerprint,
        model_resolver=lambda ref: resolve_model(ref, cfg.paths.cache_dir),
    )
    if ctx.dist.is_main:
        log.info("select: %d pool rows, method %s, budget %s", len(rows), sel_cfg.method, sel_cfg.budget)
    result, order = rank_and_cut(selector, rows, sctx)
    error, warning = shortfall_messages(cfg, result, order, len(rows))
    selected = [rows[i] for i in order]
    counts.update(budget=int(sel_cfg.budget), selected_rows=len(selected), warnings=[warning] if warning else [],
                  cache=cache_report(cache.stats), method_report=result.report)
    if ctx.dist.is_main:
        table = build_table(pool.ids, result, order, source_labels(pool.source_counts))
        table.to_parquet(ctx.work_dir / "scores.parquet", index=False)
        write_jsonl(selected, ctx.work_dir / "selected.jsonl")
        write_report(ctx.work_dir, table, result, sel_cfg, counts, problem=error or warning, rows=rows,
                     lengths=pool.response_lengths)
        if warning:
            log.warning("%s", warning)
    if error:
        barrier()  # every rank reaches the same verdict; the report exists before any rank exits
        raise SelectionError(f"{error} (report: {ctx.work_dir / 'report.md'})")
    if ctx.dist.is_main:
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
        run.log({"select/report": wandb.Html((ctx.work_dir / "report.html").read_text())})
