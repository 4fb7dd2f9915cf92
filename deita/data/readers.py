"""Read any supported source into raw records: the file readers (see :func:`iter_records`).

Each reader yields :class:`RawRecord` objects (the record as parsed, with its file label, index and line) and
knows nothing of formats or rows: :mod:`deita.data.loading` turns the records into canonical rows.

JSON and JSONL are parsed with the standard library, record by record, rather than through
``datasets.load_dataset("json")``: the Arrow JSON reader reports neither the record index nor the line
of a syntax error, and it unifies the schema across records (filling absent keys with null or failing
on mixed types), so a bad record could not be named exactly. Parquet, ``save_to_disk`` folders and hub
datasets go through pyarrow / ``datasets``. Reading writes nothing.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from deita.data.errors import DataError, expected, one_line, reading

DATA_SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet")
"""File endings read as local data files (a folder is read file by file in name order)."""
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class RawRecord(NamedTuple):
    """One record as read from a source, before it becomes a row; ``error`` set (``value`` None) when the
    record itself could not be read (a line that is not JSON or not UTF-8)."""

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


def _jsonl_records(path: Path) -> Iterator[RawRecord]:
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
                yield RawRecord(label, stem, index, lineno, json.loads(line.decode("utf-8").rstrip("\r\n")))
            except UnicodeDecodeError as e:
                err = _invalid_utf8(e, start, path).at(file=label, index=index, line=lineno)
                yield RawRecord(label, stem, index, lineno, None, err)
            except json.JSONDecodeError as e:
                err = DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=label, index=index, line=lineno)
                yield RawRecord(label, stem, index, lineno, None, err)
            index += 1


HEAD_JSON_BYTES = 8 << 20
"""With ``head``, a .json file larger than this is read only far enough for its first records."""


def _json_records(path: Path, split: str, head: int | None = None) -> Iterator[RawRecord]:
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


def _json_whole(path: Path, split: str) -> Iterator[RawRecord]:
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
        yield RawRecord(label, _stem(path), i, None, rec)


def _table_records(rows: list[dict], label: str, stem: str) -> Iterator[RawRecord]:
    for i, rec in enumerate(rows):
        yield RawRecord(label, stem, i, None, rec)


def _file_records(path: Path, split: str, head: int | None = None) -> Iterator[RawRecord]:
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


def _disk_records(path: Path, split: str, head: int | None = None) -> Iterator[RawRecord]:
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


def _dir_records(path: Path, split: str, head: int | None = None) -> Iterator[RawRecord]:
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


def _hub_records(source: str, split: str, revision: str | None = None, head: int | None = None) -> Iterator[RawRecord]:
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
                 head: int | None = None) -> Iterator[RawRecord]:
    """Raw records of ``source`` in order, each with its file label, stem, index and line.

    ``head`` reads only the first ``head`` records of each file (what preflight checks, in a time that does
    not grow with the file): JSONL lazily, a large .json list from a prefix, parquet one batch, a dataset
    folder or hub split by slice. A file's later bytes (a truncated gzip end) are then not read.

    A source that cannot be read as a whole (missing, permission denied, not a regular file or folder,
    truncated or non-gzip ``.gz``, unreadable parquet, a hub name that fails to load) raises DataError
    naming it; per-record problems are yielded as errors for :func:`deita.data.loading.load_rows` to raise
    or skip.
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


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a .jsonl (or .jsonl.gz) file; a bad line raises DataError with its line."""
    out = []
    for raw in _jsonl_records(Path(path)):
        if raw.error is not None:
            raise raw.error
        out.append(raw.value)
    return out
