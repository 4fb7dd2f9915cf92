"""Plan mode: per stage, the data counts, estimated tokens, optimizer steps and GPU-hours. Loads no model.

Estimates, stated so they can be checked:

* tokens = characters / ``plan_options.chars_per_token`` (local data), or the source's
  ``approx_rows`` × ``approx_tokens_per_row`` (hub data that cannot be read offline); each training
  sequence is capped at the stage's ``max_length``;
* training FLOPs = 6 × params × tokens per epoch × epochs (forward + backward); scoring and embedding
  FLOPs = 2 × params × tokens (forward only); DPO adds 2 × params × tokens for the reference model;
* each stage's estimate is its ``plan`` hook (:mod:`deita.stages`), built from the helpers here;
* GPU-hours = FLOPs / (``gpu_tflops`` × 10¹² × ``mfu``) / 3600; wall hours divide by ``gpus``.

Plan mode runs no preflight (it checks no model reference), but it streams every local source it counts
with the source's own ``on_error``, so a data source the run would reject stops it with the run's error,
named by config key as preflight names it (:func:`source_stats`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from omegaconf import DictConfig

from deita.config import SelectionModels

DEFAULT_EPOCHS = 3  # transformers' TrainingArguments default
KNOWN_PARAMS_B = {
    SelectionModels.deita_complexity: 6.74,  # LLaMA-1-7B
    SelectionModels.deita_quality: 6.74,
    SelectionModels.superfilter: 0.124,  # GPT-2
}
"""Parameter counts (billions) of the default selection models whose names carry no size."""


@dataclass
class SourceStats:
    """Rows and total characters (or tokens) of the sources of one stage."""

    rows: int
    tokens: float
    exact: bool


def params_from_config(folder) -> float | None:
    """Parameters (billions) of a decoder-only transformer, counted from a local folder's ``config.json``
    (embeddings, attention with grouped KV heads, gated MLP, untied head); None when there is no such file
    or it lacks the usual fields. Reads one small JSON file: no torch, no model."""
    import json
    from pathlib import Path

    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        c = json.loads(path.read_text())
        hidden, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * hidden)
        heads = c.get("num_attention_heads", 1)
        kv = c.get("num_key_value_heads", heads)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    head_dim = c.get("head_dim") or hidden // heads
    attention = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings", False) else 2)
    return (layers * (attention + mlp) + embeddings) / 1e9


def params_billions(ref: str, explicit: float | None = None) -> float:
    """Parameter count of a model reference: explicit, else a known name, else counted from a local folder's
    config.json, else parsed from the name (``7b``, ``13B``, ``135m``); NaN when none of these tells."""
    if explicit:
        return float(explicit)
    if str(ref) in KNOWN_PARAMS_B:
        return KNOWN_PARAMS_B[str(ref)]
    counted = params_from_config(ref)
    if counted is not None:
        return counted
    ref = str(ref).lower()
    if ref.startswith("tiny:"):
        return 0.0002
    if ref == "packaged:smollm2":
        return 0.135
    if ref == "packaged:minilm":
        return 0.0227
    match = re.search(r"(\d+(?:\.\d+)?)\s*([bm])\b", ref.replace("-", " ").replace("_", " "))
    if not match:
        return float("nan")
    value = float(match.group(1))
    return value if match.group(2) == "b" else value / 1000


def _text_chars(row: dict) -> int:
    if "messages" in row:
        return sum(len(m["content"]) for m in row["messages"])
    return sum(_text_chars({"messages": row[k]}) for k in ("prompt", "chosen", "rejected") if k in row)


def source_stats(sources, kind: str, chars_per_token: float, key: str = "data.pool") -> SourceStats:
    """Count rows and estimate tokens of ``sources``, the list under config key ``key`` (reads local files;
    trusts hints for hub data). Each local file is streamed whole as the run reads it (the source's
    ``on_error``): a missing file or a bad record is the run's error, named as preflight names it
    (:func:`deita.preflight.naming_source`: ``data.pool[0].path: FILE: record 3 ...``), and a local path that
    does not exist is reported so, not taken for a hub source of 0 rows. A source that is no local path
    (a hub name, or a typo'd relative path without a data suffix) needs both hints, or it would count as 0
    rows: a :class:`deita.preflight.SourceError` naming the keys to set otherwise."""
    from deita.data.loading import RowStream
    from deita.data.readers import looks_local
    from deita.data.sources import reader_args
    from deita.preflight import SourceError, naming_source

    local, hub = [], []
    for i, src in enumerate(sources):
        (local if looks_local(str(src.path)) else hub).append((i, src))
    rows, chars = 0, 0
    for i, src in local:  # streamed: a pool of millions of rows is counted without holding its rows
        with naming_source(f"{key}[{i}].path", src):
            path, args = reader_args(src)
            for row in RowStream(path, kind, **args):
                rows, chars = rows + 1, chars + _text_chars(row)
    tokens = chars / chars_per_token
    for i, src in hub:  # cannot be read offline: trust the hints
        if src.approx_rows is None or src.approx_tokens_per_row is None:
            where = f"{key}[{i}]"
            raise SourceError(f"{where}.path: {src.path}: no such local file or folder; as a hub dataset plan mode "
                              f"does not read it: set {where}.approx_rows and {where}.approx_tokens_per_row to plan "
                              "with it", str(src.path))
        n = src.approx_rows
        n = min(n, src.limit) if src.limit else n
        rows += n
        tokens += n * src.approx_tokens_per_row
    return SourceStats(rows, tokens, exact=not hub)


def gpu_hours(flops: float, opts) -> float:
    """GPU-hours for ``flops`` at the configured peak and MFU."""
    return flops / (opts.gpu_tflops * 1e12 * opts.mfu) / 3600


@dataclass
class PoolPlan:
    """The pool as plan mode reads it, and how many rows the select stage keeps (what SFT trains on)."""

    stats: SourceStats
    selected: int

    @property
    def tokens_per_row(self) -> float:
        """Mean estimated tokens of a pool row."""
        return self.stats.tokens / self.stats.rows if self.stats.rows else 0.0


def training_estimate(cfg: DictConfig, stage: str, *, rows: int, tokens_per_row: float,
                      flops_per_token: float) -> dict:
    """Plan entry of a training stage: ``rows`` sequences of ``tokens_per_row`` tokens for the epochs of
    ``cfg.<stage>.args``, ``flops_per_token`` FLOPs per parameter and token (6: forward and backward)."""
    opts, node = cfg.plan_options, cfg[stage]
    params = params_billions(cfg.model.name_or_path, cfg.model.params_billions)
    epochs = float(node.args.get("num_train_epochs", DEFAULT_EPOCHS))
    steps_per_epoch = math.ceil(rows / node.global_batch_size) if rows else 0
    grad_accum = node.global_batch_size / (node.per_device_batch_size * opts.gpus)
    tokens = rows * tokens_per_row * epochs
    flops = flops_per_token * params * 1e9 * tokens
    return {"rows": rows, "tokens": tokens, "epochs": epochs, "optimizer_steps": int(math.ceil(steps_per_epoch * epochs)),
            "grad_accum_at_gpus": grad_accum, "params_b": params, "flops": flops, "gpu_hours": gpu_hours(flops, opts),
            "notes": f"{epochs:g} epochs, {params:g}B params, grad accum {grad_accum:g} at {opts.gpus} GPUs"}


def preference_estimate(cfg: DictConfig, stage: str, *, flops_per_token: float) -> dict:
    """Plan entry of a preference stage: the (sampled) pairs of ``data.preference``, each chosen plus
    rejected sequence capped at ``max_length``."""
    opts, node = cfg.plan_options, cfg[stage]
    pref = source_stats(cfg.data.preference, "preference", opts.chars_per_token, "data.preference")
    rows = min(pref.rows, cfg.data.preference_sample or pref.rows)
    per_pair = min(pref.tokens / pref.rows if pref.rows else 0.0, 2 * node.max_length)
    estimate = training_estimate(cfg, stage, rows=rows, tokens_per_row=per_pair, flops_per_token=flops_per_token)
    return {**estimate, "exact_counts": pref.exact}


def build_plan(cfg: DictConfig) -> list[dict]:
    """One entry per stage in ``cfg.stages`` that estimates its cost: rows, tokens, steps, FLOPs, GPU-hours."""
    from deita import stages

    opts = cfg.plan_options
    stats = source_stats(cfg.data.pool, "sft", opts.chars_per_token, "data.pool")
    budget = stats.rows if cfg.selection.budget < 0 else min(cfg.selection.budget, stats.rows or cfg.selection.budget)
    pool = PoolPlan(stats, budget)
    return [{"stage": stage.name, **stage.plan(cfg, pool)} for stage in stages.in_pipeline_order(cfg.stages)
            if stage.plan is not None]


def format_plan(cfg: DictConfig, plan: list[dict]) -> str:
    """The plan as a readable table."""
    opts = cfg.plan_options
    lines = [f"Plan for recipe={cfg.recipe_name}: {opts.gpus} GPU(s) at {opts.gpu_tflops:g} TFLOP/s peak, "
             f"MFU {opts.mfu:g}; tokens ≈ chars / {opts.chars_per_token:g}", ""]
    header = f"{'stage':<7} {'rows':>9} {'tokens':>12} {'steps':>7} {'GPU-hours':>10} {'wall h':>8}  notes"
    lines += [header, "-" * len(header)]
    for e in plan:
        steps = e.get("optimizer_steps", "")
        notes = e["notes"] + (" (hub data: counts from approx_rows hints)" if e.get("exact_counts") is False else "")
        hours, wall = (f"{e['gpu_hours']:.2f}", f"{e['gpu_hours'] / opts.gpus:.2f}") if e["gpu_hours"] == e["gpu_hours"] \
            else ("?", "?")
        lines.append(f"{e['stage']:<7} {e['rows']:>9,} {e['tokens']:>12,.0f} {steps!s:>7} {hours:>10} {wall:>8}  {notes}")
    known = [e["gpu_hours"] for e in plan if e["gpu_hours"] == e["gpu_hours"]]
    total = sum(known)
    lines += ["", f"total ≈ {total:.2f} GPU-hours ({total / opts.gpus:.2f} h wall on {opts.gpus} GPU(s))"]
    if len(known) < len(plan):
        lines.append("? = a model's size is unknown (no config.json, no size in its name): set model.params_billions "
                     "for the policy; the total leaves those stages out")
    return "\n".join(lines)


def print_plan(cfg: DictConfig) -> list[dict]:
    """Print the plan for ``cfg`` and return it."""
    plan = build_plan(cfg)
    print(format_plan(cfg, plan))
    return plan
