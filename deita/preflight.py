"""Preflight: before the first stage runs, every input of every chosen stage is opened and checked.

What is checked comes from the stage registry (:mod:`deita.stages`), so a new stage is preflighted by
declaring its inputs:

* each source under the stage's ``data_keys`` (and each of its ``extra_sources``: Nuggets' anchor file, the
  eval stage's held-out pool rows) is opened and its first :data:`HEAD_RECORDS` records of each file are
  normalised as the stage's ``data_kind`` (format, fields, ``on_error`` as configured), once per config key
  however many stages read it; the full file is streamed and checked by the stage itself, so preflight
  costs the same for a 1 KB and a 10 GB pool (with ``on_error: skip``, a head of bad records only makes it
  read on to the first usable one: :data:`PROBE_GROWTH`);
* each reference of the stage's ``model_refs`` is resolved to a config and a tokenizer
  (:func:`deita.models.resolve.check_model_ref`) without loading any weights;
* the stage's own ``preflight`` hook opens its other input files (``input_files``: precomputed scores and
  embeddings) and checks their form;
* each upstream stage it requires is in ``stages`` or finished in the run directory.

Any failure is a :class:`deita.validate.ConfigError` naming the config key and the path:
``model.name_or_path: /data/llama: no such folder``, ``data.preference[0].path: pref.jsonl: record 3 ...``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

from omegaconf import DictConfig, OmegaConf

from deita.validate import ConfigError

log = logging.getLogger(__name__)

HEAD_RECORDS = 64
"""Records of each data file that preflight normalises."""
PROBE_GROWTH = 64
"""With ``on_error: skip``, a head of only bad records is not an error yet: preflight reads ``PROBE_GROWTH``
times more records, then more, until one is usable (the whole file at most: a file with no usable record
fails here, as it would in its stage)."""


class SourceError(ConfigError):
    """A data source that fails preflight; ``file`` is the file the data layer named (as on DataError)."""

    def __init__(self, message: str, file: str | None = None):
        super().__init__(message)
        self.file = file


@contextmanager
def naming_source(key: str, source) -> Iterator[None]:
    """Turn a data error raised while ``source`` is read into a :class:`SourceError` naming ``key``
    (``data.pool[0].path``) before the file, record and field: the one form of a bad data source for
    preflight and plan mode."""
    from deita.data.errors import DataError

    try:
        yield
    except DataError as err:
        raise SourceError(f"{key}: {err}", err.file) from None
    except ValueError as err:  # a format that gives another kind of rows, an unknown format name
        path = _path_of(source)
        raise SourceError(f"{key}: {path}: {err}", path) from None


def _path_of(source) -> str:
    """The path of a data source as the error names it (the source itself when it has none)."""
    from deita.data.errors import DataError
    from deita.data.sources import source_options

    try:
        return source_options(source)["path"]
    except DataError:
        return str(source)


def check_source(source, kind: str, key: str) -> None:
    """Open ``source`` (a data-source node) and normalise its first records as ``kind`` rows; a
    :class:`ConfigError` naming ``key`` (``data.pool[0].path``) and the file otherwise."""
    from deita.data.loading import NoUsableRecords, load_rows
    from deita.data.sources import reader_args

    with naming_source(key, source):
        path, args = reader_args(source)
        head: int | None = HEAD_RECORDS
        while True:
            try:
                load_rows(path, kind=kind, **args, head=head)
                break
            except NoUsableRecords:
                if args["on_error"] != "skip" or head is None:
                    raise
                head = head * PROBE_GROWTH if head < HEAD_RECORDS * PROBE_GROWTH ** 2 else None


def check_upstreams(cfg: DictConfig, stage, run_dir) -> None:
    """Each upstream ``stage`` requires is in ``cfg.stages`` or finished in ``run_dir``
    (:func:`deita.pipeline.find_upstream`, with the chosen stages taken as done)."""
    from deita.pipeline import find_upstream

    planned = {name: {"fingerprint": "planned"} for name in cfg.stages}
    find_upstream(cfg, stage, run_dir, planned)


def preflight(cfg: DictConfig, *, upstreams: bool = True) -> float:
    """Check every input of every stage in ``cfg.stages`` (see the module doc); returns the seconds it took.
    ``upstreams=False`` leaves out the upstream stages (a sweep checks its points before their run dirs exist)."""
    from pathlib import Path

    from deita import stages
    from deita.models.resolve import check_model_ref

    started = time.perf_counter()
    seen: set[str] = set()
    for stage in stages.in_pipeline_order(cfg.stages):
        if upstreams:
            check_upstreams(cfg, stage, Path(cfg.run_dir))
        for key in stage.data_keys:
            for i, source in enumerate(OmegaConf.select(cfg, key) or []):
                where = f"{key}[{i}].path"
                if where not in seen:
                    seen.add(where)
                    check_source(source, stage.data_kind, where)
        for key, (source, kind) in stage.extra_sources(cfg).items():
            if key not in seen:
                seen.add(key)
                check_source(source, kind, key)
        for key, ref in stage.model_refs(cfg).items():
            if key not in seen:
                seen.add(key)
                check_model_ref(str(ref), key)
        if stage.preflight is not None:
            stage.preflight(cfg)
    seconds = time.perf_counter() - started
    log.info("preflight: every data source, model and input file of stages %s checked in %.2f s", list(cfg.stages), seconds)
    return seconds
