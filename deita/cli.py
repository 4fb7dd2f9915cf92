"""What ``deita`` (or ``train.py``) does with a composed config: validate, then plan, re-launch, or run the stages."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from omegaconf import DictConfig

log = logging.getLogger(__name__)

ERROR_DIR_ENV = "DEITA_ERROR_DIR"
"""Set by :func:`relaunch` for its ranks: a folder where each rank records the error that stopped it, so
the launcher prints each distinct error once (ranks print nothing themselves)."""


class LaunchedJobFailed(RuntimeError):
    """The re-launched job failed; ``code`` is the exit status to end with (2: a bad input)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def under_launcher() -> bool:
    """True inside ``accelerate launch`` / ``torchrun`` (they set WORLD_SIZE or LOCAL_RANK)."""
    return "WORLD_SIZE" in os.environ or "LOCAL_RANK" in os.environ


def default_accelerate_config() -> str | None:
    """The file ``accelerate config`` wrote, if there is one: ``$HF_HOME/accelerate/default_config.yaml``
    (HF_HOME defaults to ``$XDG_CACHE_HOME/huggingface``, XDG_CACHE_HOME to ``~/.cache``), read from the
    environment now, by the rule ``accelerate launch`` applies when it is given no ``--config_file``."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.environ.get("HF_HOME", os.path.join(cache, "huggingface")))
    path = os.path.join(home, "accelerate", "default_config.yaml")
    return path if os.path.isfile(path) else None


def entry_args() -> list[str]:
    """How each re-launched process starts this program: the script that is running (``train.py``), or
    ``-m deita`` when it was started as the ``deita`` command or as ``python -m deita`` (running the
    package's ``__main__.py`` as a script would put ``deita/`` first on sys.path, shadowing stdlib ``io``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = os.path.abspath(sys.argv[0])
    if (spec is not None and spec.name == "deita.__main__") or not script.endswith(".py"):
        return ["-m", "deita"]
    return [script]


def accelerate_command(cfg: DictConfig, overrides: list[str], run_dir: str) -> list[str]:
    """The ``accelerate launch`` command that re-runs this job with ``cfg.launch.num_processes`` processes.

    The process layout comes from ``launch.accelerate_config``; unset, from the user's default accelerate
    config file (:func:`default_accelerate_config`), named explicitly so the logged command shows it; with
    neither, plain DDP flags (``--multi_gpu``; on CPU :func:`relaunch` adds ``ACCELERATE_USE_CPU=1``).
    """
    launch = cfg.launch
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    config_file = launch.accelerate_config or default_accelerate_config()
    if config_file:
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(launch.num_processes), *map(str, launch.extra_args)]
    # Quoted: run directories contain '=' (e.g. selection.budget=8), which Hydra's parser rejects bare.
    quoted = "'" + str(run_dir).replace("\\", "\\\\").replace("'", "\\'") + "'"
    return cmd + [*entry_args(), *overrides, f"hydra.run.dir={quoted}"]


