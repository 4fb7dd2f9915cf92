"""``<stage>.args`` checked against the TRL config class it goes to, at composition, without importing TRL.

Importing TRL takes 5-10 s (it imports torch and transformers), too slow for a check that must fail a typo
in under two seconds. So the field names of each TRL config class a stage uses (``Stage.trainer_args``) and
the allowed values of its enumerated string options (scheduler, optimizer, strategies, ``report_to``, ...)
are kept in ``trl_args.json``, written from the installed TRL by ``python -m deita.trl_args --write`` and
checked against it by ``tests/test_trl_args.py``. When the installed TRL or transformers version is not the
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


def describe_class(dotted: str) -> dict[str, Any]:
    """``{"fields": [...], "choices": {field: [...]}}`` of the config class at ``dotted`` (imports it)."""
    import dataclasses
    import importlib
    import warnings

    module, name = dotted.rsplit(".", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental warns on import
        cls = getattr(importlib.import_module(module), name)
    fields = dataclasses.fields(cls)
    choices = {f.name: c for f in fields if (c := _choices_of(f)) is not None}
    return {"fields": sorted(f.name for f in fields), "choices": choices}


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


def check_args(args: dict, dotted: str, key: str) -> None:
    """Raise :class:`deita.validate.ConfigError` naming ``<key>.<name>`` for an argument ``dotted`` does not
    have (with the closest one) or a value outside an enumerated option's allowed values."""
    from deita.validate import ConfigError

    schema = class_schema(dotted)
    fields = schema["fields"]
    for name, value in args.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean '{key}.{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}.{name}': {dotted.rsplit('.', 1)[1]} has no argument {name!r}{hint}")
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
