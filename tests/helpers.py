"""Test helpers: compose the real config tree, run train.py as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (REPO_ROOT / "recipes").glob("*.yaml"))


def free_port() -> int:
    """A TCP port nothing listens on now: parallel test runs (other sessions, worktrees) must not share
    a fixed rendezvous port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(overrides: list[str]):
    """Compose ``conf/config.yaml`` with ``overrides`` (Hydra's runtime fields set, as under @hydra.main)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import train  # noqa: F401  (registers resolvers and schemas)

    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    run_dir = str(HydraConfig.get().run.dir)
    from omegaconf import OmegaConf

    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = run_dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    cfg.run_dir = run_dir
    return cfg


def run_train(args: list[str], *, cwd: Path | None = None, env: dict | None = None, launcher: list[str] | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``train.py`` with ``args`` in a subprocess (optionally under a launcher); return the result."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    cmd = (launcher or [sys.executable]) + [str(REPO_ROOT / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd or REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def shared_paths(tmp_path: Path, shared_data: Path) -> list[str]:
    """Overrides that keep a test's runs and cache in ``tmp_path`` and read the shared data."""
    return [f"paths.runs_dir={tmp_path / 'runs'}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.shared_data={shared_data}"]
