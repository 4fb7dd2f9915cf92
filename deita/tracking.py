"""Experiment tracking: one W&B run per stage, grouped by recipe, carrying the resolved config.

Only the main process talks to W&B. HF's ``WandbCallback`` reuses the run opened here, so the training
curves and the resolved Hydra config land in the same run.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def run_label(cfg: DictConfig, run_dir: Path) -> str:
    """``<recipe>/<overrides>``: the run directory relative to the runs folder."""
    try:
        return str(Path(run_dir).resolve().relative_to(Path(cfg.paths.runs_dir).resolve()))
    except ValueError:
        return Path(run_dir).name


@contextlib.contextmanager
def tracked_run(cfg: DictConfig, stage: str, run_dir: Path):
    """Open a W&B run for ``stage`` on the main process (yields None elsewhere or when tracking is off)."""
    from deita.distributed import env_dist

    if cfg.logger.backend != "wandb" or not env_dist().is_main:
        yield None
        return
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    label = run_label(cfg, run_dir)
    run = wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        group=cfg.logger.group or str(cfg.recipe_name),
        name=f"{label}/{stage}",
        job_type=stage,
        dir=str(run_dir),
        mode=cfg.logger.mode,
        config=OmegaConf.to_container(cfg, resolve=True),
        reinit="finish_previous",
    )
    try:
        yield run
    finally:
        run.finish()
