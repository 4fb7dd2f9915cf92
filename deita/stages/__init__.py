"""The stage registry: every pipeline stage, what it reads and its config node, in one place.

Each module in this package declares one stage and registers it with :func:`register`. Modules are
discovered automatically, so adding a stage is adding a module here, plus ``conf/<name>/default.yaml``
when the stage has a config node. Everything that lists stages reads them from here: the runner
(:mod:`deita.pipeline`), the root config schema, validation, plan mode, the sweep summary, the README's
config reference and the eval stage's choice of the final model.

Pipeline order follows the declared upstreams (required ones, optional ones and, for a stage that reads
the final model, every stage that produces a model); stages that do not depend on each other run in
name order.

Stage modules must be cheap to import (no torch or transformers at module level): config registration,
validation and plan mode import them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from deita.registry import Registry


def _no_models(cfg) -> dict:
    return {}


def _no_sources(cfg) -> dict:
    return {}


def _no_files(cfg) -> dict:
    return {}


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: what it reads, what it writes, and the hooks the rest of deita calls.

    * ``name``: its directory under the run dir and the name users list in ``stages``.
    * ``run(cfg, ctx)``: does the work into ``ctx.work_dir`` (a :class:`deita.pipeline.StageContext`)
      and returns the counts recorded in its manifest.
    * ``summary``: one line for the docs.
    * ``requires``: stages whose output it needs; each must be in ``stages`` or finished in the run dir.
    * ``optional``: stages whose output it reads when they are in ``stages`` or finished, and does without
      otherwise (in ``ctx.upstream`` only when found).
    * ``produces_model``: it writes a policy model into ``<stage>/model/``.
    * ``reads_model``: it reads the final policy model; every model-producing stage is then an optional
      upstream, and at least one must be found.
    * ``config``: dataclass schema of its config node ``cfg.<name>``, whose defaults come from the config
      group option ``conf/<name>/default.yaml`` when that file exists.
    * ``config_keys``: other config keys its output depends on (its own node always counts), hashed into
      its fingerprint.
    * ``data_keys``: config keys of the data-source lists it reads, hashed by content; validation requires
      a source in each unless ``data_optional``; preflight (:mod:`deita.preflight`) opens each source and
      checks its first records before any stage runs.
    * ``data_kind``: the row kind its sources must give (``sft``, ``preference`` or ``prompts``).
    * ``extra_sources(cfg)``: data files it reads besides its ``data_keys`` lists: named by single config
      keys (Nuggets' ``selection.anchors.path``) or read from another stage's list (the eval stage's
      held-out rows, ``data.pool[0].path``), as ``{config key: (source, kind)}``; preflight checks them too.
    * ``model_refs(cfg)``: the model references it loads, as ``{config key: reference}``; hashed by content
      when they are local folders; preflight resolves each to a config and a tokenizer before any stage
      runs, and names the key when one cannot be.
    * ``input_files(cfg)``: other files it reads (precomputed scores, ...), as ``{config key: path}``; hashed by
      content into its fingerprint.
    * ``preflight(cfg)``: opens those files and checks their form before any stage runs (raises
      :class:`deita.validate.ConfigError` naming the key and the file).
    * ``trainer_args``: dotted name of the TRL config class its ``<name>.args`` go to (``trl.SFTConfig``);
      their keys and enumerated values are checked at composition (:mod:`deita.trl_args`).
    * ``check(cfg)``: checks of its config that types cannot express; raises
      :class:`deita.validate.ConfigError`.
    * ``plan(cfg, pool)``: plan mode's estimate for it (a dict of figures, see :mod:`deita.plan`).
    * ``sweep_columns(manifest)``: its columns in the sweep summary (default: final train/eval loss).
    """

    name: str
    run: Callable[[Any, Any], dict]
    summary: str
    requires: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    produces_model: bool = False
    reads_model: bool = False
    config: type | None = None
    config_keys: tuple[str, ...] = ()
    data_keys: tuple[str, ...] = ()
    data_optional: bool = False
    data_kind: str = "sft"
    extra_sources: Callable[[Any], dict] = _no_sources
    model_refs: Callable[[Any], dict] = _no_models
    input_files: Callable[[Any], dict] = _no_files
    preflight: Callable[[Any], None] | None = None
    trainer_args: str | None = None
    check: Callable[[Any], None] | None = None
    plan: Callable[[Any, Any], dict] | None = None
    sweep_columns: Callable[[dict], dict] | None = None

    @property
    def fingerprint_keys(self) -> tuple[str, ...]:
        """Config keys hashed into its fingerprint: its own node (when it has one), then ``config_keys``."""
        own = (self.name,) if self.config is not None else ()
        return tuple(dict.fromkeys(own + self.config_keys))

    def data_sources(self, cfg) -> list:
        """The data sources it reads, in ``data_keys`` order."""
        from omegaconf import OmegaConf

        return [src for key in self.data_keys for src in (OmegaConf.select(cfg, key) or [])]


STAGES: Registry[Stage] = Registry("stage", discover="deita.stages")
"""Stage name → :class:`Stage`; filled from this package's modules on first lookup."""


def register(stage: Stage) -> Stage:
    """Add ``stage`` to the registry (called once by its module); returns it."""
    return STAGES.register(stage.name)(stage)


def get(name: str) -> Stage:
    """The stage registered as ``name`` (a ``KeyError`` listing the stages otherwise)."""
    return STAGES.get(name)


def _dependencies(stage: Stage, model_stages: set[str]) -> set[str]:
    deps = set(stage.requires) | set(stage.optional)
    if stage.reads_model:
        deps |= model_stages - {stage.name}
    return deps


def pipeline_order() -> list[Stage]:
    """Every registered stage, upstreams first; independent stages in name order."""
    stages = {name: STAGES.get(name) for name in STAGES.names()}
    models = {name for name, s in stages.items() if s.produces_model}
    deps = {name: _dependencies(s, models) for name, s in stages.items()}
    for name, upstream in deps.items():
        unknown = sorted(upstream - set(stages))
        if unknown:
            raise ValueError(f"stage {name!r} declares unknown upstream stage(s) {unknown}; stages are {sorted(stages)}")
    order: list[str] = []
    while len(order) < len(stages):
        ready = sorted(n for n in stages if n not in order and deps[n] <= set(order))
        if not ready:
            raise ValueError(f"stage upstreams form a cycle among {sorted(set(stages) - set(order))}")
        order.append(ready[0])
    return [stages[name] for name in order]


def names() -> list[str]:
    """Stage names in pipeline order."""
    return [s.name for s in pipeline_order()]


def model_stages() -> list[str]:
    """Names of the stages that produce a policy model, in pipeline order."""
    return [s.name for s in pipeline_order() if s.produces_model]


def upstream_of(stage: Stage) -> tuple[list[str], list[str]]:
    """``(required, optional)`` upstream stage names of ``stage``, each in pipeline order."""
    models = set(model_stages())
    optional = set(stage.optional) | ((models - {stage.name}) if stage.reads_model else set())
    order = names()
    return ([n for n in order if n in stage.requires],
            [n for n in order if n in optional and n not in stage.requires])


def in_pipeline_order(stage_names) -> list[Stage]:
    """The stages named in ``stage_names`` (e.g. the ``stages`` config key), in pipeline order."""
    wanted = set(stage_names)
    return [s for s in pipeline_order() if s.name in wanted]
