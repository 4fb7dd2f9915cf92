"""Load any supported source into canonical rows (see :mod:`deita.data.formats`); write JSONL.

The records come from the file readers (:mod:`deita.data.readers`: files, folders, hub datasets, and
:func:`~deita.data.readers.read_jsonl`); here each becomes one or more rows of the asked kind, bad ones
raised or counted as the source's ``on_error`` says (:class:`RowStream`, :func:`load_rows`). Loading writes
nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from deita.data.errors import DataError
from deita.data import formats_reference  # noqa: F401  (registers the opt-in reference formats)
from deita.data.formats import FORMATS, KINDS, Format, detect_format, normalise_record
from deita.data.readers import iter_records
from deita.distributed import env_dist
from deita.fingerprint import hash_rows
from deita.io import atomic_path

logger = logging.getLogger(__name__)


@dataclass
class LoadResult:
    """Canonical rows of one source and how they were obtained."""

    rows: list[dict]
    """Canonical rows (sft, preference or prompts), in source order."""
    skipped: int
    """Records skipped as bad (only with ``on_error="skip"``)."""
    source: str
    """The source as given."""
    fingerprint: str
    """Content hash of ``rows`` (:func:`deita.fingerprint.hash_rows`)."""
    format: str
    """Detected (or forced) format name; several joined by ``+`` if records differed."""
    kind: str
    """``sft``, ``preference`` or ``prompts``."""
    first_error: DataError | None = None
    """The first skipped record's error, if any."""


class RowStream:
    """The canonical rows of one source, produced one at a time (what :func:`load_rows` collects).

    Iterate it once: it yields every row in source order, and when the source is exhausted it logs the
    skipped-records warning and raises the no-usable-records error exactly as :func:`load_rows` does.
    After that, ``skipped``, ``first_error``, ``format`` and ``kind`` describe the source. Arguments
    as :func:`load_rows`. The rows are never all held: a converter can write them out as they come
    (:mod:`deita.data.pool_file`); the ids seen are kept, to report a repeated one.
    """

    def __init__(self, source: str, kind: str = "auto", *, fmt: str = "auto", split: str = "train",
                 on_error: str = "raise", limit: int | None = None, revision: str | None = None,
                 head: int | None = None):
        if kind != "auto" and kind not in KINDS:
            raise ValueError(f"kind must be 'auto' or one of {'/'.join(KINDS)}, got {kind!r}")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of rows or None, got {limit!r}")
        try:
            forced = None if fmt == "auto" else FORMATS.get(fmt)
        except KeyError as err:  # the registry's message lists the known names
            raise ValueError(err.args[0]) from None
        if forced is not None and kind not in ("auto", forced.kind):
            raise ValueError(f"format {fmt!r} yields {forced.kind} rows, but kind={kind!r} was asked for")
        self.source, self.split, self.revision, self.head = source, split, revision, head
        self.on_error, self.limit, self._forced = on_error, limit, forced
        self.kind: str | None = forced.kind if forced else (None if kind == "auto" else kind)
        """``sft``, ``preference`` or ``prompts``: as asked, else the first good record's (after iterating)."""
        self.skipped = 0
        """Records skipped as bad (only with ``on_error="skip"``)."""
        self.first_error: DataError | None = None
        """The first skipped record's error, if any."""
        self._names: list[str] = []

    @property
    def format(self) -> str:
        """Detected (or forced) format name; several joined by ``+`` if records differed."""
        return "+".join(self._names)

    def __iter__(self) -> Iterator[dict]:
        forced, on_error, limit = self._forced, self.on_error, self.limit
        seen: dict[str, tuple[str, int]] = {}
        file_fmt: Format | None = forced
        n_rows = 0
        for raw in iter_records(self.source, self.split, self.revision, self.head):
            try:
                if raw.error is not None:
                    raise raw.error
                fmt_used = forced or _detect(raw.value, self.kind, file_fmt)
                out = normalise_record(raw.value, fmt_used, f"{raw.stem}:{raw.index}")
                for row in out:
                    if row["id"] in seen:
                        f0, i0 = seen[row["id"]]
                        raise DataError(f"expected unique row ids, found {row['id']!r} again (first at {f0}: record {i0})")
            except DataError as e:
                e = e.at(file=raw.file, index=raw.index, line=raw.line)
                if on_error == "raise":
                    raise e from None
                self.skipped, self.first_error = self.skipped + 1, self.first_error or e
                continue
            for row in out:
                seen[row["id"]] = (raw.file, raw.index)
            file_fmt, self.kind = file_fmt or fmt_used, fmt_used.kind
            if fmt_used.name not in self._names:
                self._names.append(fmt_used.name)
            if limit is not None:
                out = out[: limit - n_rows]
            n_rows += len(out)
            yield from out
            if limit is not None and n_rows >= limit:
                break
        if self.skipped and env_dist().is_main and self.head is None:  # a head is a probe: the stage warns
            warn_skipped(self.source, self.skipped, self.first_error)
        if not n_rows:
            why = f" ({self.skipped} skipped; the first: {self.first_error})" if self.skipped else ""
            first = "" if self.head is None else f" in its first {self.head} records"
            raise NoUsableRecords(f"holds no usable records{first}{why}", file=self.source)


