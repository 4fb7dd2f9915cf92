"""What ``train.py`` does with a composed config: validate, then plan or run the stages."""

from __future__ import annotations

from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    """Validate ``cfg``; then print the plan (``plan=true``) or run the pipeline."""
    from deita.validate import validate_config

    validate_config(cfg)
    if cfg.plan:
        from deita.plan import print_plan

        print_plan(cfg)
        return
    from deita.pipeline import run_pipeline

    run_pipeline(cfg)
