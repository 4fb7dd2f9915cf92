"""Load any supported source into canonical rows (see :mod:`deita.data.formats`); read/write JSONL.

JSON and JSONL are parsed with the standard library, record by record, rather than through
``datasets.load_dataset("json")``: the Arrow JSON reader reports neither the record index nor the line
of a syntax error, and it unifies the schema across records (filling absent keys with null or failing
on mixed types), so a bad record could not be named exactly. Parquet, ``save_to_disk`` folders and hub
datasets go through pyarrow / ``datasets``. Loading writes nothing.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from deita.data.errors import DataError, expected, one_line, reading
from deita.data import formats_reference  # noqa: F401  (registers the opt-in reference formats)
from deita.data.formats import FORMATS, KINDS, Format, detect_format, normalise_record
from deita.distributed import env_dist
from deita.fingerprint import hash_rows
from deita.io import atomic_path

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
"""File endings read as local data files (a folder is read file by file in name order)."""
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


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


class _Raw(NamedTuple):
    file: str  # label used in errors
    stem: str  # for default ids "{stem}:{index}"
    index: int
    line: int | None
    value: Any
    error: DataError | None = None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


_BOM = b"\xef\xbb\xbf"


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _invalid_utf8(error: UnicodeDecodeError, offset: int, path: Path) -> DataError:
    """The error for bytes that are not UTF-8; ``offset`` is where the decoded bytes start in the file
    (in its decompressed bytes for .gz), so the message gives the absolute offset of the bad byte."""
    where = " of the decompressed data" if path.name.endswith(".gz") else ""
    bad = error.object[error.start]
    return DataError(f"expected UTF-8 text, found byte 0x{bad:02x} ({error.reason}) at byte offset "
                     f"{offset + error.start}{where}")


def _one_ahead(lines: Iterator[bytes]) -> Iterator[bytes]:
    """``lines`` unchanged, but each is yielded only once the next one was read: a file that fails
    mid-read (truncated gzip) raises before its cut-off last line could be parsed as a bad record."""
    previous = None
    for line in lines:
        if previous is not None:
            yield previous
        previous = line
    if previous is not None:
        yield previous


def _jsonl_records(path: Path) -> Iterator[_Raw]:
    """One record per non-blank line; a line that is not UTF-8 or not JSON is yielded (not raised) as
    an error with its line number. A file that cannot be read raises DataError naming it."""
    label, stem, index, offset = str(path), _stem(path), 0, 0
    with reading(label), _open_bytes(path) as f:
        for lineno, line in enumerate(_one_ahead(f), 1):
            start, offset = offset, offset + len(line)
            if lineno == 1 and line.startswith(_BOM):
                line, start = line[len(_BOM):], start + len(_BOM)
            if not line.strip():
                continue
            try:
                yield _Raw(label, stem, index, lineno, json.loads(line.decode("utf-8").rstrip("\r\n")))
            except UnicodeDecodeError as e:
                err = _invalid_utf8(e, start, path).at(file=label, index=index, line=lineno)
                yield _Raw(label, stem, index, lineno, None, err)
            except json.JSONDecodeError as e:
                err = DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=label, index=index, line=lineno)
                yield _Raw(label, stem, index, lineno, None, err)
            index += 1


HEAD_JSON_BYTES = 8 << 20
"""With ``head``, a .json file larger than this is read only far enough for its first records."""


def _json_records(path: Path, split: str, head: int | None = None) -> Iterator[_Raw]:
    """A JSON list of records, or an object holding that list under ``split``, "data" or "train".
    With ``head``, a large top-level list is parsed only up to its first ``head`` records."""
    label = str(path)
    if head is not None:
        first = _json_list_head(path, head)
        if first is not None:
            return _table_records(first, label, _stem(path))
    return _json_whole(path, split)


def _json_list_head(path: Path, head: int) -> list | None:
    """The first ``head`` records of a .json file that is one large list, parsed from a prefix of at most
    ``HEAD_JSON_BYTES``; None when the file is small, not a top-level list, or a record runs past the prefix
    (the caller then parses it whole)."""
    label = str(path)
    with reading(label):
        if path.stat().st_size <= HEAD_JSON_BYTES and not path.name.endswith(".gz"):
            return None
        with _open_bytes(path) as f:
            data = f.read(HEAD_JSON_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        if e.start < len(data) - 4:
            return None  # the whole parse names the bad byte's offset
        text = data[: e.start].decode("utf-8-sig")  # a character cut by the prefix
    text = text.lstrip()
    if not text.startswith("["):
        return None
    decoder, pos, out = json.JSONDecoder(), 1, []
    while len(out) < head:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None  # cut off by the prefix, or bad JSON: the whole parse names the line
        out.append(value)
    return out


def _json_whole(path: Path, split: str) -> Iterator[_Raw]:
    label = str(path)
    with reading(label), _open_bytes(path) as f:
        data = f.read()
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data.decode("utf-8-sig")  # positions in its errors count from after the BOM
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, skip + e.start) + 1
        raise _invalid_utf8(e, skip, path).at(file=label, line=line) from None
    del data
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})", file=label) from None
    keys = list(dict.fromkeys((split, "data", "train")))
    if isinstance(value, dict):
        key = next((k for k in keys if isinstance(value.get(k), list)), None)
        value = value[key] if key else value
    if not isinstance(value, list):
        under = ", ".join(map(repr, keys[:-1])) + f" or {keys[-1]!r}"
        raise expected(f"a list of records, or an object with a list under {under}", value).at(file=label)
    for i, rec in enumerate(value):
        yield _Raw(label, _stem(path), i, None, rec)


def _table_records(rows: list[dict], label: str, stem: str) -> Iterator[_Raw]:
    for i, rec in enumerate(rows):
        yield _Raw(label, stem, i, None, rec)


def _file_records(path: Path, split: str, head: int | None = None) -> Iterator[_Raw]:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return _jsonl_records(path)  # lazy: a head reads only its first lines
    if name.endswith((".json", ".json.gz")):
        return _json_records(path, split, head)
    if name.endswith(".parquet"):
        return _table_records(_parquet_rows(path, head), str(path), _stem(path))
    raise DataError(f"expected a file ending in one of {', '.join(DATA_SUFFIXES)}, found {name!r}", file=str(path))


def _parquet_rows(path: Path, head: int | None = None) -> list[dict]:
    """Every row of a parquet file, or with ``head`` its first ``head`` rows (one batch of its first row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with reading(str(path)):
        try:
            if head is not None:
                batch = next(pq.ParquetFile(path).iter_batches(batch_size=head), None)
                return [] if batch is None else batch.to_pylist()
            return pq.read_table(path).to_pylist()
        except (FileNotFoundError, PermissionError):
            raise
        except (pa.ArrowException, OSError) as e:  # pyarrow raises plain OSError for corrupt pages
            detail = re.sub(r"^Could not open Parquet input source '.*?': ", "", one_line(e))
            raise DataError(f"expected a parquet file, found one pyarrow cannot read ({detail})", file=str(path)) from None


def _disk_records(path: Path, split: str, head: int | None = None) -> Iterator[_Raw]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except PermissionError as e:
        raise DataError("permission denied (cannot read it)", file=e.filename or str(path)) from None
    except (OSError, ValueError, KeyError) as e:  # what datasets and pyarrow raise for a damaged folder
        raise DataError(f"expected a datasets.save_to_disk folder, found one that cannot be loaded ({one_line(e)})",
                        file=str(path)) from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"expected a split {split!r}, found splits {sorted(ds)}", file=str(path))
        ds = ds[split]
    if head is not None:
        ds = ds.select(range(min(head, len(ds))))
    return _table_records(ds.to_list(), str(path), path.name)


