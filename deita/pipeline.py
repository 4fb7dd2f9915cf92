"""The stage runner: stages in pipeline order, each into one artifact directory with a ``manifest.json``;
skip, resume, atomic writes. Which stages exist, their order and what each one reads come from the stage
registry (:mod:`deita.stages`); nothing here knows a stage by name.

A stage's *fingerprint* hashes everything that determines its output: its config subtrees, the content
of its input files and the fingerprints of the stages it reads. A stage whose finished directory carries
the same fingerprint is skipped; otherwise it runs in ``<run_dir>/.<stage>.partial-<fingerprint>`` (where
an interrupted training run finds its checkpoints and resumes) and the main process renames that folder
into place only after writing the manifest, so a crash never leaves a half artifact that looks finished.
Because a fingerprint includes its upstream fingerprints, re-running a stage re-runs everything after it.
A stage that fails before writing any file leaves no partial folder.

The manifest also lists every artifact file with its size and hash (:mod:`deita.artifacts`). A skip
checks them first: when one is missing or changed, the stage runs again and the log says which file. An
upstream stage that is read from the run dir without being in ``stages`` is checked the same way, and a
damaged one is an error that names the file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from deita import stages
from deita.artifacts import artifact_problem, list_artifacts
from deita.distributed import DistInfo, barrier, gather_concat, init_distributed
from deita.fingerprint import hash_file_remembered, hash_json, hub_revision
from deita.io import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("deita", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed",
                    "hydra-core", "omegaconf", "wandb", "numpy", "sentence-transformers")


class StageInputError(RuntimeError):
    """A stage's upstream output is neither in this run nor finished (and intact) in the run dir."""


@dataclass
class StageContext:
    """What a running stage gets: where to write, what its upstream stages produced, who it is.

    ``upstream`` and ``upstream_manifests`` hold the stage's required upstreams and the optional ones
    that were found (in ``stages`` or finished), keyed by stage name, in pipeline order.
    """

    name: str
    work_dir: Path
    run_dir: Path
    upstream: dict[str, Path]
    upstream_manifests: dict[str, dict]
    dist: DistInfo


def source_fingerprint(source: Any, memo_dir: Path | None = None) -> dict:
    """Identify a data source by content: file bytes for local files and folders; for hub data the name and
    its revision (given, or the commit the local Hugging Face cache resolves; :func:`deita.fingerprint.hub_revision`).
    Large files' hashes are remembered in ``memo_dir`` (:func:`deita.fingerprint.hash_file_remembered`)."""
    from deita.data.errors import reading

    path = Path(str(source.path))
    options = {k: source[k] for k in source if k not in ("path", "revision")}
    with reading(str(path)):  # an unreadable file is a data error (one line naming it), not a traceback
        if path.is_file():
            return {"file": path.name, "sha256": hash_file_remembered(path, memo_dir), **options}
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {"dir": path.name, "sha256": hash_json([[str(p.relative_to(path)), hash_file_remembered(p, memo_dir)] for p in files]), **options}
    revision = hub_revision(str(source.path), "dataset", source.get("revision"))
    return {"hub": str(source.path), **options, **({"revision": revision} if revision else {})}


def model_fingerprint(ref: str) -> Any:
    """A local model folder by content (config, tokenizer, weight sizes and bytes); a hub name by name and
    the commit the local Hugging Face cache resolves it (or its pinned ``@revision``) to, when it is there;
    anything else by name.

    ``tiny:`` and ``packaged:`` references build deterministically, so their name identifies them.
    """
    from deita.fingerprint import model_identity

    ref = str(ref)
    if Path(ref).is_dir():
        return model_identity(ref)
    if ref.startswith(("tiny:", "packaged:")):
        return ref
    from deita.models.resolve import split_revision

    name, pinned = split_revision(ref)
    revision = hub_revision(name, "model", pinned)
    return {"name": name, "revision": revision} if revision else ref


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that shape results."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_manifest(stage_dir: Path) -> dict | None:
    """The manifest of a finished stage directory, or None."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def damaged_artifact(stage_dir: Path, manifest: dict) -> str | None:
    """Which file listed in a finished stage's manifest is missing or changed; None when all are intact
    (or the manifest predates artifact lists)."""
    listed = manifest.get("artifacts")
    return None if listed is None else artifact_problem(stage_dir, listed)


def select_subtrees(cfg: DictConfig, keys: tuple[str, ...]) -> dict:
    """The resolved config subtrees named by dotted ``keys``."""
    out = {}
    for key in keys:
        node = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig,)) or OmegaConf.is_list(node) else node
    return out


def file_hash_memo(cfg: DictConfig) -> Path:
    """Where input files' hashes are remembered between runs: ``<paths.cache_dir>/file_hashes``."""
    return Path(cfg.paths.cache_dir) / "file_hashes"


def stage_inputs(cfg: DictConfig, stage: stages.Stage, upstream_manifests: dict[str, dict]) -> dict:
    """Everything that determines the stage's output (hashed into its fingerprint)."""
    memo = file_hash_memo(cfg)
    files = {key: hash_file_remembered(path, memo) for key, path in stage.input_files(cfg).items()}
    return {
        "stage": stage.name,
        "config": select_subtrees(cfg, stage.fingerprint_keys),
        "data": [source_fingerprint(s, memo) for s in stage.data_sources(cfg)],
        "models": {str(ref): model_fingerprint(ref) for ref in stage.model_refs(cfg).values()},
        "upstream": {name: m["fingerprint"] for name, m in sorted(upstream_manifests.items())},
        **({"files": files} if files else {}),  # absent when none, so other stages' fingerprints do not move
    }


