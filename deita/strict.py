"""Strict configs: every key of the composed config exists in its schema.

Hydra adds a key given with ``+`` (``+sft.learning_rate=5``) even to a typed node, where nothing reads it:
the run would silently ignore it. :func:`check_known_keys` walks the composed config against the dataclass
of each node (``OmegaConf.get_type``: the root schema, each stage's node, the selection method's config)
and fails on a key its dataclass lacks, naming it and its closest valid name. Free-form nodes (``<stage>.args``)
are checked against the TRL config they go to (:mod:`deita.trl_args`).
"""

from __future__ import annotations

import dataclasses
import difflib

from omegaconf import DictConfig, ListConfig, OmegaConf

from deita.validate import ConfigError


def _suggestion(name: str, valid: list[str], path: str, stage_args: list[str]) -> str:
    """``did you mean ...`` for an unknown key ``name`` at ``path`` (``sft``), or the valid keys there."""
    where = f"{path}." if path else ""
    if name in stage_args:
        return f"; did you mean '{where}args.{name}' (a TRL argument)?"
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return f"; did you mean '{where}{close[0]}'?"
    return f"; valid keys {'under ' + repr(path) if path else 'at the top level'}: {', '.join(sorted(valid))}"


def _trl_fields(path: str) -> list[str]:
    """Field names of the TRL config class that ``<path>.args`` goes to, when ``path`` is such a stage."""
    from deita import stages
    from deita.trl_args import class_schema

    if "." in path or path not in stages.STAGES:
        return []
    dotted = stages.get(path).trainer_args
    return class_schema(dotted)["fields"] if dotted else []


def check_known_keys(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first key (depth first) that its node's schema lacks."""

    def walk(node, path: str) -> None:
        if isinstance(node, ListConfig):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
            return
        if not isinstance(node, DictConfig):
            return
        schema = OmegaConf.get_type(node)
        if schema is None or not dataclasses.is_dataclass(schema):
            return  # a free-form dict (trainer args): checked by deita.trl_args
        valid = [f.name for f in dataclasses.fields(schema) if f.name != "defaults"]
        for name in node.keys():
            if name not in valid:
                key = f"{path}.{name}" if path else str(name)
                raise ConfigError(f"config key '{key}': no such key (added with '+', nothing would read it)"
                                  + _suggestion(str(name), valid, path, _trl_fields(path)))
        for name in valid:
            if name in node and OmegaConf.is_config(node._get_node(name)):
                walk(node._get_node(name), f"{path}.{name}" if path else name)

    walk(cfg, "")


def composition_error(err: BaseException) -> str:
    """One line for Hydra's error while composing the command line: ``config key 'selection.budget': Value
    'abc' of type 'str' could not be converted to Integer``; a key the node lacks (given without ``+``)
    gets the closest valid name, as :func:`check_known_keys` gives it."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        key = str(cause.full_key)
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            path, _, name = key.rpartition(".")
            schema = cause.object_type
            if dataclasses.is_dataclass(schema):
                valid = [f.name for f in dataclasses.fields(schema) if f.name != "defaults"]
                hint = _suggestion(name, valid, path, _trl_fields(path))
            else:  # a free-form node: `<stage>.args` takes the TRL config's fields
                valid = _trl_fields(path[: -len(".args")]) if path.endswith(".args") else []
                if name in valid:  # a real TRL argument the composed config does not set
                    return f"config key '{key}': not set by this config, so Hydra needs '+' to add it: +{key}=..."
                hint = _suggestion(name, valid, path, []) if valid else ""
            where = f" in {schema.__name__}" if dataclasses.is_dataclass(schema) else ""
            return f"config key '{key}': no such key{where}{hint}"
        return f"config key '{key}': {str(cause.msg).splitlines()[0]}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    options = getattr(err, "options", None)  # a config group option that does not exist
    if options:
        return f"{lines[0]}; available: {', '.join(o for o in options if not o.endswith('_schema'))}"
    override = getattr(err, "override", None)  # a command-line override Hydra cannot parse
    return f"override {override!r}: {lines[0]}" if override else " ".join(lines)
