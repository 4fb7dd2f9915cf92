"""The DPO stage: TRL ``DPOTrainer`` from the SFT model, on canonical preference pairs.

The reference model is the SFT model itself (TRL keeps a frozen copy, or its log-probs when
``dpo.precompute_ref_log_probs`` is on). The train sequence is :func:`deita.training.preference.train_on_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from omegaconf import DictConfig

from deita.config import TrainConfig
from deita.stages import Stage, register
from deita.validate import require


@dataclass
class DPOStageConfig(TrainConfig):
    """Direct preference optimisation from the SFT model (config group ``dpo``)."""

    beta: float = 0.1
    """DPO temperature beta."""
    loss_type: List[str] = field(default_factory=lambda: ["sigmoid"])
    """TRL loss types (sigmoid = the original DPO loss)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference model's log-probs once up front instead of keeping it in memory."""


def run_dpo_stage(cfg: DictConfig, ctx) -> dict:
    """Train DPO from ``<run_dir>/sft/model``; write ``model/`` into the stage dir."""
    from trl import DPOConfig, DPOTrainer

    from deita.training.preference import train_on_pairs

    node = cfg.dpo
    return train_on_pairs(cfg, ctx, config_class=DPOConfig, trainer_class=DPOTrainer,
                          method_args={"beta": node.beta, "loss_type": list(node.loss_type),
                                       "precompute_ref_log_probs": node.precompute_ref_log_probs})


def check_dpo(cfg: DictConfig) -> None:
    """beta must be positive."""
    require(cfg.dpo.beta > 0, "dpo.beta", f"must be positive, got {cfg.dpo.beta}")


def plan_dpo(cfg: DictConfig, pool) -> dict:
    """Pairs forward and backward, plus a forward of the reference model unless its log-probs are precomputed."""
    from deita.plan import preference_estimate

    return preference_estimate(cfg, "dpo", flops_per_token=6 + (0 if cfg.dpo.precompute_ref_log_probs else 2))


STAGE = register(Stage(
    name="dpo",
    run=run_dpo_stage,
    summary="DPO from the SFT model on `data.preference` (TRL `DPOTrainer`); writes `dpo/model/`.",
    requires=("sft",),
    produces_model=True,
    trainer_args="trl.DPOConfig",
    config=DPOStageConfig,
    config_keys=("data.preference", "data.preference_sample", "data.sample_seed", "seed"),
    data_keys=("data.preference",),
    data_kind="preference",
    check=check_dpo,
    plan=plan_dpo,
))
