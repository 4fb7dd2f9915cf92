"""The DPO stage: TRL ``DPOTrainer`` from the SFT model, on canonical preference pairs.

The reference model is the SFT model itself (TRL keeps a frozen copy, or its log-probs when
``dpo.precompute_ref_log_probs`` is on).
"""

from __future__ import annotations

import logging
import random

from omegaconf import DictConfig

from deita.training import common

log = logging.getLogger(__name__)


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


def run_dpo_stage(cfg: DictConfig, ctx) -> dict:
    """Train DPO from ``<run_dir>/sft/model``; write ``model/`` into the stage dir."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from deita.tracking import tracked_run

    node = cfg.dpo
    # 1. Data: canonical pairs (prompt / chosen / rejected message lists).
    pairs, skipped = load_preference_rows(cfg)
    train_rows, eval_rows = common.split_eval(pairs, node.eval_fraction, cfg.seed)
    as_ds = lambda rs: Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rs])
    train_ds, eval_ds = as_ds(train_rows), (as_ds(eval_rows) if eval_rows else None)

    # 2. Tokenizer and model: the SFT artifact.
    sft_model = str(ctx.upstream["sft"] / "model")
    tokenizer = common.load_tokenizer(sft_model, node.chat_template, cfg.model.trust_remote_code)
    model = common.load_model(sft_model, cfg.model, node.peft)

    # 3. Trainer.
    args = DPOConfig(
        **common.stage_arguments(cfg, "dpo", ctx, eval_enabled=eval_ds is not None),
        beta=node.beta,
        loss_type=list(node.loss_type),
        precompute_ref_log_probs=node.precompute_ref_log_probs,
    )
    with tracked_run(cfg, "dpo", ctx.run_dir):
        trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=common.peft_config(node.peft))
        trained_pairs = common.rows_kept(trainer, len(train_rows), "preference pairs")
        # 4. Train, resuming from the last checkpoint of an interrupted run.
        metrics = common.fit(trainer, node, ctx.work_dir, evaluate=eval_ds is not None)

    # 5. Save the model, tokenizer and its card.
    model_dir = common.save_final_model(trainer, tokenizer, ctx.work_dir, ctx.dist.is_main)
    provenance = {"sft_fingerprint": ctx.upstream_manifests["sft"]["fingerprint"],
                  "preference_sources": [str(s.path) for s in cfg.data.preference], "pairs": len(pairs)}
    result = {"train_pairs": len(train_rows), "trained_pairs": trained_pairs, "eval_pairs": len(eval_rows),
              "skipped_records": skipped, "metrics": metrics,
              "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "distributed_type": str(trainer.accelerator.distributed_type),
              **common.training_record(trainer, base_model=sft_model, base_stage="sft", provenance=provenance)}
    if ctx.dist.is_main:
        common.write_model_card(model_dir, cfg, "dpo", result)
    return result
