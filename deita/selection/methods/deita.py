"""DEITA: score-first, diversity-aware selection (Liu et al., ICLR 2024; hkust-nlp/deita).

Steps, each a small function: score every turn with the complexity and quality scorers (sharded,
cached) → evol score Σ_t c_t·q_t per conversation → embed every conversation (sharded, cached) →
order by the sort key (descending, NaN excluded; ties by pool index, or as the reference's pandas sort
with ``tie_break: reference``) → exact greedy filter that keeps a row iff its
max cosine similarity to the rows already kept is ≤ ``tau``, until ``budget`` rows are kept.

Table columns (one value per pool row): ``complexity_turns`` / ``quality_turns`` (per-turn scores, in
turn order), ``complexity`` / ``quality`` (their sums over turns; for a single-turn row the score
itself), ``evol_score`` (Σ_t c_t·q_t, the default sort key), ``n_turns``, ``complexity_truncated`` /
``quality_truncated`` (turns whose text was cut to fit ``max_length``), ``score_error`` ('' when fine)
and ``nn_sim`` (selected rows: cosine similarity to the nearest row kept before it; NaN otherwise).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

from deita.config import SelectionModels
from deita.data.pool_file import RowsAt, row_ids
from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector
from deita.selection.precomputed import PrecomputedInputs

SORT_COLUMNS = {"evol": "evol_score", "complexity": "complexity", "quality": "quality"}
"""``sort_key`` shorthands → table column; any other numeric table column name is accepted as is."""


@dataclass
class DeitaScorerOptions:
    """The complexity and quality scorers (LLM judges emitting a 1-6 digit)."""

    complexity_model: str = SelectionModels.deita_complexity
    """Model ref of the complexity scorer (hub name, local folder, ``tiny:llama``, ``packaged:smollm2``)."""
    quality_model: str = SelectionModels.deita_quality
    """Model ref of the quality scorer."""
    max_length: int = 2048
    """Prompt tokens kept per turn; longer turns lose the middle of their text (the template survives)."""
    max_tokens_per_batch: int = 16384
    """Tokens per forward pass (rows are batched longest-first): real tokens for Llama/Mistral scorers
    (the packed decoder computes no padding), padded tokens for other models; does not change the scores.
    On a CPU it is capped at 512, which measured fastest there (deita/models/batching.py)."""
    dtype: str = "float32"
    """Scorer weights dtype: float32 (reference), bfloat16 or float16."""
    device: str = "auto"
    """Torch device; 'auto' = this process's GPU when one is visible, else CPU."""
    prefix_cache: bool = True
    """Run the template text before the instruction once per scorer and every prompt from its keys/values
    (each prompt pays only its own tokens). Prompts whose tokens differ from the cached ones at the
    boundary run whole (counted in the log). Scores move only by float rounding (within 1e-5, tested)."""


@dataclass
class DeitaEmbedderOptions:
    """The embedder whose cosine similarities drive the diversity filter."""

    kind: str = SelectionModels.embedder_kind
    """Embedder: clm_last (reference: last real token's final hidden state), clm_mean, sentence_transformers."""
    model: str = SelectionModels.embedder
    """Model ref of the embedding model (the repo default; the paper used LLaMA-1-13B)."""
    max_length: int = 2048
    """Tokens kept per conversation (truncated on the right, as the reference)."""
    batch_size: int = 4
    """Conversations per forward pass (longest first); does not change the embeddings."""
    dtype: str = "float32"
    """Embedder weights dtype: float32, bfloat16 or float16."""
    template: str = "vicuna_v1.1"
    """How a conversation becomes text: vicuna_v1.1 (reference), only_answer, plain."""
    padding_side: str = "right"
    """Batch padding side; left and right give the same vectors (explicit position ids)."""
    prefix_cache: bool = True
    """Causal-LM embedders: run the template's fixed head (vicuna_v1.1: system prompt and "USER: ") once and
    every conversation from its keys/values; conversations whose tokens differ at the boundary run whole.
    Vectors move only by float rounding (raw vectors within 1e-5 on the tiny test models; normalised SmolLM2
    vectors by at most 4.6e-7 on 20 Alpaca rows)."""
    device: str = "auto"
    """Torch device; 'auto' = this process's GPU when one is visible, else CPU."""


