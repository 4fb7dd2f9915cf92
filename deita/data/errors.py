"""The one error type of the data layer: what was expected, what was found, and where.

``str(DataError)`` is built from its parts in a fixed order, joined by ``": "``::

    <file>: record <index>[ (line <line>)]: field '<field>': <message>

Parts that are unknown are left out, so an error raised by a pure normaliser (which knows only the
field) reads ``field 'output': expected ...`` until the loader adds the file and record with
:meth:`DataError.at`. ``index`` is the 0-based position of the record in its file; ``line`` is the
1-based line number, given for line-oriented files (JSONL). Messages follow the pattern
``expected <what>, found <what>``, where the found value is rendered by :func:`describe`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


class _Missing:
    """Sentinel for a key that is absent (as opposed to present with value ``None``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
"""Pass to :func:`describe` for a key the record does not have."""

_MAX_SHOWN = 60


def describe(value: Any) -> str:
    """Short, predictable rendering of a found value for error messages.

    ``MISSING`` → ``no such key``; ``None`` → ``null``; a string → its ``repr`` (cut to 60
    characters with ``...``); a bool → ``boolean True``; a number → ``number 5``; a list →
    ``an empty list`` / ``a list of 3 items``; a dict → ``an object with keys ['a', 'b']``.
    """
    if value is MISSING:
        return "no such key"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= _MAX_SHOWN else value[: _MAX_SHOWN - 3] + "...")
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "an empty list"
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(map(str, value))}"
    return f"a {type(value).__name__}"


class DataError(ValueError):
    """A record (or file) that cannot become canonical rows.

    Attributes: ``file`` (path as given, or None), ``index`` (0-based record index, or None),
    ``line`` (1-based line for JSONL, or None), ``field`` (path inside the record such as
    ``conversations[3].from``, or None) and ``message`` (``expected ..., found ...``).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        index: int | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        self.message = message
        self.file = file
        self.index = index
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(str(self.file))
        if self.index is not None:
            parts.append(f"record {self.index}" + (f" (line {self.line})" if self.line is not None else ""))
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        parts.append(self.message)
        return ": ".join(parts)

    def at(self, *, file: str | None = None, index: int | None = None, line: int | None = None) -> DataError:
        """A copy located in ``file`` / record ``index`` / ``line`` (parts already set are kept)."""
        return DataError(
            self.message,
            file=self.file if self.file is not None else file,
            index=self.index if self.index is not None else index,
            line=self.line if self.line is not None else line,
            field=self.field,
        )


def expected(what: str, found: Any, field: str | None = None) -> DataError:
    """``DataError("expected <what>, found <describe(found)>", field=field)``."""
    return DataError(f"expected {what}, found {describe(found)}", field=field)


def file_error(exc: BaseException, file: str) -> DataError | None:
    """The DataError for a file that cannot be read at all, or None when ``exc`` is not such a failure.

    Covers what the operating system and gzip raise: a missing path, permission denied, a ``.gz`` that
    is not gzip, truncated or corrupt gzip data, any other OSError. The error names ``exc.filename``
    when the OS gives one (a file inside a folder source), else ``file``. Invalid UTF-8 and unreadable
    parquet are reported by the readers themselves (with the byte offset; with pyarrow's reason).
    """
    import gzip
    import zlib

    where = getattr(exc, "filename", None) or file
    if isinstance(exc, gzip.BadGzipFile):
        if str(exc).startswith("Not a gzipped file"):
            return DataError("expected gzip data (the name ends in .gz), found a file that is not gzip", file=where)
        return DataError(f"expected intact gzip data, found corrupt data ({exc})", file=where)
    if isinstance(exc, EOFError):
        return DataError("expected complete gzip data, found a truncated file (it ends before the gzip end-of-stream marker)",
                         file=where)
    if isinstance(exc, zlib.error):
        return DataError(f"expected intact gzip data, found corrupt data ({exc})", file=where)
    if isinstance(exc, FileNotFoundError):
        return DataError("no such file or folder", file=where)
    if isinstance(exc, PermissionError):
        return DataError("permission denied (cannot read it)", file=where)
    if isinstance(exc, OSError):
        return DataError(f"cannot read it ({exc.strerror or one_line(exc)})", file=where)
    return None


def one_line(exc: BaseException) -> str:
    """``str(exc)`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(exc).split())


@contextmanager
def reading(file: str) -> Iterator[None]:
    """Within the block, a failure to read ``file`` (see :func:`file_error`) is raised as its DataError."""
    try:
        yield
    except Exception as exc:
        err = file_error(exc, file)
        if err is None:
            raise
        raise err from None
