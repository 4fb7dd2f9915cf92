"""Checks that need more than a type: run right after composition, before any data or model loads."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for config key ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def require_range(value, key: str, *, gt=None, ge=None, lt=None, le=None, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``value`` lies in the interval the bounds give
    (``gt=0, le=1``: (0, 1]); ``None`` passes only with ``allow_none``."""
    if value is None and allow_none:
        return
    low = f"({gt}" if gt is not None else f"[{ge}" if ge is not None else "(-inf"
    high = f"{lt})" if lt is not None else f"{le}]" if le is not None else "inf)"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and (
        (gt is None or value > gt) and (ge is None or value >= ge) and (lt is None or value < lt) and (le is None or value <= le))
    require(ok, key, f"must be in {low}, {high}{' or null' if allow_none else ''}, got {value!r}")


def require_choice(value, key: str, choices) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``value`` is one of ``choices``."""
    require(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value cannot work: keys the schema lacks
    (:mod:`deita.strict`), out-of-range values, trainer arguments TRL lacks (:mod:`deita.trl_args`), and
    each stage's and the selection method's own checks."""
    from deita import stages
    from deita.selection.base import SELECTORS
    from deita.strict import check_known_keys

    check_known_keys(cfg)

    names = list(cfg.stages)
    known = stages.names()
    for name in names:
        require(name in known, "stages", f"unknown stage {name!r}; stages are {known}")
    require(len(set(names)) == len(names), "stages", f"a stage is listed twice: {names}")
    sel = cfg.selection
    require(sel.method in SELECTORS, "selection.method", f"unknown method {sel.method!r}; known: {SELECTORS.names()}")
    require(sel.budget == -1 or sel.budget > 0, "selection.budget", f"must be a positive row count or -1 (all), got {sel.budget}")
    require(sel.on_error in ("raise", "nan"), "selection.on_error", f"must be 'raise' or 'nan', got {sel.on_error!r}")
    require_range(sel.chunk_rows, "selection.chunk_rows", ge=1)
    SELECTORS.get(sel.method).check(sel)
    for group in ("pool", "preference", "eval_prompts"):
        for i, src in enumerate(cfg.data[group]):
            require(src.on_error in ("raise", "skip"), f"data.{group}[{i}].on_error", f"must be 'raise' or 'skip', got {src.on_error!r}")
            require(src.limit is None or src.limit > 0, f"data.{group}[{i}].limit", f"must be positive or null, got {src.limit}")
    _check_source_formats(cfg)
    for stage in stages.in_pipeline_order(names):
        for key in () if stage.data_optional else stage.data_keys:
            require(len(OmegaConf.select(cfg, key) or []) > 0, key, f"the {stage.name} stage needs at least one source")
    require_range(cfg.data.preference_sample, "data.preference_sample", gt=0, allow_none=True)
    require_choice(cfg.data.pool_store, "data.pool_store", ["arrow", "memory"])
    for stage in stages.pipeline_order():
        if stage.trainer_args:  # names first: a typo is reported as a typo, not as a bad value
            from deita.trl_args import check_args

            own = [f.name for f in dataclasses.fields(stage.config)] if dataclasses.is_dataclass(stage.config) else []
            check_args(OmegaConf.to_container(cfg[stage.name].args, resolve=True) or {}, stage.trainer_args,
                       f"{stage.name}.args", own=own)
        if _is_training_node(stage.config):
            _check_training_node(cfg[stage.name], stage.name)
        if stage.check is not None:
            stage.check(cfg)
    _check_root_nodes(cfg)
    require(cfg.logger.backend in ("none", "wandb"), "logger.backend", f"must be 'none' or 'wandb', got {cfg.logger.backend!r}")
    require(cfg.logger.mode in ("online", "offline", "disabled"), "logger.mode", f"must be online, offline or disabled, got {cfg.logger.mode!r}")
    require(cfg.launch.timeout_minutes > 0, "launch.timeout_minutes", f"must be positive, got {cfg.launch.timeout_minutes}")


