"""Registries fill themselves: the selector registry discovers every method module on first lookup,
without a manual load call and without importing torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deita.registry import Registry
from tests.helpers import REPO_ROOT


def test_selectors_discovered_on_first_lookup_without_torch():
    code = ("import sys\n"
            "from deita.selection.base import SELECTORS\n"
            "print(','.join(SELECTORS.names()))\n"
            "print(SELECTORS.get('nuggets').config_class().method)\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    names, nuggets, heavy = out.stdout.splitlines()
    assert names.split(",") == ["deita", "ifd", "length", "nuggets", "random", "superfilter"]
    assert nuggets == "nuggets" and heavy == "[]"


def test_unknown_name_lists_the_registered_ones():
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(KeyError, match="unknown thing 'b'; registered: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(2)
