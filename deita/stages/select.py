"""The select stage: score the pool and choose the rows SFT trains on (:mod:`deita.selection.stage` does it)."""

from __future__ import annotations

from omegaconf import DictConfig

from deita.stages import Stage, register


def run_select_stage(cfg: DictConfig, ctx) -> dict:
    """Load the pool, let ``cfg.selection.method`` choose, write ``scores.parquet``, ``selected.jsonl``, report."""
    from deita.selection.stage import run_select_stage as run

    return run(cfg, ctx)


def selection_model_refs(cfg: DictConfig) -> dict[str, str]:
    """Model references the selection method reads, by config key (``selection.scorer.quality_model``)."""
    from deita.selection.base import SELECTORS

    keys = SELECTORS.get(cfg.selection.method)(cfg.selection).model_keys()
    return {f"selection.{key}": ref for key, ref in keys.items()}


def selection_sources(cfg: DictConfig) -> dict[str, tuple]:
    """Data files the selection method reads besides the pool (e.g. Nuggets' anchor file), by config key."""
    from deita.selection.base import SELECTORS

    keys = SELECTORS.get(cfg.selection.method)(cfg.selection).source_keys()
    return {f"selection.{key}": (source, "sft") for key, source in keys.items()}


def selection_files(cfg: DictConfig) -> dict[str, str]:
    """Files the selection method reads besides the pool (precomputed scores, embeddings), by config key."""
    from deita.selection.base import SELECTORS

    return SELECTORS.get(cfg.selection.method)(cfg.selection).input_files()


def preflight_select(cfg: DictConfig) -> None:
    """The selection method's own preflight of those files (columns, shapes, ids counts)."""
    from deita.selection.base import SELECTORS

    SELECTORS.get(cfg.selection.method)(cfg.selection).preflight()


def plan_select(cfg: DictConfig, pool) -> dict:
    """Forward passes of the selection models over the pool (2 FLOPs per parameter and token)."""
    from deita.plan import gpu_hours, params_billions
    from deita.selection.base import SELECTORS

    passes = SELECTORS.get(cfg.selection.method)(cfg.selection).planned_passes(pool.stats.rows, pool.stats.tokens)
    flops = sum(2 * params_billions(ref) * 1e9 * tokens for _, ref, tokens in passes)
    models = ", ".join(f"{role}={ref}" for role, ref, _ in passes) or "none"
    return {"rows": pool.stats.rows, "tokens": pool.stats.tokens, "selected": pool.selected, "models": models,
            "flops": flops, "gpu_hours": gpu_hours(flops, cfg.plan_options), "exact_counts": pool.stats.exact,
            "notes": f"select {pool.selected} rows; models: {models}"}


def sweep_columns(manifest: dict) -> dict:
    """Rows selected and the score/embedding cache's hits and misses."""
    cache = manifest.get("cache", {})
    return {"selected": manifest.get("selected_rows"), "select cache hits": len(cache.get("hits", [])),
            "select cache misses": len(cache.get("misses", []))}


STAGE = register(Stage(
    name="select",
    run=run_select_stage,
    summary="Scores the pool with `selection.method` and keeps `selection.budget` rows.",
    config_keys=("selection", "data.pool"),
    data_keys=("data.pool",),
    model_refs=selection_model_refs,
    extra_sources=selection_sources,
    input_files=selection_files,
    preflight=preflight_select,
    plan=plan_select,
    sweep_columns=sweep_columns,
))
