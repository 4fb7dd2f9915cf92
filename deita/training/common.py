"""What the training stages share: batch arithmetic, TRL arguments, the starting model, model and tokenizer
loading, resume, model card."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def gradient_accumulation_steps(global_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Steps to accumulate so that one optimizer step sees exactly ``global_batch_size`` sequences."""
    per_step = per_device_batch_size * world_size
    if global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size {global_batch_size} is not divisible by per_device_batch_size "
            f"{per_device_batch_size} × world_size {world_size} = {per_step}; change one of them"
        )
    return global_batch_size // per_step


def has_accelerator() -> bool:
    """True when a CUDA device is visible."""
    import torch

    return torch.cuda.is_available()


def trainer_arguments(node: DictConfig, out_dir: Path, *, world_size: int, seed: int, report_to: str,
                      run_name: str, eval_enabled: bool) -> dict[str, Any]:
    """Keyword arguments for TRL's ``SFTConfig``/``DPOConfig`` built from a stage config node.

    ``node.args`` wins over our defaults. On a machine without CUDA, bf16 and gradient checkpointing
    are turned off (TRL defaults both on, and bf16 fails on CPU) and multi-process runs use gloo.
    """
    user_args = OmegaConf.to_container(node.args, resolve=True) or {}
    kwargs: dict[str, Any] = {
        "output_dir": str(out_dir / "checkpoints"),
        "per_device_train_batch_size": node.per_device_batch_size,
        "per_device_eval_batch_size": node.per_device_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(
            node.global_batch_size, node.per_device_batch_size, world_size),
        "max_length": node.max_length,
        "seed": seed,
        "report_to": report_to,
        "run_name": run_name,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
        "logging_first_step": True,
        "disable_tqdm": False,
    }
    if eval_enabled:
        kwargs["eval_strategy"] = "epoch"
    kwargs.update(user_args)
    if not has_accelerator():
        for key in ("bf16", "fp16", "gradient_checkpointing"):
            if kwargs.get(key):
                log.warning("no CUDA device: turning %s off", key)
        kwargs.update(bf16=False, fp16=False, gradient_checkpointing=False)
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
            kwargs.setdefault("ddp_backend", "gloo")  # DeepSpeed on CPU; use_cpu would silently drop DeepSpeed
        else:
            kwargs["use_cpu"] = True
            if world_size > 1:
                kwargs.setdefault("ddp_backend", "gloo")
    return kwargs


def load_tokenizer(path: str, chat_template: str, trust_remote_code: bool = False):
    """The tokenizer with the configured chat template and a pad token."""
    from transformers import AutoTokenizer

    from deita.data.templates import apply_template
    from deita.models.loading import ensure_pad_token

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template != "tokenizer":
        apply_template(tok, chat_template)
    return ensure_pad_token(tok)


def load_model(path: str, model_cfg: DictConfig, peft: DictConfig):
    """The causal LM to train, in the configured dtype (4-bit for QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    from deita.models.loading import resolve_dtype

    kwargs: dict[str, Any] = {"dtype": resolve_dtype(model_cfg.dtype, allow_auto=True), "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if peft.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def peft_config(peft: DictConfig):
    """A PEFT ``LoraConfig`` when LoRA/QLoRA is on, else None."""
    if not peft.enabled:
        if peft.load_in_4bit:
            raise ValueError("config key 'peft.load_in_4bit': QLoRA needs peft.enabled=true")
        return None
    from peft import LoraConfig

    targets = list(peft.target_modules)
    return LoraConfig(r=peft.r, lora_alpha=peft.alpha, lora_dropout=peft.dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules="all-linear" if targets == ["all-linear"] else targets)


def last_checkpoint(out_dir: Path, resume: bool, *, is_main: bool = True) -> str | None:
    """The newest complete ``checkpoint-N`` folder of an interrupted run, when resuming is on; incomplete
    newer ones are skipped, said and removed (:mod:`deita.training.checkpoints`)."""
    from deita.training.checkpoints import resumable_checkpoint

    if not resume:
        return None
    found = resumable_checkpoint(out_dir / "checkpoints", is_main=is_main)
    if found:
        log.info("resuming from %s", found)
    return str(found) if found else None


def split_eval(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded train/eval split; ``fraction`` 0 gives no eval rows."""
    if fraction <= 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(rows) * fraction)))
    eval_idx = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in eval_idx], [r for i, r in enumerate(rows) if i in eval_idx]


def save_final_model(trainer, tokenizer, out_dir: Path, is_main: bool) -> Path:
    """Save the trained model (LoRA adapters merged into the base) and tokenizer to ``out_dir/model``."""
    model_dir = out_dir / "model"
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        if is_main:
            model.save_pretrained(model_dir)
    else:
        trainer.save_model(str(model_dir))
    if is_main:
        tokenizer.save_pretrained(model_dir)
        # Checkpoints only serve resuming an unfinished stage; a finished one keeps just the final model.
        import shutil

        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return model_dir