@dataclass
class DeitaSelectionConfig(SelectionConfig):
    """DEITA selection: evol score (complexity × quality) first, then the tau diversity filter."""

    method: str = "deita"
    """Registry name of this method."""
    scorer: DeitaScorerOptions = field(default_factory=DeitaScorerOptions)
    """Complexity / quality scorer options."""
    embedder: DeitaEmbedderOptions = field(default_factory=DeitaEmbedderOptions)
    """Embedding options (used only when ``diversity`` is on)."""
    sort_key: str = "evol"
    """Ranking column: 'evol' (Σ c·q, reference), 'complexity', 'quality' (per-turn sums) or any numeric
    column of the table. 'complexity' or 'quality' loads only that scorer."""
    tie_break: str = "stable"
    """Order of rows with equal sort keys: 'stable' = by pool index (reproducible everywhere); 'reference' =
    as the original code's pandas ``sort_values(ascending=False)`` (numpy's unstable quicksort), so a pool
    with duplicate scores selects the same ids as the original on the same machine and numpy version."""
    diversity: bool = True
    """Apply the greedy tau filter; false = plain top-``budget`` by ``sort_key``."""
    tau: float = 0.9
    """Cosine similarity threshold: a row is rejected iff its similarity to a kept row is > tau."""
    block_size: int = 1024
    """Candidates resolved per matmul block in the exact greedy filter (does not change the result)."""
    filter_device: str = "auto"
    """Device of the greedy filter's matmuls; 'auto' = GPU when visible."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code (scorers and embedder)."""
    precomputed: PrecomputedInputs = field(default_factory=PrecomputedInputs)
    """Scores and/or embeddings made elsewhere, used instead of the scorers / the embedder (which are then
    neither loaded nor checked by preflight); ids are matched to the pool before any model loads."""


def needed_scorers(sort_key: str) -> tuple[str, ...]:
    """Which scorers a sort key needs: one for 'complexity'/'quality', both otherwise."""
    return (sort_key,) if sort_key in ("complexity", "quality") else ("complexity", "quality")


def combine_scores(cols: dict[str, list]) -> dict[str, list]:
    """Add per-row sums ``complexity`` / ``quality``, ``evol_score`` and ``n_turns`` to scorer columns."""
    from deita.selection.scorers.deita_scorer import evol_score

    out = dict(cols)
    n = len(next(iter(cols.values())))
    for kind in ("complexity", "quality"):
        if f"{kind}_turns" in cols:
            out[kind] = [float(sum(t)) for t in cols[f"{kind}_turns"]]
    if "complexity_turns" in cols and "quality_turns" in cols:
        out["evol_score"] = [evol_score(c, q) for c, q in zip(cols["complexity_turns"], cols["quality_turns"])]
    first = cols.get("complexity_turns") or cols.get("quality_turns")
    out["n_turns"] = [len(t) for t in first] if first else [0] * n
    errors = [""] * n
    for kind in ("complexity", "quality"):
        for i, e in enumerate(cols.get(f"{kind}_error", [])):
            if e and not errors[i]:
                errors[i] = f"{kind}: {e}"
    for kind in ("complexity", "quality"):
        out.pop(f"{kind}_error", None)
    out["score_error"] = errors
    return out


def distinct_conversations(rows: list[dict]) -> tuple[RowsAt, list[int]]:
    """The rows with distinct ``messages`` (the first copy of each, in pool order; read from ``rows`` when
    asked for, so a lazy pool stays lazy) and, for every pool row, the position of its copy in that list.

    Conversations are keyed by a 16-byte BLAKE2b digest of their canonical JSON, not the JSON itself, so the
    lookup holds ~100 bytes a row instead of a second copy of the pool's text."""
    import hashlib
    import json

    first: dict[bytes, int] = {}
    unique: list[int] = []
    slot: list[int] = []
    for i, row in enumerate(rows):
        text = json.dumps(row.get("messages"), sort_keys=True, ensure_ascii=False)
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key not in first:
            first[key] = len(unique)
            unique.append(i)
        slot.append(first[key])
    return RowsAt(rows, unique), slot


def from_file_rows(res, file_rows):
    """A filter result over a precomputed file's rows, with its kept rows turned back into pool positions."""
    import dataclasses

    import numpy as np

    pool_of = np.empty(int(file_rows.max()) + 1 if file_rows.size else 0, dtype=np.int64)
    pool_of[file_rows] = np.arange(file_rows.size, dtype=np.int64)
    return dataclasses.replace(res, kept=pool_of[np.asarray(res.kept, dtype=np.int64)])


def check_tie_break(tie_break: str) -> None:
    """Raise :class:`deita.validate.ConfigError` naming ``selection.tie_break`` unless it is a known order."""
    from deita.selection.ranking import TIE_BREAKS
    from deita.validate import require

    require(tie_break in TIE_BREAKS, "selection.tie_break", f"must be one of {list(TIE_BREAKS)}, got {tie_break!r}")


