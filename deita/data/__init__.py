"""Canonical data: every input format becomes one row shape at the edge (see ``formats``)."""

from deita.data.errors import DataError
from deita.data.formats import FORMATS, KINDS, detect_format, normalise_record
from deita.data.loading import LoadResult, load_rows, write_jsonl
from deita.data.readers import read_jsonl

__all__ = [
    "DataError",
    "FORMATS",
    "KINDS",
    "LoadResult",
    "detect_format",
    "load_rows",
    "normalise_record",
    "read_jsonl",
    "write_jsonl",
]