def _check_source_formats(cfg: DictConfig) -> None:
    """Each data source's ``format`` is ``auto`` or a registered format giving the rows its list's stage reads
    (``data.pool``: sft, ``data.preference``: preference, ``data.eval_prompts``: prompts)."""
    from deita import stages
    from deita.data import formats_reference  # noqa: F401  (registers the opt-in reference formats)
    from deita.data.formats import FORMATS

    for stage in stages.pipeline_order():
        names = [n for n in FORMATS.names() if FORMATS.get(n).kind == stage.data_kind]
        for key in stage.data_keys:
            for i, src in enumerate(OmegaConf.select(cfg, key) or []):
                fmt = src.get("format", "auto") if hasattr(src, "get") else "auto"
                require(fmt == "auto" or fmt in names, f"{key}[{i}].format",
                        f"must be 'auto' or a format of {stage.data_kind} rows ({', '.join(names)}), got {fmt!r}")


def _is_training_node(config: type | None) -> bool:
    from deita.config import TrainConfig

    return isinstance(config, type) and issubclass(config, TrainConfig)


def _check_training_node(node: DictConfig, stage: str) -> None:
    """Batch arithmetic, sequence length and held-out fraction of a training stage's node."""
    require(node.global_batch_size > 0, f"{stage}.global_batch_size", f"must be positive, got {node.global_batch_size}")
    require(node.per_device_batch_size > 0, f"{stage}.per_device_batch_size", f"must be positive, got {node.per_device_batch_size}")
    require(node.global_batch_size % node.per_device_batch_size == 0, f"{stage}.global_batch_size",
            f"{node.global_batch_size} is not a multiple of per_device_batch_size {node.per_device_batch_size}")
    require(node.max_length > 0, f"{stage}.max_length", f"must be positive, got {node.max_length}")
    from deita.data.templates import CHAT_TEMPLATES

    require_choice(node.chat_template, f"{stage}.chat_template", CHAT_TEMPLATES.names())
    require(0.0 <= node.eval_fraction < 1.0, f"{stage}.eval_fraction", f"must be in [0, 1), got {node.eval_fraction}")
    args = node.args
    for name in ("learning_rate", "num_train_epochs"):
        if args.get(name) is not None:
            require_range(args[name], f"{stage}.args.{name}", gt=0)
    for name in ("warmup_steps", "weight_decay", "max_grad_norm"):  # a warmup_steps below 1 is a ratio
        if args.get(name) is not None:
            require_range(args[name], f"{stage}.args.{name}", ge=0)
    if args.get("max_steps") is not None:
        require(args.max_steps == -1 or args.max_steps > 0, f"{stage}.args.max_steps",
                f"must be a positive step count or -1 (use num_train_epochs), got {args.max_steps}")
    if node.peft.enabled:
        require_range(node.peft.r, f"{stage}.peft.r", gt=0)
        require_range(node.peft.alpha, f"{stage}.peft.alpha", gt=0)
        require_range(node.peft.dropout, f"{stage}.peft.dropout", ge=0, lt=1)


def _check_root_nodes(cfg: DictConfig) -> None:
    """Ranges and choices of the nodes every run has: model, launch, plan options, hub."""
    from deita.models.loading import DTYPE_NAMES

    require_choice(cfg.model.dtype, "model.dtype", [*DTYPE_NAMES, "auto"])
    require_range(cfg.launch.num_processes, "launch.num_processes", ge=1)
    require_range(cfg.plan_options.mfu, "plan_options.mfu", gt=0, le=1)
    require_range(cfg.plan_options.gpu_tflops, "plan_options.gpu_tflops", gt=0)
    require_range(cfg.plan_options.chars_per_token, "plan_options.chars_per_token", gt=0)
    require_range(cfg.plan_options.gpus, "plan_options.gpus", ge=1)
    require_range(cfg.hub.timeout, "hub.timeout", gt=0)