@SELECTORS.register("deita")
class DeitaSelector(Selector):
    """Score (complexity, quality) → evol → embed → order (``tie_break``) → exact greedy tau filter."""

    config_class = DeitaSelectionConfig

    @classmethod
    def check(cls, cfg) -> None:
        """tau in (0, 1], positive sizes, known dtypes, template and padding side."""
        from deita.models.loading import DTYPE_NAMES
        from deita.selection.embedders.render import RENDERERS
        from deita.validate import require_choice, require_range

        require_range(cfg.tau, "selection.tau", gt=0, le=1)
        require_range(cfg.block_size, "selection.block_size", ge=1)
        for key in ("scorer.max_length", "scorer.max_tokens_per_batch", "embedder.max_length", "embedder.batch_size"):
            node, name = key.split(".")
            require_range(getattr(getattr(cfg, node), name), f"selection.{key}", ge=1)
        require_choice(cfg.scorer.dtype, "selection.scorer.dtype", list(DTYPE_NAMES))
        require_choice(cfg.embedder.dtype, "selection.embedder.dtype", list(DTYPE_NAMES))
        require_choice(cfg.embedder.template, "selection.embedder.template", list(RENDERERS))
        require_choice(cfg.embedder.padding_side, "selection.embedder.padding_side", ["left", "right"])

    def model_keys(self) -> dict[str, str]:
        """The scorers ``sort_key`` needs, and the embedder when ``diversity`` is on."""
        cfg, pre = self.cfg, self.cfg.precomputed
        keys = {} if pre.scores else {f"scorer.{kind}_model": getattr(cfg.scorer, f"{kind}_model")
                                      for kind in needed_scorers(cfg.sort_key)}
        return {**keys, "embedder.model": cfg.embedder.model} if cfg.diversity and not pre.embeddings else keys

    def input_files(self) -> dict[str, str]:
        """The precomputed files it reads (hashed into the stage fingerprint); embeddings only with diversity on."""
        from deita.selection.precomputed import input_files

        return input_files(self.cfg.precomputed, embeddings=self.cfg.diversity)

    def preflight(self) -> None:
        """Open the precomputed files: columns, matrix shape, ids count (:func:`deita.selection.precomputed.preflight`)."""
        from deita.selection.precomputed import preflight

        preflight(self.cfg.precomputed, self.cfg.sort_key, embeddings=self.cfg.diversity)

    def score(self, rows: list[dict], ctx: SelectionContext) -> dict[str, list]:
        """Per-row score columns (cached, sharded), combined into sums and the evol score.

        Each distinct conversation is scored once and its scores shared by its copies (an error text names
        the first copy), so duplicate rows tie exactly wherever they sit in the pool, as under the
        reference's one-at-a-time scoring; scored in different chunks or batches they would differ by float
        rounding, and ``tie_break: reference`` could not order them as the reference does."""
        from deita.fingerprint import hash_rows
        from deita.selection.scorers.pool import score_pool

        if self.cfg.precomputed.scores:
            from deita.selection.precomputed import load_scores

            return load_scores(self.cfg.precomputed.scores, row_ids(rows), self.cfg.sort_key)
        unique, slot = distinct_conversations(rows)
        fingerprint = ctx.data_fingerprint if len(unique) == len(rows) else hash_rows(unique)
        opts, cols = self.cfg.scorer, {}
        for kind in needed_scorers(self.cfg.sort_key):
            ref = opts.complexity_model if kind == "complexity" else opts.quality_model
            cols.update(score_pool(
                unique, kind, ctx.model_resolver(ref), cache=ctx.cache, data_fingerprint=fingerprint,
                dist_info=ctx.dist, on_error=self.cfg.on_error, max_length=opts.max_length,
                max_tokens_per_batch=opts.max_tokens_per_batch, dtype=opts.dtype, device=opts.device,
                trust_remote_code=self.cfg.trust_remote_code, prefix_cache=opts.prefix_cache))
        if len(unique) < len(rows):
            cols = {name: [values[j] for j in slot] for name, values in cols.items()}
        return combine_scores(cols)

    def embed(self, rows: list[dict], ctx: SelectionContext):
        """L2-normalised float32 embeddings of every row (cached, sharded)."""
        from deita.selection.embedders.pool import embed_pool

        e = self.cfg.embedder
        return embed_pool(rows, e.kind, ctx.model_resolver(e.model), cache=ctx.cache,
                          data_fingerprint=ctx.data_fingerprint, dist_info=ctx.dist, on_error=self.cfg.on_error,
                          template=e.template, max_length=e.max_length, batch_size=e.batch_size, dtype=e.dtype,
                          device=e.device, padding_side=e.padding_side, trust_remote_code=self.cfg.trust_remote_code,
                          prefix_cache=e.prefix_cache)

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:
        """Run the DEITA steps over ``rows``; see the module docstring for the table columns. The greedy
        filter stops once it has kept ``limit`` rows."""
        import numpy as np

        from deita.distributed import broadcast_from_main
        from deita.models.loading import resolve_device
        from deita.selection.filters import greedy_diverse
        from deita.selection.ranking import score_order

        cfg, timings = self.cfg, {}
        check_tie_break(cfg.tie_break)
        file_rows = None  # precomputed embeddings: each pool row's row in the file (ids matched before any model loads)
        if cfg.diversity and cfg.precomputed.embeddings:
            from deita.selection.precomputed import load_embeddings

            emb, file_rows = load_embeddings(cfg.precomputed.embeddings, row_ids(rows))
        t0 = time.perf_counter()
        table = self.score(rows, ctx)
        timings["score_s"] = time.perf_counter() - t0
        column = SORT_COLUMNS.get(cfg.sort_key, cfg.sort_key)
        if column not in table:
            raise KeyError(f"selection.sort_key {cfg.sort_key!r}: no column {column!r}; have {sorted(table)}")
        keys = np.asarray(table[column], dtype=np.float64)
        order = score_order(keys, tie_break=cfg.tie_break)
        nn_sim = [math.nan] * len(rows)
        report = {"sort_key": column, "tie_break": cfg.tie_break, "pool_rows": len(rows), "scored_rows": int(order.size),
                  "nan_rows": int(len(rows) - order.size)}
        shortfall = (f"{order.size} of {len(rows)} rows have a finite {column} ({len(rows) - order.size} could not be "
                     "scored, see score_error)")
        for kind in ("complexity", "quality"):
            if f"{kind}_turns" in table:
                report[f"{kind}_nan_turns"] = int(sum(math.isnan(v) for t in table[f"{kind}_turns"] for v in t))
                report[f"{kind}_truncated_turns"] = int(sum(table[f"{kind}_truncated"]))
        if cfg.diversity:
            t1 = time.perf_counter()
            if file_rows is None:
                emb = self.embed(rows, ctx)
            timings["embed_s"] = time.perf_counter() - t1
            t2 = time.perf_counter()
            # the filter reads only the ordered rows (NaN-scored rows are not in ``order``), straight from the
            # stored chunks or the precomputed file (in its own row order): never the whole matrix. It runs on
            # the main process alone (one reader of the shared store, not one per rank); the others receive
            # its result
            res = broadcast_from_main(greedy_diverse(
                emb, order if file_rows is None else file_rows[order], tau=cfg.tau, budget=-1 if limit is None else limit,
                block_size=cfg.block_size, device=resolve_device(cfg.filter_device), progress=True,
            ) if ctx.dist.is_main else None)
            if file_rows is not None:
                res = from_file_rows(res, file_rows)
            ranking = [int(i) for i in res.kept]
            for pos, i in enumerate(ranking):
                nn_sim[i] = float(res.nn_sim[pos])
            timings["filter_s"] = time.perf_counter() - t2
            report.update(tau=float(cfg.tau), rejected_by_tau=int(res.rejected), scanned=int(res.scanned),
                          embedding_dim=int(emb.shape[1]))
            shortfall += (f"; the tau={cfg.tau} filter rejected {res.rejected} of them as too similar to a kept "
                          "row; raise selection.tau to keep more")
        else:
            ranking = order.tolist()
        table["nn_sim"] = nn_sim
        report.update(timings=timings)
        return SelectionResult(table=table, ranking=ranking, shortfall=shortfall, report=report, score_column=column,
                               labels=COLUMN_LABELS, scatter=("complexity", "quality"),
                               greedy=res if cfg.diversity else None)


COLUMN_LABELS = {
    "complexity": "complexity (judge's expected score 1-6, summed over turns)",
    "quality": "quality (judge's expected score 1-6, summed over turns)",
    "evol_score": "evol score (sum over turns of complexity x quality)",
    "n_turns": "turns per conversation (count)",
    "complexity_truncated": "turns truncated for the complexity scorer (count)",
    "quality_truncated": "turns truncated for the quality scorer (count)",
    "nn_sim": "cosine similarity to the nearest earlier kept row",
}
"""Axis labels (with units) of the table columns, for the selection report."""