def _dir_records(path: Path, split: str, head: int | None = None) -> Iterator[_Raw]:
    """Records of a ``save_to_disk`` folder, or of each data file in name order (with ``head``: the first
    ``head`` records of each file, so every file's format is seen)."""
    with reading(str(path)):
        entries = list(path.iterdir())  # first: an unlistable folder is named itself, not a file inside it
        if any(p.name in _DISK_MARKERS and p.is_file() for p in entries):
            return _disk_records(path, split, head)
        files = sorted(p for p in entries if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if not files:
        msg = f"expected data files ({', '.join(DATA_SUFFIXES)}) or a datasets.save_to_disk folder, found none"
        raise DataError(msg, file=str(path))
    return (raw for f in files for raw in islice(_file_records(f, split, head), head))


def looks_local(source: str) -> bool:
    """True when ``source`` names a local file or folder (a data suffix, a path start, or it exists), so a
    missing one is reported as missing rather than tried as a hub dataset name."""
    return source.endswith(DATA_SUFFIXES) or source.startswith((".", "/", "~")) or os.path.lexists(source)


def _hub_records(source: str, split: str, revision: str | None = None, head: int | None = None) -> Iterator[_Raw]:
    """Records of a hub dataset; a name that cannot be one, or one that fails to load, is a DataError."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise DataError("expected a data file, a folder or a hub dataset name ('name' or 'org/name'), "
                        "found no such file or folder, and not a hub name either", file=source) from None
    from datasets import load_dataset

    try:
        ds = load_dataset(source, split=split if head is None else f"{split}[:{head}]", revision=revision)
    except (OSError, ValueError) as e:  # not found, offline, gated, unknown split, ...
        raise DataError(f"no such local file or folder, and the hub dataset cannot be loaded ({one_line(e)})",
                        file=source) from None
    return _table_records(ds.to_list(), source, source.rstrip("/").split("/")[-1])


def _missing(source: str, path: Path) -> DataError:
    where = "" if path.is_absolute() else f" (relative to the working directory {os.getcwd()})"
    return DataError(f"no such file or folder{where}", file=source)


def iter_records(source: str, split: str = "train", revision: str | None = None,
                 head: int | None = None) -> Iterator[_Raw]:
    """Raw records of ``source`` in order, each with its file label, stem, index and line.

    ``head`` reads only the first ``head`` records of each file (what preflight checks, in a time that does
    not grow with the file): JSONL lazily, a large .json list from a prefix, parquet one batch, a dataset
    folder or hub split by slice. A file's later bytes (a truncated gzip end) are then not read.

    A source that cannot be read as a whole (missing, permission denied, not a regular file or folder,
    truncated or non-gzip ``.gz``, unreadable parquet, a hub name that fails to load) raises DataError
    naming it; per-record problems are yielded as errors for :func:`load_rows` to raise or skip.
    """
    path = Path(os.path.expanduser(source))
    if not looks_local(source):
        return _hub_records(source, split, revision, head)
    with reading(source):
        if not path.exists():
            raise _missing(source, path)
        if path.is_dir():
            return _dir_records(path, split, head)
        if not path.is_file():
            raise DataError(f"expected a regular file or a folder, found {_file_kind(path)}", file=source)
    return islice(_file_records(path, split, head), head)


def _file_kind(path: Path) -> str:
    import stat

    mode = path.stat().st_mode
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    return next((name for test, name in kinds.items() if test(mode)), "something else")


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
    :func:`iter_records`) raises DataError whatever ``on_error`` says, as does a source with no
    usable record left. ``head`` reads only the first ``head`` records of each file (see
    :func:`iter_records`): a check of the format that costs the same for any file size.
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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a .jsonl (or .jsonl.gz) file; a bad line raises DataError with its line."""
    out = []
    for raw in _jsonl_records(Path(path)):
        if raw.error is not None:
            raise raw.error
        out.append(raw.value)
    return out


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
