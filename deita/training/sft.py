"""The SFT stage: TRL ``SFTTrainer`` on the rows the select stage chose.

Reads top to bottom: config → data → tokenizer and model → trainer → train (resuming) → save and card.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from deita.training import common

log = logging.getLogger(__name__)


def messages_dataset(rows: list[dict]):
    """TRL's conversational dataset of canonical rows; a trailing unanswered user turn is left out
    (:func:`deita.data.formats.trainable_messages`), so it is neither trained on nor fed."""
    from datasets import Dataset

    from deita.data.formats import trainable_messages

    return Dataset.from_list([{"messages": trainable_messages(r["messages"])} for r in rows])


def run_sft_stage(cfg: DictConfig, ctx) -> dict:
    """Fine-tune ``cfg.model`` on ``<run_dir>/select/selected.jsonl``; write ``model/`` into the stage dir."""
    from trl import SFTConfig, SFTTrainer

    from deita.data.loading import read_jsonl
    from deita.models.resolve import resolve_model
    from deita.tracking import tracked_run

    node = cfg.sft
    # 1. Data: the selection, in selection order, as canonical messages.
    rows = read_jsonl(ctx.upstream["select"] / "selected.jsonl")
    train_rows, eval_rows = common.split_eval(rows, node.eval_fraction, cfg.seed)
    train_ds = messages_dataset(train_rows)
    eval_ds = messages_dataset(eval_rows) if eval_rows else None

    # 2. Tokenizer and model.
    model_path = resolve_model(cfg.model.name_or_path, cfg.paths.cache_dir)
    tokenizer = common.load_tokenizer(model_path, node.chat_template, cfg.model.trust_remote_code)
    model = common.load_model(model_path, cfg.model, node.peft)

    # 3. Trainer.
    args = SFTConfig(
        **common.stage_arguments(cfg, "sft", ctx, eval_enabled=eval_ds is not None),
        packing=node.packing,
        assistant_only_loss=node.assistant_only_loss,
    )
    with tracked_run(cfg, "sft", ctx.run_dir):
        trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, peft_config=common.peft_config(node.peft))
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
              **common.training_record(trainer, base_model=cfg.model.name_or_path, provenance=provenance)}
    if ctx.dist.is_main:
        common.write_model_card(model_dir, cfg, "sft", result)
    return result
