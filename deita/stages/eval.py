"""The eval stage: answer benchmark prompts with the final model and measure its held-out loss
(:mod:`deita.evaluation.stage` does it).

It reads the final model (the last model-producing stage found, or ``eval.model_stage``) and, when the
select stage is there, the selection, to measure the loss on pool rows it left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig

from deita.stages import Stage, model_stages, register
from deita.validate import require


@dataclass
class EvalStageConfig:
    """The eval stage: answers to benchmark prompts, in the files the judges read, plus held-out loss."""

    max_new_tokens: int = 256
    """Generation budget per answer."""
    temperature: float = 0.0
    """Sampling temperature; 0 means greedy decoding."""
    limit: Optional[int] = None
    """Answer only the first ``limit`` prompts of each set (null: all)."""
    model_id: str = "${recipe_name}"
    """Name written into the answer files (FastChat model_id / AlpacaEval generator)."""
    model_stage: Optional[str] = None
    """Stage whose model is evaluated (sft, dpo, orpo, ...); null: the last one in pipeline order that is
    in ``stages`` or finished in the run directory."""


def run_eval_stage(cfg: DictConfig, ctx) -> dict:
    """Answer ``cfg.data.eval_prompts`` with the final model, write the judges' files and the held-out loss."""
    from deita.evaluation.stage import run_eval_stage as run

    return run(cfg, ctx)


def check_eval(cfg: DictConfig) -> None:
    """``eval.model_stage`` names a stage that produces a model; token budget, temperature and limit in range."""
    from deita.validate import require_range

    require_range(cfg.eval.max_new_tokens, "eval.max_new_tokens", ge=1)
    require_range(cfg.eval.temperature, "eval.temperature", ge=0)
    require_range(cfg.eval.limit, "eval.limit", ge=1, allow_none=True)
    choice = cfg.eval.model_stage
    require(choice is None or choice in model_stages(), "eval.model_stage",
            f"must be null or a stage that produces a model ({model_stages()}), got {choice!r}")


def heldout_sources(cfg: DictConfig) -> dict[str, tuple]:
    """The pool sources the held-out loss reads (``data.pool``, as sft rows), by config key, when a select
    stage is upstream (in ``stages`` or finished in the run dir): preflight checks them as it does for the
    select stage, so ``stages=[eval]`` alone stops on a bad pool before generating; none otherwise (the
    held-out loss is then skipped and the pool is not read)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from deita.pipeline import read_manifest

    run_dir = OmegaConf.select(cfg, "run_dir", default=None)  # "" while a sweep checks its points
    if "select" not in cfg.stages and not (run_dir and read_manifest(Path(run_dir) / "select") is not None):
        return {}
    return {f"data.pool[{i}].path": (src, "sft") for i, src in enumerate(OmegaConf.select(cfg, "data.pool") or [])}


def sweep_columns(manifest: dict) -> dict:
    """The final model's held-out loss."""
    loss = manifest.get("heldout_loss")
    return {} if loss is None else {"eval heldout_loss": round(loss, 4)}


STAGE = register(Stage(
    name="eval",
    run=run_eval_stage,
    summary="Answers `data.eval_prompts` with the final model (FastChat / AlpacaEval files) and measures its "
            "loss on pool rows the selection left out.",
    optional=("select",),
    reads_model=True,
    config=EvalStageConfig,
    data_keys=("data.eval_prompts",),
    data_optional=True,
    data_kind="prompts",
    extra_sources=heldout_sources,
    check=check_eval,
    sweep_columns=sweep_columns,
))
