"""Nuggets selection: one-shot golden score (Li et al., 2023), then a threshold or top-k rule,
optionally followed by the DEITA diversity filter.

Modes (details in :mod:`deita.selection.nuggets`): ``faithful`` reproduces pldlgb/nuggets token for
token (``[PAD]`` resize, BOS only on the one-shot demonstration, anchors cut at 200 tokens, fp32);
``clean`` puts BOS in both passes, skips the ``[PAD]`` resize and lets ``anchor_max_length`` and ``dtype``
vary.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from deita.config import SelectionModels
from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector

log = logging.getLogger(__name__)


@dataclass
class NuggetsAnchorsConfig:
    """Where the anchors (predefined tasks) come from."""

    method: str = "kmeans"
    """kmeans: the pool example nearest each k-means centroid (reference; faithful mode keeps a row that is
    nearest to two centroids twice, as the reference, clean mode once); random: k uniform pool rows; file:
    the rows of ``path`` (any file the data layer loads)."""
    k: int = 100
    """Number of clusters (kmeans) or rows (random). The reference uses 100."""
    seed: int = 0
    """Seed of k-means++ / the random draw (the reference's KMeans uses random_state=0)."""
    kmeans: str = "sklearn"
    """k-means for method=kmeans: 'sklearn' (the reference's KMeans(n_clusters=k, random_state=seed) with
    scikit-learn 1.3's defaults: k-means++, n_init=10, Lloyd, max_iter=300, tol=1e-4; the only choice in
    faithful mode) or 'faiss' (clean mode: faiss-cpu k-means, one seeded run of 25 iterations on <= 256
    sampled rows per centroid; much faster on 300K x 4096 pools, other anchors; needs
    ``pip install deita[faiss]``)."""
    path: Optional[str] = None
    """Anchor file for method=file."""
    embedder: str = "reference"
    """Embedding for kmeans: 'reference' (AutoModel mean over all padded positions, pads included, as the
    reference) or an EMBEDDERS name (clm_last, clm_mean, sentence_transformers)."""
    embedder_model: Optional[str] = None
    """Model ref of the embedder; None uses the scoring model (as the reference)."""
    embed_max_length: int = 512
    """Tokens per text for the anchor embedding (reference: 512, padded to it)."""
    embed_batch_size: int = 30
    """Texts per embedding forward (reference: 30; the 'reference' embedding pads to a fixed length, so
    batching does not change it)."""


@dataclass
class NuggetsSelectionConfig(SelectionConfig):
    """Nuggets golden-score selection (``selection=nuggets``)."""

    method: str = "nuggets"
    """Registry name."""
    budget: int = -1
    """Rows to keep from the ranking (the rule's rows, after the diversity filter); -1 keeps every row the
    rule accepts."""
    model: str = SelectionModels.nuggets
    """Scoring LLM (model ref: hub name, folder, tiny:llama, packaged:smollm2). Reference: LLaMA-7B base."""
    mode: str = "faithful"
    """'faithful' (reference tokens and quirks, fp32, 200-token anchors) or 'clean' (BOS in both passes,
    no [PAD] resize, configurable anchor_max_length and dtype)."""
    anchors: NuggetsAnchorsConfig = field(default_factory=NuggetsAnchorsConfig)
    """The anchor set."""
    anchor_max_length: Optional[int] = 200
    """Anchor tokens kept (right truncation); answer tokens past it are not scored. Faithful: must be 200.
    Clean: any value, or null for no truncation."""
    dtype: str = "float32"
    """Scoring dtype. Faithful: must be float32 (GS compares near-equal sums with a strict '>')."""
    device: str = "auto"
    """'auto' (this rank's GPU if any, else CPU), 'cpu', 'cuda', ..."""
    trust_remote_code: bool = False
    """Passed to from_pretrained; never on by default."""
    anchor_batch_size: int = 8
    """Anchors per one-shot forward (results do not depend on it). 8, the reference's batch size: early
    decision checks a candidate after each batch, so small batches stop rejected candidates sooner, and on
    CPU the full computation runs as fast at 8 as at 32 (BENCHMARKS.md, "Nuggets early decision"). On a GPU
    with exact_scores=true, larger batches may pay."""
    candidate_batch_size: int = 1
    """Candidates per one-shot forward (results do not depend on it). 1 is fastest on CPU: several need
    right-padded demonstrations, hence a padding mask and K/V copies (benchmarks/results/nuggets.md)."""
    zero_shot_batch_size: int = 16
    """Anchors per zero-shot forward."""
    exact_scores: bool = False
    """True: run every candidate against every anchor, so every golden score is exact. False (default):
    stop a candidate once the rule has rejected it for certain (threshold: more losses than GS > threshold
    allows; top_k/top_fraction: k candidates of its chunk rank above it for certain), anchor batches visited
    in an order drawn from selection.seed. The selected rows and their order are identical either way
    (every row the rule may accept runs every anchor); a rejected row's golden_score is NaN in
    scores.parquet, with golden_score_low/high its bounds and golden_exact false; the manifest's
    method_report gives the share of anchor passes skipped."""
    threshold: Optional[float] = 0.85
    """Keep GS > threshold (strict, as the reference's top_sample.py). Set null to use top_k/top_fraction."""
    top_k: Optional[int] = None
    """Keep the top_k rows by GS (ties by pool index). Needs threshold: null."""
    top_fraction: Optional[float] = None
    """Keep the top int(n * top_fraction) rows by GS. Needs threshold: null."""
    diversity: bool = False
    """Run the DEITA greedy diversity filter over the accepted rows, in GS order."""
    tau: float = 0.9
    """Cosine-similarity threshold of the diversity filter (reject if > tau to a kept row)."""
    diversity_embedder: str = "clm_last"
    """EMBEDDERS name for the diversity filter."""
    diversity_model: Optional[str] = None
    """Model ref of the diversity embedder; None uses the scoring model."""


def check_config(cfg) -> None:
    """Raise :class:`deita.validate.ConfigError` naming the key for values out of range and option
    combinations the method cannot honour (run at composition, and again by ``rank``)."""
    from deita.selection.nuggets.tokens import MODES, REFERENCE_ANCHOR_MAX_LENGTH
    from deita.validate import ConfigError, require_choice, require_range

    require_choice(cfg.mode, "selection.mode", list(MODES))
    if cfg.mode == "faithful" and cfg.anchor_max_length != REFERENCE_ANCHOR_MAX_LENGTH:
        raise ConfigError(f"config key 'selection.anchor_max_length': mode=faithful fixes it at "
                          f"{REFERENCE_ANCHOR_MAX_LENGTH}, got {cfg.anchor_max_length}; use selection.mode=clean to change it")
    if cfg.mode == "faithful" and cfg.dtype not in ("float32", "fp32"):
        raise ConfigError(f"config key 'selection.dtype': mode=faithful scores in float32, got {cfg.dtype!r}; "
                          "use selection.mode=clean")
    require_range(cfg.anchor_max_length, "selection.anchor_max_length", ge=1, allow_none=True)
    require_choice(cfg.anchors.method, "selection.anchors.method", ["kmeans", "random", "file"])
    require_range(cfg.anchors.k, "selection.anchors.k", ge=1)
    if cfg.anchors.method == "file" and not cfg.anchors.path:
        raise ConfigError("config key 'selection.anchors.path': anchors.method=file needs a file of anchor rows")
    check_anchors_config(cfg)
    rules = [n for n in ("threshold", "top_k", "top_fraction") if getattr(cfg, n) is not None]
    if len(rules) != 1:
        raise ConfigError(f"config key 'selection.threshold': set exactly one of selection.threshold/top_k/top_fraction "
                          f"(the others null), got {rules or 'none'}")
    require_range(cfg.threshold, "selection.threshold", ge=0, le=1, allow_none=True)  # 1: nothing passes, said at run time
    require_range(cfg.top_k, "selection.top_k", ge=1, allow_none=True)
    require_range(cfg.top_fraction, "selection.top_fraction", gt=0, le=1, allow_none=True)
    require_range(cfg.tau, "selection.tau", gt=0, le=1)
    for key in ("anchor_batch_size", "candidate_batch_size", "zero_shot_batch_size"):
        require_range(getattr(cfg, key), f"selection.{key}", ge=1)
    require_range(cfg.anchors.embed_max_length, "selection.anchors.embed_max_length", ge=1)
    require_range(cfg.anchors.embed_batch_size, "selection.anchors.embed_batch_size", ge=1)


def check_anchors_config(cfg) -> None:
    """Raise :class:`deita.validate.ConfigError` naming ``selection.anchors.kmeans`` when the k-means backend
    is unknown, not the reference's in faithful mode, or not installed."""
    from deita.selection.nuggets.kmeans import KMEANS_BACKENDS
    from deita.validate import ConfigError

    backend = cfg.anchors.kmeans
    key = "config key 'selection.anchors.kmeans'"
    if backend not in KMEANS_BACKENDS:
        raise ConfigError(f"{key}: must be one of {list(KMEANS_BACKENDS)}, got {backend!r}")
    if cfg.anchors.method != "kmeans":
        return
    if cfg.mode == "faithful" and backend != "sklearn":
        raise ConfigError(f"{key}: mode=faithful clusters with the reference's scikit-learn KMeans, got "
                          f"{backend!r}; use selection.mode=clean for {backend}")
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"{key}: 'faiss' needs faiss-cpu, which is not installed ({err}); "
                              "pip install 'deita[faiss]' (faiss-cpu==1.15.1)") from None


