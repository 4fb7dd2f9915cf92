"""The SFT stage: TRL ``SFTTrainer`` on the rows the select stage chose.

Reads top to bottom: config → data → tokenizer and model → trainer → train (resuming) → save and card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from deita.config import TrainConfig
from deita.stages import Stage, register
from deita.training import common

log = logging.getLogger(__name__)


@dataclass
class SFTStageConfig(TrainConfig):
    """Supervised fine-tuning on the selected rows (config group ``sft``)."""

    packing: bool = False
    """Pack several conversations into each sequence."""
    assistant_only_loss: bool = True
    """Put loss on assistant tokens only (needs ``{% generation %}`` markers in the template)."""
    token_metrics: bool = False
    """Log TRL's per-token ``entropy`` and ``mean_token_accuracy``. Off, the fused LM head computes only the
    log-probs of the loss, in smaller vocabulary tiles: same loss, less peak memory
    (:mod:`deita.training.lean_sft`; measured in BENCHMARKS.md)."""


def messages_dataset(rows: list[dict]):
    """TRL's conversational dataset of canonical rows; a trailing unanswered user turn is left out
    (:func:`deita.data.formats.trainable_messages`), so it is neither trained on nor fed.

    When a row carries the Alpaca instruction/input split, every row gets a ``chat_template_kwargs`` column
    (``alpaca_split``: the split, or null), which TRL hands to the chat template: the ``alpaca`` template
    renders the reference prompt with its ``### Input:`` block from it; other templates ignore it."""
    from datasets import Dataset

    from deita.data.formats import trainable_messages
    from deita.data.templates import template_kwargs

    records = [{"messages": trainable_messages(r["messages"])} for r in rows]
    extra = [template_kwargs(r) for r in rows]
    if any(extra):
        for record, kwargs in zip(records, extra):
            record["chat_template_kwargs"] = {"alpaca_split": kwargs.get("alpaca_split")}
    return Dataset.from_list(records)


def run_sft_stage(cfg: DictConfig, ctx) -> dict:
    """Fine-tune ``cfg.model`` on ``<run_dir>/select/selected.jsonl``; write ``model/`` into the stage dir."""
    from trl import SFTConfig

    from deita.console import training_progress
    from deita.data.readers import read_jsonl
    from deita.tracking import tracked_run
    from deita.training.lean_sft import sft_trainer_class

    node = cfg.sft
    # 1. Data: the selection, in selection order, as canonical messages.
    rows = read_jsonl(ctx.upstream["select"] / "selected.jsonl")
    train_rows, eval_rows = common.split_eval(rows, node.eval_fraction, cfg.seed)
    train_ds = messages_dataset(train_rows)
    eval_ds = messages_dataset(eval_rows) if eval_rows else None

    # 2. Tokenizer and model.
    start = common.starting_model(cfg, ctx)
    tokenizer = common.load_tokenizer(start.path, node.chat_template, cfg.model.trust_remote_code)
    model = common.load_model(start.path, cfg.model, node.peft)

    # 3. Trainer.
    args = SFTConfig(
        **common.stage_arguments(cfg, "sft", ctx, eval_enabled=eval_ds is not None),
        packing=node.packing,
        assistant_only_loss=node.assistant_only_loss,
    )
    with tracked_run(cfg, "sft", ctx.run_dir):
        trainer = sft_trainer_class(lean=not node.token_metrics)(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            peft_config=common.peft_config(node.peft))
        training_progress(trainer, "sft", bool(cfg.get("verbose", False)))
        # (packed, the dataset holds sequences rather than rows)
        trained_rows = len(train_rows) if node.packing else common.rows_kept(trainer, len(train_rows), "rows")
        # 4. Train, resuming from the last checkpoint of an interrupted run.
        metrics = common.fit(trainer, node, ctx.work_dir, evaluate=eval_ds is not None)

    # 5. Save the model, tokenizer and a model card that says where the data came from.
    model_dir = common.save_final_model(trainer, tokenizer, ctx.work_dir, ctx.dist.is_main)
    select_manifest = ctx.upstream_manifests["select"]
    provenance = {
        "selection_fingerprint": select_manifest["fingerprint"],
        "selection_method": select_manifest["config"]["selection"],
        "pool": select_manifest["inputs"]["data"],
        "selected_rows": select_manifest.get("selected_rows"),
    }
    result = {"train_rows": len(train_rows), "trained_rows": trained_rows, "eval_rows": len(eval_rows),
              "metrics": metrics, "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "distributed_type": str(trainer.accelerator.distributed_type),
              **common.training_record(trainer, base_model=start.name, base_stage=start.stage,
                                       provenance={**start.provenance, **provenance})}
    if ctx.dist.is_main:
        common.write_model_card(model_dir, cfg, "sft", result)
    return result


def plan_sft(cfg: DictConfig, pool) -> dict:
    """The selected rows, each capped at ``sft.max_length`` tokens, forward and backward."""
    from deita.plan import training_estimate

    estimate = training_estimate(cfg, "sft", rows=pool.selected, tokens_per_row=min(pool.tokens_per_row, cfg.sft.max_length),
                                 flops_per_token=6)
    if cfg.selection.budget < 0:
        estimate["notes"] += "; budget -1: every pool row, an upper bound for thresholded methods"
    return estimate


STAGE = register(Stage(
    name="sft",
    run=run_sft_stage,
    summary="Fine-tunes `model` on the selected rows (TRL `SFTTrainer`); writes `sft/model/`.",
    requires=("select",),
    produces_model=True,
    trainer_args="trl.SFTConfig",
    config=SFTStageConfig,
    config_keys=("model", "seed"),
    model_refs=lambda cfg: {"model.name_or_path": cfg.model.name_or_path},
    plan=plan_sft,
))
