"""A list of configured data sources → canonical rows: the one loop every stage uses to read its data.

A source is a config node (:class:`deita.config.DataSource`: ``path``, ``format``, ``split``, ``revision``,
``on_error``, ``limit``), a plain dict with those keys, or just a path; keys it leaves out take ``DataSource``'s defaults.
Each source is read by :func:`deita.data.loading.load_rows`; :func:`load_sources` keeps the per-source
results (eval answers each prompt set on its own) and concatenates their rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Iterable, Optional

from deita.data.errors import DataError
from deita.data.fields import response_chars
from deita.data.loading import LoadResult, load_rows
from deita.fingerprint import hash_rows


@dataclass
class LoadedSources:
    """The rows of several sources, in source order, and how many each gave."""

    results: list[LoadResult]
    """One :class:`LoadResult` per source, in the order the sources were given."""

    @property
    def rows(self) -> list[dict]:
        """Every source's rows, concatenated."""
        return [row for result in self.results for row in result.rows]

    @property
    def rows_per_source(self) -> dict[str, int]:
        """Source (as given) → rows it gave."""
        return {result.source: len(result.rows) for result in self.results}

    @property
    def skipped(self) -> int:
        """Bad records skipped across all sources (only with ``on_error: skip``)."""
        return sum(result.skipped for result in self.results)

    @property
    def ids(self) -> list[str]:
        """Every row's id, in pool order."""
        return [row["id"] for result in self.results for row in result.rows]

    @property
    def fingerprint(self) -> str:
        """:func:`deita.fingerprint.hash_rows` of :attr:`rows`."""
        return hash_rows(self.rows)

    @property
    def response_lengths(self) -> list[int]:
        """Per row, its assistant messages' characters (:func:`deita.data.fields.response_chars`)."""
        return [response_chars(row) for result in self.results for row in result.rows]

    @property
    def source_counts(self) -> list[tuple[str, int]]:
        """(source as given, rows it gave), one per source in order (sources may share a name)."""
        return [(result.source, len(result.rows)) for result in self.results]


def source_options(source: Any) -> dict[str, Any]:
    """``path``, ``format``, ``split``, ``revision``, ``on_error`` and ``limit`` of one source, defaults filled in."""
    from deita.config import DataSource

    if isinstance(source, (str, os.PathLike)):
        source = {"path": source}
    get = source.get if hasattr(source, "get") else lambda key, default: getattr(source, key, default)
    defaults = {f.name: f.default for f in fields(DataSource)}
    options = {key: get(key, defaults[key]) for key in ("path", "format", "split", "revision", "on_error", "limit")}
    if options["path"] in (None, "???"):
        raise DataError(f"expected a data source with a 'path', found {source!r:.120}")
    options["path"] = str(options["path"])
    return options


def reader_args(source: Any, on_error: Optional[str] = None) -> tuple[str, dict[str, Any]]:
    """``(path, keyword arguments)`` of :func:`deita.data.loading.load_rows` / ``RowStream`` for one source
    (:func:`source_options`); ``on_error`` overrides the source's own setting."""
    opts = source_options(source)
    return opts["path"], {"fmt": opts["format"], "split": opts["split"], "revision": opts["revision"],
                          "on_error": on_error or opts["on_error"], "limit": opts["limit"]}


def load_sources(sources: Iterable[Any], kind: str, *, on_error: Optional[str] = None,
                 unique_ids: bool = False) -> LoadedSources:
    """Load every source as ``kind`` rows (``sft``, ``preference``, ``prompts``).

    ``on_error`` overrides each source's own setting (plan mode counts with ``skip``). ``unique_ids``
    makes a row id that two sources share an error naming both (the selection pool needs one id per row).
    """
    results: list[LoadResult] = []
    first_source: dict[str, int] = {}  # row id → index of the source that gave it first
    for n, source in enumerate(sources):
        path, args = reader_args(source, on_error)
        result = load_rows(path, kind=kind, **args)
        if unique_ids:
            check_unique_ids((row["id"] for row in result.rows), n, first_source, [r.source for r in results] + [result.source])
        results.append(result)
    return LoadedSources(results)


def check_unique_ids(ids: Iterable[str], n: int, first_source: dict[str, int], labels: list[str]) -> None:
    """Raise DataError when an id of source ``n`` (its ids in order) was given by an earlier source;
    ``first_source`` (id → index of the source that gave it first) is updated; ``labels`` are the sources
    as given, by index."""
    for row_id in ids:
        first = first_source.setdefault(row_id, n)
        if first != n:
            raise DataError(f"expected row ids unique across data sources, found {row_id!r}, which source "
                            f"{first} ({labels[first]}) also holds; give each source distinct ids", file=labels[n])
