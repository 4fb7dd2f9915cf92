"""The ORPO stage: TRL's ``ORPOTrainer`` on the preference pairs, from the SFT model when the sft stage is
upstream (in ``stages`` or finished), else from the base model ``model.name_or_path``.

ORPO (Hong et al., 2024) needs no reference model: its loss is the chosen answer's NLL plus ``beta`` times
an odds-ratio term that prefers the chosen answer over the rejected one, so it can align a base model in
one stage. TRL 1.x ships it under ``trl.experimental.orpo``. The train sequence is
:func:`deita.training.preference.train_on_pairs`.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from deita.config import TrainConfig
from deita.stages import Stage, register
from deita.validate import require


@dataclass
class ORPOStageConfig(TrainConfig):
    """Odds-ratio preference optimisation, from the SFT model or the base model (config group ``orpo``)."""

    beta: float = 0.1
    """Weight of the odds-ratio term against the chosen answers' NLL (λ in the ORPO paper)."""


def run_orpo_stage(cfg: DictConfig, ctx) -> dict:
    """Train ORPO from ``<run_dir>/sft/model`` (or the base model); write ``model/`` into the stage dir."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from deita.training.preference import train_on_pairs

    return train_on_pairs(cfg, ctx, config_class=ORPOConfig, trainer_class=ORPOTrainer,
                          method_args={"beta": cfg.orpo.beta})


def check_orpo(cfg: DictConfig) -> None:
    """beta must be positive."""
    require(cfg.orpo.beta > 0, "orpo.beta", f"must be positive, got {cfg.orpo.beta}")


def plan_orpo(cfg: DictConfig, pool) -> dict:
    """Pairs forward and backward; no reference model."""
    from deita.plan import preference_estimate

    return preference_estimate(cfg, "orpo", flops_per_token=6)


STAGE = register(Stage(
    name="orpo",
    run=run_orpo_stage,
    summary="ORPO on `data.preference` from the SFT model when `sft` is there, else from `model` "
            "(TRL `ORPOTrainer`, no reference model); writes `orpo/model/`.",
    optional=("sft",),
    produces_model=True,
    trainer_args="trl.experimental.orpo.ORPOConfig",
    config=ORPOStageConfig,
    config_keys=("model", "data.preference", "data.preference_sample", "data.sample_seed", "seed"),
    data_keys=("data.preference",),
    data_kind="preference",
    model_refs=lambda cfg: {"model.name_or_path": cfg.model.name_or_path},
    check=check_orpo,
    plan=plan_orpo,
))
