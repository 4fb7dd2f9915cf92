"""The contract every selection method fulfils.

A selection method reads the canonical pool and returns a :class:`SelectionResult`: one table row per
pool row (its scores) and its ranking, the pool positions it accepts, best first. The select stage
(:mod:`deita.selection.stage`) cuts the ranking to ``selection.budget`` (the one budget rule) and owns
loading, caching, sharding and writing; methods own the math.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from deita.registry import Registry


@dataclass
class SelectionConfig:
    """Options shared by every selection method (config group ``selection``)."""

    method: str = "random"
    """Registry name of the selection method: random, length, deita, nuggets, ifd, superfilter, ..."""
    budget: int = 100
    """Rows to select: the first ``budget`` rows of the method's ranking; -1 keeps every row the method
    accepts (e.g. dedup at tau). A shorter ranking selects fewer rows, with a warning (report, manifest,
    log); an empty selection, or one smaller than ``sft.per_device_batch_size`` when sft runs, stops the run."""
    seed: int = 0
    """Seed for every random choice the method makes."""
    on_error: str = "raise"
    """What a row that cannot be scored does: 'raise' stops the run; 'nan' scores it NaN, counts and
    reports it, and keeps it out of the selection."""
    chunk_rows: int = 1024
    """Pool rows per chunk of the score, embedding and log-prob caches: each chunk is written as soon as
    it is computed, so a killed run resumes from the chunks on disk, at any world size, with identical
    results (deita/store.py). Rows are batched by length within their chunk: with GPU-sized batches
    (16,384 tokens) 1,024-row chunks pad ~11% more DEITA scoring tokens than one plan for the whole pool,
    4,096-row chunks ~1.5% (BENCHMARKS.md); chunks are shared out whole, so keep ~10 or more per process.
    A finished cache entry is reused whatever its chunk size."""


@dataclass
class SelectionResult:
    """What a method returns to the select stage: a ranking, which the stage cuts to the budget."""

    table: dict[str, list[Any]]
    """One entry per pool row, in pool order: column name → list of values (scores, per-turn score
    lists, flags)."""
    ranking: list[int]
    """The pool positions the method accepts, best first. It may stop at the ``limit`` the stage passed;
    it is never cut to the budget by the method."""
    shortfall: str = ""
    """Why the ranking holds fewer rows than the pool, in the user's terms: what the method's rules
    rejected and which config key to change (``0 of 200 rows have golden score > 0.85; lower
    selection.threshold or use top_k``). The stage quotes it when the selection is empty or short."""
    report: dict[str, Any] = field(default_factory=dict)
    """Method-specific figures for the selection report (counts, rejected-by-tau, timings, ...)."""
    plots: dict[str, Callable[[Any], None]] = field(default_factory=dict)
    """Plot name → function that draws it on a matplotlib axis (figures the report does not draw itself)."""
    score_column: str = ""
    """The table column the ranking follows (best = highest), for the report's highest- and lowest-scored
    rows; '' when the method has no score (random)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Table column → axis label with its unit (``"complexity (1-6 judge score, summed over turns)"``);
    columns without one are labelled by name."""
    scatter: tuple[str, ...] = ()
    """Two table columns the report plots against each other (x, y), selected rows highlighted."""
    greedy: Any = None
    """The diversity filter's :class:`deita.selection.filters.GreedyResult` (kept rows' nearest-kept
    similarities, rejections by tau against scan position, tau) when the method ran one."""


@dataclass
class SelectionContext:
    """What the select stage hands a method: where to cache, how to shard, how to show progress.

    ``cache`` is a :class:`deita.cache.ContentCache`; ``dist`` a :class:`deita.distributed.DistInfo`;
    ``data_fingerprint`` identifies the pool's content and keys every cache entry.
    """

    cache: Any
    dist: Any
    data_fingerprint: str
    model_resolver: Callable[[Any], str]


class Selector:
    """Base class of a selection method. Subclasses set ``config_class`` and implement ``select``."""

    config_class: type = SelectionConfig

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:  # pragma: no cover
        """Score ``rows`` (canonical rows) and rank the ones this method accepts, best first.

        ``limit`` is the most rows the stage will keep (None: all). A method whose ranking is built one
        row at a time (the greedy diversity filter, a random draw) stops once it has ``limit`` rows;
        the others rank every accepted row. The stage, not the method, cuts the ranking to the budget.
        """
        raise NotImplementedError

    def model_keys(self) -> dict[str, str]:
        """The model references this config makes the method load, by key inside the selection node
        (``scorer.quality_model``): the stage fingerprints them, preflight resolves them before any stage.

        The default takes every string under a key ending in ``model``; methods that load some of them only
        under some options (Nuggets) override it.
        """
        from omegaconf import OmegaConf

        found: dict[str, str] = {}

        def walk(node, prefix):
            if isinstance(node, dict):
                for key, value in node.items():
                    walk(value, f"{prefix}.{key}" if prefix else key)
            elif isinstance(node, str) and prefix.split(".")[-1].endswith("model"):
                found[prefix] = node

        cfg = self.cfg
        walk(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(vars(cfg)), "")
        return found

    def source_keys(self) -> dict[str, str]:
        """Data files this config makes the method read besides the pool, by key inside the selection node
        (preflight opens them before any stage). The default: none."""
        return {}

    def input_files(self) -> dict[str, str]:
        """Non-row files this config makes the method read (precomputed scores, embeddings), by key in the config tree
        (``selection.precomputed.scores``): hashed by content into the stage fingerprint. Default: none."""
        return {}

    def preflight(self) -> None:
        """Open the files of :meth:`input_files` and check their form before any stage runs; raise
        :class:`deita.validate.ConfigError` naming the key and the file. Default: nothing to check."""

    def planned_passes(self, n_rows: int, pool_tokens: float) -> list[tuple[str, str, float]]:
        """For plan mode: (role, model ref, tokens read) of each forward pass over the pool.

        The default says every model of :meth:`model_keys` reads the pool once; methods whose cost has
        another shape (Nuggets: candidates × anchors) override it.
        """
        return [(key, ref, pool_tokens) for key, ref in self.model_keys().items()]

    @classmethod
    def check(cls, cfg) -> None:
        """Raise :class:`deita.validate.ConfigError` naming the key for option values or combinations this
        method cannot honour (called at composition, before anything loads). The default checks nothing."""


SELECTORS: Registry[type[Selector]] = Registry("selection method", discover="deita.selection.methods")
"""Method name (``selection.method``) → :class:`Selector` subclass; filled from ``deita/selection/methods/``
on first lookup."""
