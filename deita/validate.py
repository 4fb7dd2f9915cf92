"""Checks that need more than a type: run right after composition, before any data or model loads."""

from __future__ import annotations

from omegaconf import DictConfig

from deita.config import STAGE_ORDER


class ConfigError(ValueError):
    """A config value that composes but cannot work; the message names the key."""


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key whose value cannot work."""
    from deita.selection.base import SELECTORS

    stages = list(cfg.stages)
    for name in stages:
        _check(name in STAGE_ORDER, "stages", f"unknown stage {name!r}; stages are {list(STAGE_ORDER)}")
    _check(len(set(stages)) == len(stages), "stages", f"a stage is listed twice: {stages}")
    sel = cfg.selection
    _check(sel.method in SELECTORS, "selection.method", f"unknown method {sel.method!r}; known: {SELECTORS.names()}")
    _check(sel.budget == -1 or sel.budget > 0, "selection.budget", f"must be a positive row count or -1 (all), got {sel.budget}")
    _check(sel.on_error in ("raise", "nan"), "selection.on_error", f"must be 'raise' or 'nan', got {sel.on_error!r}")
    for group in ("pool", "preference", "eval_prompts"):
        for i, src in enumerate(cfg.data[group]):
            _check(src.on_error in ("raise", "skip"), f"data.{group}[{i}].on_error", f"must be 'raise' or 'skip', got {src.on_error!r}")
            _check(src.limit is None or src.limit > 0, f"data.{group}[{i}].limit", f"must be positive or null, got {src.limit}")
    if "select" in stages:
        _check(len(cfg.data.pool) > 0, "data.pool", "the select stage needs at least one pool source")
    if "dpo" in stages:
        _check(len(cfg.data.preference) > 0, "data.preference", "the dpo stage needs at least one preference source")
    for stage in ("sft", "dpo"):
        node = cfg[stage]
        _check(node.global_batch_size > 0, f"{stage}.global_batch_size", f"must be positive, got {node.global_batch_size}")
        _check(node.per_device_batch_size > 0, f"{stage}.per_device_batch_size", f"must be positive, got {node.per_device_batch_size}")
        _check(node.global_batch_size % node.per_device_batch_size == 0, f"{stage}.global_batch_size",
               f"{node.global_batch_size} is not a multiple of per_device_batch_size {node.per_device_batch_size}")
        _check(node.max_length > 0, f"{stage}.max_length", f"must be positive, got {node.max_length}")
        _check(0.0 <= node.eval_fraction < 1.0, f"{stage}.eval_fraction", f"must be in [0, 1), got {node.eval_fraction}")
    _check(cfg.logger.backend in ("none", "wandb"), "logger.backend", f"must be 'none' or 'wandb', got {cfg.logger.backend!r}")
    _check(cfg.logger.mode in ("online", "offline", "disabled"), "logger.mode", f"must be online, offline or disabled, got {cfg.logger.mode!r}")
    _check(cfg.dpo.beta > 0, "dpo.beta", f"must be positive, got {cfg.dpo.beta}")
