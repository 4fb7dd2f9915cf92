"""Push a run's results to the Hugging Face Hub (``hub.push=true hub.repo_prefix=ORG/NAME``).

Two calls from :mod:`deita.cli`, around the stages:

* :func:`preflight`, at start-up, before any stage: a push that cannot work (bad prefix, no token, no
  network) stops the run with exit status 2 instead of failing after hours of training;
* :func:`push`, after the last stage, once, on the main process: stage the cards and files
  (:mod:`deita.hub.plan`), write ``<run_dir>/hub/plan.json`` and upload (:mod:`deita.hub.remote`), unless
  ``hub.dry_run``.

``hub.*`` keys change neither the run directory nor any stage fingerprint, so adding ``hub.push=true`` to
the command of a finished run skips every stage and only pushes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig

from deita.hub.plan import RepoUpload, plan_push, repo_id, reproduce_command, write_plan
from deita.hub.remote import HubError, check_access, one_line, upload

log = logging.getLogger(__name__)

__all__ = ["HubError", "preflight", "push"]


def _hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_point(cfg: DictConfig) -> str | None:
    """This job's override dirname when it is one point of a ``-m`` sweep (its repos carry it), else None."""
    return Path(str(cfg.run_dir)).name if _hydra_multirun() else None


def task_overrides() -> list[str]:
    """The command-line overrides of this job (as Hydra recorded them)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_main() -> bool:
    from deita.distributed import env_dist

    return env_dist().is_main


def preflight(cfg: DictConfig) -> None:
    """Raise ConfigError now if ``hub`` asks for a push that cannot work; with ``hub.push`` and no
    ``hub.dry_run``, the main process asks the Hub (bounded by ``hub.timeout``) for the token's account."""
    from deita.validate import ConfigError

    hub = cfg.hub
    if not hub.push:
        if hub.dry_run:
            raise ConfigError("config key 'hub.dry_run': stages what a push would upload; it needs hub.push=true")
        return
    for kind in ["data", *cfg.stages]:  # every repo name this run may need must be valid
        try:
            repo_id(hub.repo_prefix, kind, sweep_point(cfg))
        except ValueError as err:
            raise ConfigError(f"config key 'hub.repo_prefix': {err}") from None
    if _hydra_multirun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("config key 'hub.push': a sweep under `accelerate launch train.py -m` cannot push (every "
                          "rank walks the sweep); run `python train.py -m ... launch.num_processes=N`")
    if hub.dry_run or not _is_main():
        return
    account = check_access(hub.repo_prefix, timeout=hub.timeout, license=hub.license)
    log.info("hub: will push to %s-* as %s after the last stage", hub.repo_prefix, account)


def push(cfg: DictConfig) -> list[RepoUpload]:
    """After the stages, on the main process: stage and upload the run's current artifacts (only stage them
    with ``hub.dry_run``); return the plan. Other processes and runs without ``hub.push`` do nothing."""
    hub = cfg.hub
    if not hub.push or not _is_main():
        return []
    run_dir = Path(str(cfg.run_dir))
    command = reproduce_command(str(cfg.recipe_name), task_overrides())
    plan = plan_push(run_dir, run_dir / "hub", prefix=hub.repo_prefix, private=hub.private, license=hub.license,
                     command=command, sweep_point=sweep_point(cfg))
    write_plan(plan, run_dir / "hub" / "plan.json", command=command)
    verb = "would push (dry run)" if hub.dry_run else "pushing"
    for repo in plan:
        log.info("hub: %s %s %s (%s, %d files)", verb, repo.repo_type, repo.repo_id,
                 "private" if repo.private else "public", len(repo.files))
    if hub.dry_run:
        log.info("hub: dry run, nothing pushed; cards and plan in %s", run_dir / "hub")
        return plan
    try:
        upload(plan)
    except Exception as err:
        raise HubError(f"hub push failed: {one_line(err)}; the artifacts are in {run_dir}: run the same command "
                       "again to retry (finished stages are skipped)") from err
    return plan
