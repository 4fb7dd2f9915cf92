"""``<stage>.args`` checked against the TRL config class it goes to, at composition, without importing TRL.

Importing TRL takes 5-10 s (it imports torch and transformers), too slow for a check that must fail a typo
in under two seconds. So the field names of each TRL config class a stage uses (``Stage.trainer_args``),
the kinds of value each field takes (read from its type annotation and default: ``int``, ``float``, ``bool``,
``str``, ``dict``, ``list[str]``, ``null``, ``any``; plus what the class's own methods convert, found by their
``isinstance(self.<field>, ...)`` tests: DPOConfig's ``loss_type: list[str]`` takes one string too) and the
allowed values of its enumerated string options (scheduler, optimizer, strategies, ``report_to``, ...) are
kept in ``trl_args.json``, written from the installed TRL by ``python -m deita.trl_args --write`` and checked
against it by ``tests/test_strict_config.py``. When the installed TRL or transformers version is not the
one the table was written from, the check reads the classes themselves (slow, still right).
"""

from __future__ import annotations

import difflib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("trl_args.json")
VERSIONED = ("trl", "transformers")


def _choices_of(field) -> list[str] | None:
    """Allowed string values of a dataclass field: its Enum type's values, its ``choices`` metadata, or
    for ``report_to`` the integrations transformers knows; None for a free-form field."""
    import enum
    import typing

    for arg in (field.type, *typing.get_args(field.type)):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return sorted(str(m.value) for m in arg)
    choices = (field.metadata or {}).get("choices")
    if choices is not None:
        return sorted(str(c) for c in choices)
    if field.name == "report_to":
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        return sorted([*INTEGRATION_TO_CALLBACK, "all", "none"])
    return None


def _kinds_of(annotation) -> set[str]:
    """The kinds of value a type annotation admits (see the module doc); ``any`` for a type a config
    value cannot be checked against (a class such as ``ParallelismConfig``)."""
    import enum
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds_of(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Literal:
        return set().union(*(_kinds_of(type(arg)) for arg in typing.get_args(annotation)))
    if annotation is type(None):
        return {"null"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"str"}  # the enumerated values are checked as choices
    if annotation in (bool, int, float, str):
        return {annotation.__name__}
    if annotation is dict or origin is dict:
        return {"dict"}
    if annotation is list or origin is list:
        items = typing.get_args(annotation)
        inner = _kinds_of(items[0]) if items else {"any"}
        return {f"list[{inner.pop()}]" if len(inner) == 1 else "list[any]"}
    return {"any"}


def _field_kinds(field, hints: dict) -> list[str]:
    """Sorted kinds of ``field``: its annotation's, plus ``null`` when its default is None."""
    kinds = _kinds_of(hints.get(field.name, field.type))
    if field.default is None:
        kinds.add("null")
    return sorted(kinds)


PLAIN_KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "dict": "dict", "list": "list[any]",
               "tuple": "list[any]"}
"""Builtin type names an ``isinstance`` test in a ``__post_init__`` may name, as kinds of config value."""


def _tested_kinds(cls: type) -> dict[str, set[str]]:
    """Kinds the methods of ``cls`` and its bases test a field for (``__post_init__``'s ``isinstance(self.loss_type,
    str)`` before it turns the string into a list): values the class handles beyond its annotation."""
    import ast
    import inspect
    import textwrap

    found: dict[str, set[str]] = {}
    trees = []
    for klass in cls.__mro__:
        for method in klass.__dict__.values():
            if inspect.isfunction(method):
                try:
                    trees.append(ast.parse(textwrap.dedent(inspect.getsource(method))))
                except (OSError, TypeError, SyntaxError):
                    continue
    for tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                    and len(node.args) == 2 and isinstance(node.args[0], ast.Attribute)
                    and isinstance(node.args[0].value, ast.Name) and node.args[0].value.id == "self"):
                continue
            types = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            names = {PLAIN_KINDS[t.id] for t in types if isinstance(t, ast.Name) and t.id in PLAIN_KINDS}
            found.setdefault(node.args[0].attr, set()).update(names)
    return found


