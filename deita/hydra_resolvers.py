"""OmegaConf resolvers used by ``conf/config.yaml``: the run directory's name.

A run directory is named after the job's overrides (``runs/tiny/selection.budget=50``), so every rank of a
launch and every re-run with the same overrides lands in the same folder. Names must also stay under the
filesystem's 255-byte limit on one path component, which three local model paths already exceed: a long
override value is shortened to its readable ends plus a short hash of the whole value, and a name that is
still too long (many overrides) is cut and hashed as a whole. Short values keep today's names. Everything
is a pure function of the override text, so ranks agree without talking to each other.
"""

from __future__ import annotations

import hashlib

from omegaconf import OmegaConf

ITEM_SEP = "\x1f"
"""Separator Hydra puts between overrides in ``hydra.job.override_dirname`` (``conf/config.yaml`` sets
``item_sep`` to it): a character no override contains, so a value with commas (a list) stays one item.
Names join the items with ``,`` as Hydra's default does."""

MAX_VALUE_CHARS = 48
"""Override values up to this many characters appear whole in a run directory's name."""

HEAD_CHARS, TAIL_CHARS = 12, 20
"""A longer value keeps its first and last characters (a path's root and its most specific part)."""

MAX_NAME_BYTES = 240
"""Longest run directory name, in UTF-8 bytes (filesystems allow 255 per path component)."""

HASH_CHARS = 8


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def short_value(value: str) -> str:
    """``value`` itself when short; else ``<first 12 chars>..<last 20 chars>~<8 hex of its sha256>``."""
    if len(value) <= MAX_VALUE_CHARS:
        return value
    return f"{value[:HEAD_CHARS]}..{value[-TAIL_CHARS:]}~{_digest(value)}"


def _short_item(item: str) -> str:
    key, sep, value = item.partition("=")
    return key + sep + short_value(value)


def override_dirname(overrides: str) -> str:
    """Directory name for a set of overrides: the overrides themselves, or ``default`` when none.

    ``overrides`` is Hydra's ``override_dirname``: sorted ``key=value`` items joined by :data:`ITEM_SEP`
    (or by ``,``, which is then kept as it is). Long values are shortened (:func:`short_value`), slashes
    become underscores so each run is one folder level, and a name over :data:`MAX_NAME_BYTES` bytes
    keeps its first bytes plus a hash of all the overrides.
    """
    if not overrides:
        return "default"
    name = ",".join(_short_item(item) for item in overrides.split(ITEM_SEP)).replace("/", "_")
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    head = name.encode("utf-8")[: MAX_NAME_BYTES - HASH_CHARS - 1].decode("utf-8", errors="ignore")
    return f"{head}~{_digest(overrides)}"


def register_resolvers() -> None:
    """Register ``${deita_dirname:...}`` once per process."""
    if not OmegaConf.has_resolver("deita_dirname"):
        OmegaConf.register_new_resolver("deita_dirname", override_dirname)