@SELECTORS.register("nuggets")
class NuggetsSelector(Selector):
    """Scores every pool row with the golden score, keeps rows by the rule, then the optional filter."""

    config_class = NuggetsSelectionConfig

    @classmethod
    def check(cls, cfg) -> None:
        """See :func:`check_config`."""
        check_config(cfg)

    def source_keys(self) -> dict[str, str]:
        """The anchor file, with ``anchors.method=file``."""
        return {"anchors.path": self.cfg.anchors.path} if self.cfg.anchors.method == "file" else {}

    def model_keys(self) -> dict[str, str]:
        """The scoring model, the k-means embedder's when it has its own, the diversity embedder's likewise."""
        cfg = self.cfg
        keys = {"model": cfg.model}
        if cfg.anchors.method == "kmeans" and cfg.anchors.embedder_model:
            keys["anchors.embedder_model"] = cfg.anchors.embedder_model
        if cfg.diversity and cfg.diversity_model:
            keys["diversity_model"] = cfg.diversity_model
        return keys

    def planned_passes(self, n_rows: int, pool_tokens: float) -> list[tuple[str, str, float]]:
        """Embedding for k-means (pool once) + zero-shot anchors + every candidate × every anchor."""
        cfg = self.cfg
        per_row = pool_tokens / n_rows if n_rows else 0.0
        anchor_tokens = min(per_row, cfg.anchor_max_length or per_row)
        k = cfg.anchors.k
        passes = [("golden score", cfg.model, k * anchor_tokens + n_rows * (per_row + k * anchor_tokens))]
        if cfg.anchors.method == "kmeans":
            passes.insert(0, ("anchor embedding", cfg.anchors.embedder_model or cfg.model, pool_tokens))
        return passes

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:
        """Golden scores → the rule's accepted rows, best first → the optional diversity filter, which stops
        once it has kept ``limit`` rows."""
        import numpy as np

        from deita.selection.filters import greedy_diverse
        from deita.selection.nuggets.golden import select_candidates
        from deita.selection.nuggets.run import golden_table

        cfg = self.cfg
        check_config(cfg)
        res = golden_table(rows, cfg, ctx)
        gs = res["golden_score"]  # NaN where early decision left only bounds: never accepted
        accepted = select_candidates(gs, threshold=cfg.threshold, top_k=cfg.top_k, top_fraction=cfg.top_fraction)
        early = res["early"]
        report = {"accepted_by_rule": len(accepted), "anchors": len(res["zero"]),
                  "anchors_never_scored": int(sum(n == 0 for n in res["anchor_scored_tokens"])),
                  "exact_scores": not early["on"], "exact_golden_scores": early["exact_rows"],
                  "anchor_passes": early["anchor_passes"], "anchor_passes_skipped": early["skipped"],
                  "anchor_passes_skipped_fraction": round(early["skipped_fraction"], 6)}
        if ctx.dist.is_main:
            log.info("nuggets: %d of %d golden scores exact (the others are bounds); %d of %d anchor passes "
                     "skipped (%.1f%%) by early decision%s", early["exact_rows"], len(rows), early["skipped"],
                     early["anchor_passes"], 100 * early["skipped_fraction"],
                     "" if early["on"] else " (off: selection.exact_scores=true)")
        shortfall = rule_shortfall(cfg, len(accepted), len(rows))
        if cfg.diversity and accepted:
            from deita.fingerprint import hash_rows
            from deita.models.loading import resolve_device
            from deita.selection.embedders.pool import embed_pool

            subset = [rows[i] for i in accepted]  # sharded across processes and cached, as DEITA's embeddings
            emb = embed_pool(subset, cfg.diversity_embedder, ctx.model_resolver(cfg.diversity_model or cfg.model),
                             cache=ctx.cache, data_fingerprint=hash_rows(subset), dist_info=ctx.dist,
                             dtype=cfg.dtype, device=cfg.device, trust_remote_code=cfg.trust_remote_code)
            kept = greedy_diverse(emb, np.arange(len(accepted)), tau=cfg.tau, budget=-1 if limit is None else limit,
                                  device=resolve_device(cfg.device), progress=ctx.dist.is_main)
            ranking = [accepted[j] for j in kept.kept.tolist()]
            report["rejected_by_tau"] = int(kept.rejected)
            shortfall += (f"; the tau={cfg.tau} diversity filter rejected {kept.rejected} of them; raise "
                          "selection.tau to keep more")
        else:
            ranking, kept = accepted, None
        is_anchor = [False] * len(rows)
        for i in res["anchor_index"] or []:
            is_anchor[i] = True
        table = {"golden_score": gs.tolist(), "golden_score_low": res["golden_score_low"].tolist(),
                 "golden_score_high": res["golden_score_high"].tolist(), "golden_exact": res["exact"].tolist(),
                 "anchor_wins": res["wins"].tolist(), "is_anchor": is_anchor}
        return SelectionResult(table=table, ranking=ranking, shortfall=shortfall, report=report,
                               score_column="golden_score", labels=COLUMN_LABELS, greedy=kept)


COLUMN_LABELS = {
    "golden_score": "golden score (share of anchors whose loss the row lowers as a one-shot example)",
    "anchor_wins": "anchors whose loss the row lowers (count; among the anchors run when not exact)",
    "golden_score_low": "golden score, lower bound (wins so far / anchors)",
    "golden_score_high": "golden score, upper bound (1 - losses so far / anchors)",
}
"""Axis labels (with units) of the table columns, for the selection report."""


def rule_shortfall(cfg, accepted: int, pool: int) -> str:
    """What the threshold / top_k / top_fraction rule kept, and the key that keeps more."""
    if cfg.threshold is not None:
        return (f"{accepted} of {pool} rows have golden score > {cfg.threshold}; lower selection.threshold or "
                "use top_k")
    if cfg.top_k is not None:
        return f"top_k={cfg.top_k} keeps {accepted} of {pool} rows; raise selection.top_k"
    return f"top_fraction={cfg.top_fraction} keeps {accepted} of {pool} rows; raise selection.top_fraction"