class NoUsableRecords(DataError):
    """A source (or, with ``head``, its first records) that gave no row: empty, or every record bad."""


def warn_skipped(source: str, skipped: int, first_error: Any) -> None:
    """The one warning a source with skipped bad records gets (logged by the main process)."""
    logger.warning("%s: skipped %d bad record(s); the first: %s", source, skipped, first_error)


def load_rows(
    source: str,
    kind: str = "auto",
    *,
    fmt: str = "auto",
    split: str = "train",
    on_error: str = "raise",
    limit: int | None = None,
    revision: str | None = None,
    head: int | None = None,
) -> LoadResult:
    """Canonical rows of ``source`` (a .json/.jsonl/.jsonl.gz/.json.gz/.parquet file, a folder of
    such files, a ``datasets.save_to_disk`` folder, or a hub dataset name loaded with ``split`` at
    ``revision``, a commit, branch or tag; None: the default branch).

    ``kind`` is ``sft``, ``preference``, ``prompts`` or ``auto`` (the kind of the first good record's
    format). ``fmt`` forces a format name from ``FORMATS``; ``auto`` detects it per record by its keys
    (a record that matches none is reported against the file's format, so the error names the bad
    field). ``on_error="raise"`` raises the first DataError (file, record, line, field);
    ``"skip"`` drops bad records, counts them and logs one warning. Row ids must be unique.
    ``limit`` keeps the first ``limit`` rows. A source that cannot be read as a whole (see
    :func:`deita.data.readers.iter_records`) raises DataError whatever ``on_error`` says, as does a source
    with no usable record left. ``head`` reads only the first ``head`` records of each file (see
    :func:`deita.data.readers.iter_records`): a check of the format that costs the same for any file size.
    The rows are those of :class:`RowStream`, collected.
    """
    stream = RowStream(source, kind, fmt=fmt, split=split, on_error=on_error, limit=limit, revision=revision, head=head)
    rows = list(stream)
    return LoadResult(rows, stream.skipped, source, hash_rows(rows), stream.format, stream.kind, stream.first_error)


def _detect(record: Any, kind: str | None, file_fmt: Format | None) -> Format:
    try:
        return detect_format(record, kind)
    except DataError:
        if file_fmt is None or not isinstance(record, dict):
            raise
        return file_fmt  # parse as the file's format so the error names the bad field


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` one JSON object per line (gzip if the name ends in .gz), atomically
    (:func:`deita.io.atomic_path`). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        opener = gzip.open(tmp, "wt", encoding="utf-8") if path.name.endswith(".gz") else open(tmp, "w", encoding="utf-8")
        with opener as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
