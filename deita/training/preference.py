"""What the preference stages (DPO, ORPO, ...) share: the pairs they train on and the whole train sequence.

A preference stage differs from another only in TRL's config and trainer classes, its method's arguments
and the model it starts from; :func:`train_on_pairs` does the rest, top to bottom: pairs → tokenizer and
model → trainer → train (resuming) → save and card.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from omegaconf import DictConfig

from deita.training import common

log = logging.getLogger(__name__)

PAIR_KEYS = ("prompt", "chosen", "rejected")


def sample_pairs(rows: list[dict], k: int | None, seed: int) -> list[dict]:
    """The DEITA reference's draw: ``random.seed(seed); random.sample(range(N), k)``, in draw order."""
    if k is None or k >= len(rows):
        return rows
    rng = random.Random(seed)
    return [rows[i] for i in rng.sample(range(len(rows)), k)]


def load_preference_rows(cfg: DictConfig) -> tuple[list[dict], int]:
    """Concatenate the preference sources into canonical pairs, then apply the configured sample."""
    from deita.data.sources import load_sources

    loaded = load_sources(cfg.data.preference, "preference")
    return sample_pairs(loaded.rows, cfg.data.preference_sample, cfg.data.sample_seed), loaded.skipped


def train_on_pairs(cfg: DictConfig, ctx, *, config_class: type, trainer_class: type,
                   method_args: dict[str, Any]) -> dict:
    """Train stage ``ctx.name`` with TRL's ``trainer_class`` on ``cfg.data.preference``; write ``model/``.

    ``config_class`` (e.g. ``DPOConfig``) gets the stage's trainer arguments plus ``method_args``. The
    stage starts from the model :func:`deita.training.common.starting_model` picks.
    """
    from datasets import Dataset

    from deita.console import training_progress
    from deita.tracking import tracked_run

    name, node = ctx.name, cfg[ctx.name]
    # 1. Data: canonical pairs (prompt / chosen / rejected message lists).
    pairs, skipped = load_preference_rows(cfg)
    train_rows, eval_rows = common.split_eval(pairs, node.eval_fraction, cfg.seed)
    as_ds = lambda rs: Dataset.from_list([{k: r[k] for k in PAIR_KEYS} for r in rs])  # noqa: E731
    train_ds, eval_ds = as_ds(train_rows), (as_ds(eval_rows) if eval_rows else None)

    # 2. Tokenizer and model.
    start = common.starting_model(cfg, ctx)
    tokenizer = common.load_tokenizer(start.path, node.chat_template, cfg.model.trust_remote_code)
    model = common.load_model(start.path, cfg.model, node.peft)

    # 3. Trainer.
    args = config_class(**common.stage_arguments(cfg, name, ctx, eval_enabled=eval_ds is not None), **method_args)
    with tracked_run(cfg, name, ctx.run_dir):
        trainer = trainer_class(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                processing_class=tokenizer, peft_config=common.peft_config(node.peft))
        training_progress(trainer, name, bool(cfg.get("verbose", False)))
        trained_pairs = common.rows_kept(trainer, len(train_rows), "preference pairs")
        # 4. Train, resuming from the last checkpoint of an interrupted run.
        metrics = common.fit(trainer, node, ctx.work_dir, evaluate=eval_ds is not None)

    # 5. Save the model, tokenizer and its card.
    model_dir = common.save_final_model(trainer, tokenizer, ctx.work_dir, ctx.dist.is_main)
    provenance = {**start.provenance, "preference_sources": [str(s.path) for s in cfg.data.preference],
                  "pairs": len(pairs)}
    result = {"train_pairs": len(train_rows), "trained_pairs": trained_pairs, "eval_pairs": len(eval_rows),
              "skipped_records": skipped, "metrics": metrics,
              "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "distributed_type": str(trainer.accelerator.distributed_type),
              **common.training_record(trainer, base_model=start.name, base_stage=start.stage, provenance=provenance)}
    if ctx.dist.is_main:
        common.write_model_card(model_dir, cfg, name, result)
    return result
