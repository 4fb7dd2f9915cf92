"""Selection methods. Each module registers one method in :data:`deita.selection.base.SELECTORS`.

Modules here are discovered automatically, so adding a method is adding a file. They must be cheap to
import (no torch or transformers at module level): the config layer imports them to register schemas.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    """Import every method module so its registration runs."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
