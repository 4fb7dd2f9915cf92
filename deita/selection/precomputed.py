"""Scores and embeddings made elsewhere: ``selection.precomputed.scores`` / ``selection.precomputed.embeddings``.

With them DEITA runs its exact ordering and tau filter without loading a scorer or an embedder (for
example on the released DEITA scores, or on embeddings from another model).

Scores file (``.parquet``, ``.jsonl`` or ``.json`` lines): one row per pool row, an ``id`` column (matched to
the pool's row ids as text) and score columns, read by these rules:

* ``complexity_turns`` / ``quality_turns``: per-turn scores (lists, in turn order), as DEITA's own table.
  The sums ``complexity`` / ``quality`` and ``evol_score`` = Σ_t c_t·q_t are computed from them.
* ``complexity`` / ``quality``: one number per row; without the per-turn column it is taken as one turn.
* ``evol_score``, or any column named by ``selection.sort_key``: a final score, used as given.

A column the file gives is used as given; only missing sums and ``evol_score`` (or a row's null/NaN in a given
one) are derived. The sort
column must be in the file or derivable from it. A NaN score keeps the row out of the selection, as a row
the scorer could not score.

Embeddings: a ``.npy`` matrix (N × D, float32 or float16; normalised by the filter) with its row ids in
a sibling file ``<name>.ids.json`` (a JSON list) or ``<name>.ids.txt`` (one id a line), or an ``.npz``
with arrays ``embeddings`` and ``ids``. A ``.npy`` is memory-mapped and read in score order, never whole.

Ids must match the pool exactly: a pool id missing from the file, an id in the file that is not in the
pool, or an id twice in the file is a :class:`deita.validate.ConfigError` (exit 2) naming the config key,
the file, one such id and how many there are. Preflight checks each file's form (columns, shape, ids
count); the ids are matched when the select stage has loaded the pool, before any model loads.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from deita.validate import ConfigError

SCORES_KEY = "selection.precomputed.scores"
EMBEDDINGS_KEY = "selection.precomputed.embeddings"
SCORE_KINDS = ("complexity", "quality")


@dataclass
class PrecomputedInputs:
    """Scores and embeddings made elsewhere, used instead of the model passes (see
    :mod:`deita.selection.precomputed` for the file layouts)."""

    scores: Optional[str] = None
    """A .parquet or .jsonl file with an ``id`` column (the pool's row ids) and score columns:
    ``complexity_turns``/``quality_turns`` (per-turn lists), ``complexity``/``quality`` (one number per row, a
    single turn when no per-turn list is given) and/or a final ``evol_score`` (or the ``sort_key`` column).
    Given values are used as is; missing sums and evol_score (and null cells) are derived from the turns. No scorer loads. null: score."""
    embeddings: Optional[str] = None
    """A .npy matrix (rows × dim) with its ids in ``<name>.ids.json`` (JSON list) or ``<name>.ids.txt`` (one a
    line) beside it, or an .npz with ``embeddings`` and ``ids`` arrays. No embedder loads. null: embed.
    In both files every pool id must appear exactly once and no other id may (exit 2 otherwise)."""


def ids_file(path: str | Path) -> Optional[Path]:
    """The ids file beside a ``.npy`` (``X.ids.json``, else ``X.ids.txt``); None when neither exists."""
    p = Path(path)
    for suffix in (".ids.json", ".ids.txt"):
        candidate = p.with_name(p.name[: -len(p.suffix)] + suffix) if p.suffix else p.with_name(p.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def input_files(pre: Any, embeddings: bool = True) -> dict[str, str]:
    """The files ``pre`` (a :class:`PrecomputedInputs` node) names, by config key, ids files included: they
    are hashed into the select stage's fingerprint. ``embeddings=False`` (no diversity filter) leaves the
    embeddings out: they are not read."""
    out: dict[str, str] = {}
    if pre is None:
        return out
    if pre.scores:
        out[SCORES_KEY] = str(pre.scores)
    if pre.embeddings and embeddings:
        out[EMBEDDINGS_KEY] = str(pre.embeddings)
        ids = ids_file(pre.embeddings)
        if ids is not None:
            out[f"{EMBEDDINGS_KEY} (ids)"] = str(ids)
    return out


def _fail(key: str, path: Any, message: str) -> ConfigError:
    return ConfigError(f"{key}: {path}: {message}")


def _require_file(key: str, path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise _fail(key, path, "no such file")
    return p


def _score_frame(path: str, head: bool = False):
    """The scores file as a pandas DataFrame (only its first record(s) when ``head``)."""
    import pandas as pd

    p = _require_file(SCORES_KEY, path)
    try:
        if p.suffix == ".parquet":
            if head:
                import pyarrow.parquet as pq

                return pq.ParquetFile(p).schema_arrow.empty_table().to_pandas()
            return pd.read_parquet(p)
        if p.suffix in (".jsonl", ".json"):
            return pd.read_json(p, lines=True, nrows=1 if head else None, dtype=False)
    except Exception as err:  # a damaged file: pandas/pyarrow's own message, named
        raise _fail(SCORES_KEY, path, f"cannot be read: {err}") from None
    raise _fail(SCORES_KEY, path, "expected a .parquet or .jsonl file")


def _sort_column(sort_key: str) -> str:
    from deita.selection.methods.deita import SORT_COLUMNS

    return SORT_COLUMNS.get(sort_key, sort_key)


def check_score_columns(columns, sort_key: str, path: str) -> None:
    """The file has ``id`` and gives or derives the sort column of ``sort_key``; ConfigError otherwise."""
    cols = set(columns)
    if "id" not in cols:
        raise _fail(SCORES_KEY, path, f"no 'id' column (has {sorted(cols)})")
    column = _sort_column(sort_key)
    have = {k for k in SCORE_KINDS if k in cols or f"{k}_turns" in cols}
    derivable = (column in cols or (column in SCORE_KINDS and column in have)
                 or (column == "evol_score" and have == set(SCORE_KINDS)))
    if not derivable:
        raise _fail(SCORES_KEY, path, f"selection.sort_key={sort_key!r} needs a {column!r} column"
                    + (" or complexity and quality (per-turn lists or numbers)" if column == "evol_score" else "")
                    + f"; the file has {sorted(cols)}")


def _embedding_parts(path: str, mmap: bool = True):
    """(matrix, ids list or None when only checking the header) of an embeddings file."""
    import numpy as np

    p = _require_file(EMBEDDINGS_KEY, path)
    try:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                missing = [name for name in ("embeddings", "ids") if name not in z.files]
                if missing:
                    raise _fail(EMBEDDINGS_KEY, path, f"no {missing[0]!r} array (has {sorted(z.files)})")
                return z["embeddings"], [str(i) for i in z["ids"].tolist()]
        if p.suffix != ".npy":
            raise _fail(EMBEDDINGS_KEY, path, "expected a .npy (with a .ids.json/.ids.txt beside it) or an .npz")
        matrix = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ConfigError:
        raise
    except Exception as err:
        raise _fail(EMBEDDINGS_KEY, path, f"cannot be read: {err}") from None
    ids_path = ids_file(p)
    if ids_path is None:
        raise _fail(EMBEDDINGS_KEY, path, f"no ids file beside it ({p.stem}.ids.json or {p.stem}.ids.txt)")
    try:
        if ids_path.suffix == ".json":
            ids = json.loads(ids_path.read_text())
            if not isinstance(ids, list):
                raise ValueError("expected a JSON list of ids")
        else:
            ids = ids_path.read_text().splitlines()
    except (OSError, ValueError) as err:
        raise _fail(EMBEDDINGS_KEY, ids_path, f"cannot be read: {err}") from None
    return matrix, [str(i) for i in ids]


def check_embeddings(path: str):
    """Open the embeddings file and its ids: a 2-D float matrix with one id per row; returns them."""
    import numpy as np

    matrix, ids = _embedding_parts(path)
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise _fail(EMBEDDINGS_KEY, path, f"expected a 2-D float matrix, found shape {matrix.shape} {matrix.dtype}")
    if len(ids) != matrix.shape[0]:
        raise _fail(EMBEDDINGS_KEY, path, f"{matrix.shape[0]} rows but {len(ids)} ids")
    return matrix, ids


def preflight(pre: Any, sort_key: str, embeddings: bool = True) -> None:
    """Preflight's check of the precomputed files: readable, the needed columns, the matrix's shape and
    ids count (the embeddings only when ``embeddings``: the filter runs). Ids are matched against the pool
    by :func:`align` once the pool is loaded."""
    if pre is None:
        return
    if pre.scores:
        check_score_columns(_score_frame(pre.scores, head=True).columns, sort_key, pre.scores)
    if pre.embeddings and embeddings:
        check_embeddings(pre.embeddings)


def align(file_ids: list[str], pool_ids: list[str], key: str, path: Any):
    """For each pool row, its row in the file (int64 array). ConfigError naming ``key``, ``path``, an
    offending id and the count when an id is in the file twice, a pool id is missing, or a file id is extra."""
    import numpy as np

    where: dict[str, int] = {}
    repeats = []
    for i, rid in enumerate(file_ids):
        if where.setdefault(rid, i) != i:
            repeats.append(rid)
    if repeats:
        raise _fail(key, path, f"{len(repeats)} ids appear more than once, e.g. {repeats[0]!r}")
    missing = [rid for rid in pool_ids if rid not in where]
    if missing:
        raise _fail(key, path, f"{len(missing)} of {len(pool_ids)} pool ids are missing, e.g. {missing[0]!r}")
    if len(where) > len(pool_ids):
        pool = set(pool_ids)
        extra = [rid for rid in file_ids if rid not in pool]
        raise _fail(key, path, f"{len(extra)} ids are not in the pool, e.g. {extra[0]!r}")
    return np.fromiter((where[rid] for rid in pool_ids), dtype=np.int64, count=len(pool_ids))


def _as_turns(value) -> list[float]:
    import numpy as np

    if value is None or (isinstance(value, float) and value != value):
        return [float("nan")]
    return [float(v) for v in np.asarray(value, dtype=np.float64).ravel()]


def load_scores(path: str, pool_ids: list[str], sort_key: str) -> dict[str, list]:
    """DEITA's score table (see the module doc), one entry per pool row in pool order."""
    from deita.selection.methods.deita import combine_scores

    frame = _score_frame(path)
    check_score_columns(frame.columns, sort_key, path)
    index = align([str(i) for i in frame["id"].tolist()], pool_ids, SCORES_KEY, path)
    frame = frame.iloc[index].reset_index(drop=True)
    n = len(pool_ids)
    turns: dict[str, list] = {}
    for kind in SCORE_KINDS:
        column = f"{kind}_turns" if f"{kind}_turns" in frame else kind if kind in frame else None
        if column is not None:
            turns[f"{kind}_turns"] = [_as_turns(v) for v in frame[column].tolist()]
            turns[f"{kind}_truncated"] = [0] * n
    table = combine_scores(turns) if turns else {"n_turns": [0] * n, "score_error": [""] * n}
    for column in dict.fromkeys((*SCORE_KINDS, "evol_score", _sort_column(sort_key))):
        if column in frame:
            given = [float(v) for v in frame[column].astype("float64").tolist()]
            derived = table.get(column, [math.nan] * n)
            table[column] = [d if math.isnan(g) else g for g, d in zip(given, derived)]
    return table


def load_embeddings(path: str, pool_ids: list[str]):
    """(matrix, index): the file's matrix (memory-mapped for .npy) and, per pool row, its row in it."""
    matrix, ids = check_embeddings(path)
    return matrix, align(ids, pool_ids, EMBEDDINGS_KEY, path)