def stage_arguments(cfg: DictConfig, stage: str, ctx, *, eval_enabled: bool) -> dict[str, Any]:
    """:func:`trainer_arguments` for stage ``stage`` of ``cfg``: tracking, run name, world size, seed."""
    from deita.tracking import run_label

    return trainer_arguments(cfg[stage], ctx.work_dir, world_size=ctx.dist.world_size, seed=cfg.seed,
                             report_to="wandb" if cfg.logger.backend == "wandb" else "none",
                             run_name=f"{run_label(cfg, ctx.run_dir)}/{stage}", eval_enabled=eval_enabled)


def fit(trainer, node: DictConfig, out_dir: Path, *, evaluate: bool) -> dict[str, float]:
    """Train (resuming from the last checkpoint of an interrupted run), then return the final metrics."""
    trainer.train(resume_from_checkpoint=last_checkpoint(out_dir, node.resume, is_main=trainer.is_world_process_zero()))
    metrics = final_metrics(trainer)
    if evaluate:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if k == "eval_loss"})
    return metrics


def rows_kept(trainer, n_rows: int, what: str) -> int:
    """Rows TRL kept after its own filters (prompt longer than max_length, nothing to learn); warns on a drop."""
    kept = len(trainer.train_dataset)
    if kept < n_rows:
        log.warning("TRL dropped %d of %d %s (prompt fills max_length or no loss tokens); training on %d",
                    n_rows - kept, n_rows, what, kept)
    return kept


LAST_LOGGED = ("train_loss", "eval_loss", "rewards/accuracies", "rewards/margins")
"""Metrics whose last logged value a training stage records (the preference ones when TRL logs them)."""


def final_metrics(trainer) -> dict[str, float]:
    """From the trainer's log history: the first and last logged train loss, and the last value of each
    :data:`LAST_LOGGED` metric that was logged."""
    metrics: dict[str, float] = {}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            metrics.setdefault("first_logged_loss", float(entry["loss"]))
            metrics["last_logged_loss"] = float(entry["loss"])
        for key in LAST_LOGGED:
            if key in entry:
                metrics[key] = float(entry[key])
    metrics["global_steps"] = int(trainer.state.global_step)
    return metrics


def training_record(trainer, *, base_model: str, provenance: dict, base_stage: str | None = None) -> dict:
    """What a training stage records in its manifest for its model card: the trainer, the model it started
    from (``base_stage``: the upstream stage whose model that is), TRL's hyperparameters, the data's origin."""
    from transformers.modelcard import extract_hyperparameters_from_trainer

    return {"trainer": type(trainer).__name__, "base_model": str(base_model), "base_stage": base_stage,
            "hyperparameters": extract_hyperparameters_from_trainer(trainer), "provenance": provenance}


def write_model_card(model_dir: Path, cfg: DictConfig, stage: str, record: dict) -> None:
    """``model_dir/README.md``: the model card of ``record`` (the stage's result, see :func:`training_record`),
    built by :func:`deita.hub.cards.model_card`; a push rebuilds it with the Hub repo names."""
    from deita.hub.cards import model_card
    from deita.models.resolve import hub_model_id
    from deita.pipeline import package_versions

    base_model_id = None if record.get("base_stage") else hub_model_id(record["base_model"])
    card = model_card(stage=stage, record=record, config=OmegaConf.to_container(cfg, resolve=True),
                      versions=package_versions(), base_model_id=base_model_id)
    card.save(model_dir / "README.md")


class StartingModel(NamedTuple):
    """The model a training stage starts from."""

    path: str
    """Folder to load."""
    name: str
    """What the model card calls it: the upstream model folder, or ``model.name_or_path`` as configured."""
    stage: str | None
    """The upstream stage whose model it is; None for the base model."""
    provenance: dict
    """What the model card records about it (the upstream stage's fingerprint; nothing for the base model)."""


def starting_model(cfg: DictConfig, ctx) -> StartingModel:
    """The model of the stage's last upstream stage that produces one (e.g. ``sft/model``), else the base
    model ``model.name_or_path``."""
    from deita import stages

    upstream_models = [name for name in stages.model_stages() if name in ctx.upstream]
    if upstream_models:
        name = upstream_models[-1]
        path = str(ctx.upstream[name] / "model")
        return StartingModel(path, path, name, {f"{name}_fingerprint": ctx.upstream_manifests[name]["fingerprint"]})
    from deita.models.resolve import resolve_model

    base = str(cfg.model.name_or_path)
    return StartingModel(resolve_model(base, cfg.paths.cache_dir), base, None, {})
