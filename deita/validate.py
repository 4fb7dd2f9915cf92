"""Checks that need more than a type: run right after composition, before any data or model loads."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for config key ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value cannot work."""
    from deita import stages
    from deita.selection.base import SELECTORS

    names = list(cfg.stages)
    known = stages.names()
    for name in names:
        require(name in known, "stages", f"unknown stage {name!r}; stages are {known}")
    require(len(set(names)) == len(names), "stages", f"a stage is listed twice: {names}")
    sel = cfg.selection
    require(sel.method in SELECTORS, "selection.method", f"unknown method {sel.method!r}; known: {SELECTORS.names()}")
    require(sel.budget == -1 or sel.budget > 0, "selection.budget", f"must be a positive row count or -1 (all), got {sel.budget}")
    require(sel.on_error in ("raise", "nan"), "selection.on_error", f"must be 'raise' or 'nan', got {sel.on_error!r}")
    for group in ("pool", "preference", "eval_prompts"):
        for i, src in enumerate(cfg.data[group]):
            require(src.on_error in ("raise", "skip"), f"data.{group}[{i}].on_error", f"must be 'raise' or 'skip', got {src.on_error!r}")
            require(src.limit is None or src.limit > 0, f"data.{group}[{i}].limit", f"must be positive or null, got {src.limit}")
    for stage in stages.in_pipeline_order(names):
        for key in () if stage.data_optional else stage.data_keys:
            require(len(OmegaConf.select(cfg, key) or []) > 0, key, f"the {stage.name} stage needs at least one source")
    for stage in stages.pipeline_order():
        if _is_training_node(stage.config):
            _check_training_node(cfg[stage.name], stage.name)
        if stage.check is not None:
            stage.check(cfg)
    require(cfg.logger.backend in ("none", "wandb"), "logger.backend", f"must be 'none' or 'wandb', got {cfg.logger.backend!r}")
    require(cfg.logger.mode in ("online", "offline", "disabled"), "logger.mode", f"must be online, offline or disabled, got {cfg.logger.mode!r}")
    require(cfg.launch.timeout_minutes > 0, "launch.timeout_minutes", f"must be positive, got {cfg.launch.timeout_minutes}")


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
    require(0.0 <= node.eval_fraction < 1.0, f"{stage}.eval_fraction", f"must be in [0, 1), got {node.eval_fraction}")