def relaunch(cfg: DictConfig) -> None:
    """Run this job as ``accelerate launch`` with N processes and wait for it (one sweep point at a time)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra.")]
    cmd = accelerate_command(cfg, overrides, hc.runtime.output_dir)
    env = dict(os.environ)
    try:
        import torch

        if not torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"  # without it, --multi_gpu on CPU starts N independent copies
    except ImportError:  # pragma: no cover
        pass
    log.info("re-launching with %d processes: %s", cfg.launch.num_processes, " ".join(cmd))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deita-errors-") as errors:
        env[ERROR_DIR_ENV] = errors
        status = subprocess.run(cmd, env=env).returncode
        message, code = ranks_errors(errors, status)
    if code:
        raise LaunchedJobFailed(message, code)


def ranks_errors(folder: str, status: int) -> tuple[str, int]:
    """The launcher's verdict on a finished re-launch: ``(message, exit status)``, ``("", 0)`` on success.

    Ranks record their error in ``folder`` (:func:`report_error`). Bad-input errors (status 2) are what
    the user must fix; a rank that then lost its peers records a stall, which is left out. Each distinct
    message is given once, with the ranks that reported it when not all did.
    """
    import json
    from pathlib import Path

    records = []
    for path in sorted(Path(folder).glob("rank-*.json")):
        record = json.loads(path.read_text())
        records.append((int(path.stem.split("-")[1]), record["message"], int(record["code"])))
    if not records:
        if status == 0:
            return "", 0
        return f"error: the launched job failed (accelerate exit status {status}); the ranks' output above says why", 1
    code = 2 if any(c == 2 for _, _, c in records) else max(c for _, _, c in records)
    by_message: dict[str, list[int]] = {}
    for rank, message, c in sorted(records):
        if c == code:
            by_message.setdefault(message, []).append(rank)
    lines = [msg if len(by_message) == 1 and len(ranks) == len(records) else f"{msg} (rank{'s' if len(ranks) > 1 else ''} "
             f"{', '.join(map(str, ranks))})" for msg, ranks in by_message.items()]
    return "\n".join(lines), code


class SweepPointFailed(Exception):
    """One point of a ``-m`` sweep ended with an error, already printed. Raised instead of exiting, so Hydra
    records the point as failed and runs the others; the sweep summary lists it and the sweep ends non-zero
    (:class:`deita.sweep.SweepSummary`)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def in_multirun() -> bool:
    """True inside a job of a Hydra ``-m`` sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_error(message: str, code: int) -> None:
    """End this process with ``message`` and exit status ``code``. A rank of a re-launch records it for the
    launcher instead of printing it; after a bad input (``code`` 2) it then exits 0, so the launcher's
    agent adds no failure report of its own (the launcher still ends with 2). In a ``-m`` sweep the point
    ends instead (:class:`SweepPointFailed`) and the sweep goes on."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder and under_launcher():
        from deita.distributed import env_dist
        from deita.io import write_json_atomic

        write_json_atomic(os.path.join(folder, f"rank-{env_dist().rank}.json"), {"message": message, "code": code})
        sys.exit(0 if code == 2 else code)
    print(message, file=sys.stderr)
    if in_multirun():
        raise SweepPointFailed(message, code)
    sys.exit(code)


def shared_data_hint(cfg: DictConfig, err: Exception) -> str:
    """For a data file missing because ``paths.shared_data`` is no folder from here (the default,
    ``../shared/data``, is right only from the checkout's root): which key and variable to set; else ""."""
    file = getattr(err, "file", None)
    try:
        shared = str(cfg.paths.shared_data)
    except Exception:  # noqa: BLE001 (an unresolvable value: nothing to add to the error itself)
        return ""
    if not file or os.path.isdir(os.path.expanduser(shared)) or not str(file).startswith(shared.rstrip("/") + "/"):
        return ""
    return (f"\n  paths.shared_data={shared} is not a folder (from {os.getcwd()}): set DEITA_SHARED_DATA or "
            "paths.shared_data=DIR")


PREFLIGHT_DONE_ENV = "DEITA_PREFLIGHT_DONE"
"""Set (to the run dir) for the processes a job re-launches after its preflight passed: they skip it."""


def preflight_once(cfg: DictConfig) -> None:
    """Check every input of the chosen stages (:mod:`deita.preflight`) unless the process that launched this
    one already did for the same run dir."""
    from deita.preflight import preflight

    if os.environ.get(PREFLIGHT_DONE_ENV) == str(cfg.run_dir):
        return
    preflight(cfg)
    os.environ[PREFLIGHT_DONE_ENV] = str(cfg.run_dir)  # inherited by a re-launch's ranks

def set_torch_threads(n: int) -> None:
    """The ``torch_threads`` policy: ``n`` torch CPU threads in this process; 0 leaves torch's default.
    Under a launcher with several processes per machine, the launcher's OMP_NUM_THREADS is kept."""
    if n <= 0 or (under_launcher() and "OMP_NUM_THREADS" in os.environ and int(os.environ.get("WORLD_SIZE", 1)) > 1):
        return
    import torch

    torch.set_num_threads(n)