def remove_if_empty(folder: Path) -> bool:
    """Delete ``folder`` when it holds no file at any depth (a partial stage dir with nothing to resume
    from); True when it did."""
    if not folder.is_dir() or any(p.is_file() for p in folder.rglob("*")):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _finalize(work: Path, final: Path) -> None:
    """Swap the finished work folder into place; the old artifact, if any, is removed afterwards."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(work, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(f".{final.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def find_upstream(cfg: DictConfig, stage: stages.Stage, run_dir: Path,
                  manifests: dict[str, dict]) -> tuple[dict[str, Path], dict[str, dict]]:
    """Directories and manifests of ``stage``'s upstream stages: each required one (a
    :class:`StageInputError` when it is neither in this run nor finished in ``run_dir``) and each optional
    one that is."""
    required, optional = stages.upstream_of(stage)
    order = stages.names()
    dirs, found = {}, {}
    for name in sorted(required + optional, key=order.index):
        manifest = manifests.get(name)
        if manifest is None:
            manifest = read_manifest(run_dir / name)
            damage = damaged_artifact(run_dir / name, manifest) if manifest is not None else None
            if damage:
                raise StageInputError(
                    f"stage '{stage.name}' reads the output of stage '{name}' from {run_dir / name}, but {damage}; "
                    f"add '{name}' to stages to run it again"
                )
        if manifest is None:
            if name in required:
                raise StageInputError(
                    f"stage '{stage.name}' needs the output of stage '{name}', which is neither in stages="
                    f"{list(cfg.stages)} nor finished in {run_dir / name}; add '{name}' to stages"
                )
            continue
        dirs[name], found[name] = run_dir / name, manifest
    if stage.reads_model and not set(found) & set(stages.model_stages()):
        raise StageInputError(
            f"stage '{stage.name}' needs a model from one of the stages {stages.model_stages()}, none of which "
            f"is in stages={list(cfg.stages)} or finished in {run_dir}; add one to stages"
        )
    return dirs, found


def run_stage(cfg: DictConfig, stage: stages.Stage, run_dir: Path, manifests: dict[str, dict], dist: DistInfo) -> dict:
    """Run (or skip) one stage and return its manifest."""
    upstream_dirs, upstream_manifests = find_upstream(cfg, stage, run_dir, manifests)
    inputs = stage_inputs(cfg, stage, upstream_manifests)
    fingerprint = hash_json(inputs)
    final = run_dir / stage.name
    existing = read_manifest(final)
    if existing is not None and existing.get("fingerprint") == fingerprint:
        # the main process checks the files, every rank follows its verdict
        damage = gather_concat([damaged_artifact(final, existing) if dist.is_main else None])[0]
        if damage is None:
            if dist.is_main:
                log.info("stage %s: unchanged (fingerprint %s), skipped", stage.name, fingerprint)
            return existing
        if dist.is_main:
            log.warning("stage %s: unchanged inputs, but %s; running it again", stage.name, damage)

    work = run_dir / f".{stage.name}.partial-{fingerprint}"
    if dist.is_main:
        work.mkdir(parents=True, exist_ok=True)
        log.info("── stage %s ──", stage.name)
        log.debug("stage %s: running into %s", stage.name, work)
    barrier(f"before stage {stage.name}")
    ctx = StageContext(stage.name, work, run_dir, upstream_dirs, upstream_manifests, dist)
    started = time.time()
    try:
        counts = stage.run(cfg, ctx) or {}
    except BaseException:
        if dist.is_main and remove_if_empty(work):
            log.info("stage %s failed before writing anything; removed %s", stage.name, work)
        raise
    wall = time.time() - started
    barrier(f"at the end of stage {stage.name}")
    manifest = {
        "stage": stage.name,
        "fingerprint": fingerprint,
        "status": "complete",
        "inputs": inputs,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": package_versions(),
        "world_size": dist.world_size,
        "wall_seconds": round(wall, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **counts,
    }
    if dist.is_main:
        manifest["artifacts"] = list_artifacts(work, exclude=(MANIFEST,))
        write_json_atomic(work / MANIFEST, manifest, sort_keys=True)
        _finalize(work, final)
        log.info("stage %s: done in %.1f s", stage.name, wall)
    barrier(f"after stage {stage.name}")
    return manifest


def run_pipeline(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Run ``cfg.stages`` in pipeline order in ``run_dir`` (default: the Hydra run dir); each rank also logs
    to ``<run_dir>/logs/rank<N>.log`` (:mod:`deita.logs`)."""
    from deita.logs import rank_log

    dist = init_distributed(OmegaConf.select(cfg, "launch.timeout_minutes", default=None))
    run_dir = Path(run_dir or cfg.run_dir)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier("at the start of the run")
    manifests: dict[str, dict] = {}
    with rank_log(run_dir, dist.rank, dist.world_size):
        for stage in stages.in_pipeline_order(cfg.stages):
            try:
                manifests[stage.name] = run_stage(cfg, stage, run_dir, manifests, dist)
            except Exception as err:  # this rank's own log says how it ended; the caller reports or re-raises
                log.error("stage %s stopped on rank %d: %s: %s", stage.name, dist.rank, type(err).__name__, err)
                raise
        if dist.is_main:  # the last lines of the log repeat what a stage warned about (e.g. a short selection)
            for name, manifest in manifests.items():
                for warning in manifest.get("warnings", []):
                    log.warning("run finished; stage %s warned: %s", name, warning)
    return manifests
