"""What every benchmark script does with its markdown report: name the command that reproduces it, print
it, and save it under ``benchmarks/results/``."""

from __future__ import annotations

import shlex
from pathlib import Path


def command_line(script_file: str, argv: list[str]) -> str:
    """``python benchmarks/NAME.py ARGS`` for the running script, quoted for a shell."""
    return "python " + " ".join(shlex.quote(x) for x in [f"benchmarks/{Path(script_file).name}", *argv])


def emit(text: str, out: str | Path) -> None:
    """Print the markdown ``text`` and write it to ``out`` (creating its folder)."""
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