def print_summary(cfg: DictConfig, manifests: dict[str, dict], started: float) -> None:
    """Print the run's summary block (:mod:`deita.summary`); stages finished before ``started`` were skipped."""
    from datetime import datetime
    from pathlib import Path

    from deita.summary import summary_lines

    def finished(m: dict) -> float:
        try:
            return datetime.strptime(m.get("finished_at", ""), "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            return started
    skipped = {name for name, m in manifests.items() if finished(m) < int(started)}
    print("\n".join(summary_lines(Path(cfg.run_dir), manifests, skipped, time.time() - started)), flush=True)


def run(cfg: DictConfig) -> None:
    """Validate ``cfg``; then print the plan (``plan=true``), re-launch, or run the pipeline.

    A config error or a malformed data record ends the run with its message and exit status 2, no
    traceback: the message already names the key, or the file, record and field.
    A run that stops this way before any stage wrote anything leaves no run dir behind; a run dir that
    another live run holds (:mod:`deita.rundir`) stops the run at once, exit 2. A re-launched job prints
    its ranks' error once, from the launcher (:func:`ranks_errors`), and ends with the same status; under a
    launcher the user ran, the main rank alone prints a bad input and every rank exits 2
    (:mod:`deita.rank_exit`). A rank that misses a stage barrier for ``launch.timeout_minutes`` ends the job
    with exit 1, named.
    """
    from deita.data.errors import DataError
    from deita.distributed import RankStalled, env_dist
    from deita.hub import HubError
    from deita.pipeline import StageInputError
    from deita.rundir import RunDirBusy, remove_if_unused
    from deita.validate import ConfigError

    try:
        _run(cfg)
    except RunDirBusy as err:
        report_error(f"error: {err}", 2)
    except (ConfigError, DataError, StageInputError) as err:
        message = f"error: {err}{shared_data_hint(cfg, err)}"
        if not in_multirun():
            from deita.rank_exit import stop_every_rank, user_launched_ranks

            if user_launched_ranks():
                stop_every_rank(message, 2, cfg.run_dir, cfg.paths.runs_dir)
        if env_dist().rank == 0:
            remove_if_unused(cfg.run_dir, cfg.paths.runs_dir)
        report_error(message, 2)
    except LaunchedJobFailed as err:
        if err.code == 2:
            remove_if_unused(cfg.run_dir, cfg.paths.runs_dir)
        report_error(str(err), err.code)
    except RankStalled as err:
        report_error(f"error: {err}", 1)
    except HubError as err:  # after the stages: their artifacts are safe, only the upload failed
        report_error(f"error: {err}", 1)


def _run(cfg: DictConfig) -> None:
    from deita.validate import validate_config

    validate_config(cfg)
    if cfg.plan:
        from deita.plan import print_plan

        print_plan(cfg)
        return
    from deita import console

    console.short_log_lines(bool(cfg.verbose))  # before the first log line (preflight's)
    preflight_once(cfg)
    from deita import hub

    hub.preflight(cfg)  # a push that cannot work stops the run here, before any stage
    from deita.distributed import env_dist
    from deita.rundir import run_lock

    with run_lock(cfg.run_dir, rank=env_dist().rank):  # the launcher, or rank 0 under a launcher
        if cfg.launch.num_processes > 1 and not under_launcher():
            relaunch(cfg)
            return
        _run_stages(cfg)


def _run_stages(cfg: DictConfig) -> None:
    """Run the pipeline in this process (one rank of a launched job, or the only process), then push."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from deita import console, hub, stages
    from deita.distributed import env_dist, shutdown
    from deita.pipeline import run_pipeline

    if in_multirun() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        log.warning("`accelerate launch train.py -m` makes every rank walk the whole sweep in lockstep; "
                    "prefer `python train.py -m ... launch.num_processes=N`, which launches each point on its own")
    console.configure(bool(cfg.verbose), trains=any(s.produces_model for s in stages.in_pipeline_order(cfg.stages)))
    set_torch_threads(int(cfg.torch_threads))
    started = time.time()
    manifests = run_pipeline(cfg)
    if env_dist().is_main:
        print_summary(cfg, manifests, started)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        shutdown()  # a multirun inside a launcher would reuse the group for its next job
    hub.push(cfg)  # main process only, after the group is gone (an upload must not hold the others' barrier)