def describe_class(dotted: str) -> dict[str, Any]:
    """``{"fields": [...], "kinds": {field: [...]}, "choices": {field: [...]}}`` of the config class at
    ``dotted`` (imports it)."""
    import dataclasses
    import importlib
    import typing
    import warnings

    module, name = dotted.rsplit(".", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        cls = getattr(importlib.import_module(module), name)
    fields = dataclasses.fields(cls)
    hints = typing.get_type_hints(cls)
    choices = {f.name: c for f in fields if (c := _choices_of(f)) is not None}
    tested = _tested_kinds(cls)
    kinds = {}
    for f in fields:
        annotated = set(_field_kinds(f, hints))
        extra = tested.get(f.name, set())
        if any(k.startswith("list[") for k in annotated):  # the annotation says what the list holds
            extra = extra - {"list[any]"}
        kinds[f.name] = sorted(annotated | extra)
    return {"fields": sorted(f.name for f in fields), "kinds": kinds, "choices": choices}


def installed_versions() -> dict[str, str]:
    """Versions of the packages the table depends on."""
    return {name: metadata.version(name) for name in VERSIONED}


def build_table(classes: list[str]) -> dict[str, Any]:
    """The table for ``classes`` from the installed packages."""
    return {"versions": installed_versions(), "classes": {c: describe_class(c) for c in sorted(classes)}}


def stage_classes() -> list[str]:
    """The TRL config classes the registered stages declare."""
    from deita import stages

    return sorted({s.trainer_args for s in stages.pipeline_order() if s.trainer_args})


@lru_cache(maxsize=None)
def class_schema(dotted: str) -> dict[str, Any]:
    """Fields and choices of ``dotted``: from the table when it was written from the installed versions
    and lists the class, else by importing the class."""
    if TABLE.is_file():
        table = json.loads(TABLE.read_text())
        if table.get("versions") == installed_versions() and dotted in table.get("classes", {}):
            return table["classes"][dotted]
    return describe_class(dotted)


KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "true, false", "str": "a string",
             "dict": "a mapping", "null": "null", "list[str]": "a list of strings", "list[float]": "a list of numbers",
             "list[int]": "a list of integers", "list[bool]": "a list of true/false", "list[any]": "a list"}
"""How an error names each kind of value (``expected an integer or null, found 'abc'``; ``true, false or null``)."""


def fits(value: Any, kind: str) -> bool:
    """Whether a config value (as OmegaConf gives it: None, bool, int, float, str, dict, list) is of ``kind``."""
    if kind == "any":
        return True
    if kind.startswith("list["):
        return isinstance(value, (list, tuple)) and all(fits(item, kind[5:-1]) for item in value)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {"null": value is None, "bool": isinstance(value, bool), "int": number and isinstance(value, int),
            "float": number, "str": isinstance(value, str), "dict": isinstance(value, dict)}.get(kind, False)


def _expected(kinds: list[str]) -> str:
    """``an integer``, ``true or false``, ``a mapping, a string or null`` (null last)."""
    texts = ", ".join(KIND_TEXT.get(kind, kind) for kind in sorted(kinds, key=lambda k: k == "null")).split(", ")
    return texts[0] if len(texts) == 1 else f"{', '.join(texts[:-1])} or {texts[-1]}"


def _shown(value: Any) -> str:
    """A value as the user wrote it on the command line: ``'abc'``, ``1.5``, ``true``, ``null``."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def check_args(args: dict, dotted: str, key: str, own: list[str] | tuple = ()) -> None:
    """Raise :class:`deita.validate.ConfigError` naming ``<key>.<name>`` for an argument ``dotted`` does not
    have (with the closest one), one the stage sets itself from its own key of that name (``own``: the
    stage node's fields, e.g. ``dpo.beta``; given twice, TRL's config class would get it twice), a value
    of a kind its field does not take (``expected an integer, found 'abc'``) or a value outside an
    enumerated option's allowed values."""
    from deita.validate import ConfigError

    schema = class_schema(dotted)
    fields = schema["fields"]
    for name, value in args.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{key}.{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}.{name}': {dotted.rsplit('.', 1)[1]} has no argument {name!r}{hint}")
        if name in own:
            stage_key = f"{key.rsplit('.', 1)[0]}.{name}"
            raise ConfigError(f"config key '{key}.{name}': deita sets this {dotted.rsplit('.', 1)[1]} argument from "
                              f"'{stage_key}'; set that instead")
        kinds = schema.get("kinds", {}).get(name)
        if kinds and not any(fits(value, kind) for kind in kinds):
            raise ConfigError(f"config key '{key}.{name}': expected {_expected(kinds)}, found {_shown(value)}")
        allowed = schema["choices"].get(name)
        if allowed is None or value is None:
            continue
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if str(item) not in allowed:
                close = difflib.get_close_matches(str(item), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"config key '{key}.{name}': {item!r} is not one of {allowed}{hint}")


def main(argv: list[str] | None = None) -> None:
    """``python -m deita.trl_args --write``: rewrite ``trl_args.json`` from the installed TRL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="write the table (default: print it)")
    args = parser.parse_args(argv)
    text = json.dumps(build_table(stage_classes()), indent=1, sort_keys=True) + "\n"
    if args.write:
        TABLE.write_text(text)
        print(f"wrote {TABLE}")
    else:
        print(text)


if __name__ == "__main__":
    main()
