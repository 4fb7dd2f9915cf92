"""The re-launch behind ``launch.num_processes=N``: which accelerate config it uses and how the processes
start. Each command is checked by accelerate's own parser and validation (in a subprocess that sees the
test's HF_HOME), so "honours the default config" means what ``accelerate launch`` makes of the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, compose_config

DEEPSPEED_DEFAULT = """\
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 2
  offload_optimizer_device: none
  offload_param_device: none
  zero3_init_flag: false
mixed_precision: 'no'
machine_rank: 0
num_machines: 1
num_processes: 8
rdzv_backend: static
same_network: true
use_cpu: false
"""

ACCELERATE_VIEW = """
import json, sys
from accelerate.commands.config import default_config_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
args, _, _ = _validate_launch_command(launch_command_parser().parse_args(json.loads(sys.argv[1])))
print(json.dumps({"default_config_file": default_config_file, "deepspeed": bool(args.use_deepspeed),
                  "multi_gpu": bool(args.multi_gpu), "fsdp": bool(args.use_fsdp), "zero_stage": args.zero_stage,
                  "num_processes": args.num_processes, "module": args.module, "script": args.training_script,
                  "script_args": args.training_script_args}))
"""


def accelerate_view(launch_args: list[str], env: dict) -> dict:
    """What ``accelerate launch <launch_args>`` resolves to under ``env`` (nothing is started)."""
    proc = subprocess.run([sys.executable, "-c", ACCELERATE_VIEW, json.dumps(launch_args)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty HF_HOME for this test: no default accelerate config until the test writes one."""
    home = tmp_path / "hf_home"
    (home / "accelerate").mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def _command(tmp_path, *overrides: str) -> list[str]:
    from deita.cli import accelerate_command

    cfg = compose_config(["recipe=tiny", "launch.num_processes=2", *overrides])
    cmd = accelerate_command(cfg, ["recipe=tiny", "selection.budget=8"], str(tmp_path / "runs" / "x"))
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    return cmd


def test_default_accelerate_config_is_where_accelerate_looks(tmp_path, monkeypatch, hf_home):
    from deita.cli import default_accelerate_config

    env = dict(os.environ)
    assert default_accelerate_config() is None  # no file yet
    (hf_home / "accelerate" / "default_config.yaml").write_text(DEEPSPEED_DEFAULT)
    assert default_accelerate_config() == accelerate_view(["x.py"], env)["default_config_file"]
    # Without HF_HOME accelerate looks under $XDG_CACHE_HOME/huggingface.
    monkeypatch.delenv("HF_HOME")
    xdg = tmp_path / "xdg"
    (xdg / "huggingface" / "accelerate").mkdir(parents=True)
    (xdg / "huggingface" / "accelerate" / "default_config.yaml").write_text(DEEPSPEED_DEFAULT)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    env = {k: v for k, v in os.environ.items() if k != "HF_HOME"}
    assert default_accelerate_config() == accelerate_view(["x.py"], env)["default_config_file"]
    assert default_accelerate_config() == str(xdg / "huggingface" / "accelerate" / "default_config.yaml")


def test_relaunch_honours_the_default_accelerate_config(tmp_path, hf_home):
    (hf_home / "accelerate" / "default_config.yaml").write_text(DEEPSPEED_DEFAULT)
    cmd = _command(tmp_path)
    assert "--multi_gpu" not in cmd  # it would override the file's distributed type
    view = accelerate_view(cmd[3:], dict(os.environ))
    assert view["deepspeed"] and not view["multi_gpu"] and view["zero_stage"] == 2
    assert view["num_processes"] == 2  # launch.num_processes wins over the file's 8
    assert view["script_args"][:2] == ["recipe=tiny", "selection.budget=8"]


def test_relaunch_without_any_accelerate_config_uses_ddp_flags(tmp_path, hf_home):
    cmd = _command(tmp_path)
    assert "--config_file" not in cmd
    view = accelerate_view(cmd[3:], dict(os.environ))
    assert view["multi_gpu"] and not view["deepspeed"] and view["num_processes"] == 2


def test_launch_accelerate_config_wins_over_the_default(tmp_path, hf_home):
    (hf_home / "accelerate" / "default_config.yaml").write_text(DEEPSPEED_DEFAULT)
    cmd = _command(tmp_path, "launch.accelerate_config=launch/fsdp.yaml")
    assert cmd[cmd.index("--config_file") + 1] == "launch/fsdp.yaml"
    view = accelerate_view(cmd[3:], dict(os.environ))
    assert view["fsdp"] and not view["deepspeed"] and view["num_processes"] == 2


def test_processes_start_the_way_this_one_started(tmp_path, hf_home, monkeypatch):
    from deita.cli import entry_args

    script_main = types.SimpleNamespace(__spec__=None)
    monkeypatch.setitem(sys.modules, "__main__", script_main)
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "train.py"), "recipe=tiny"])
    assert entry_args() == [str(REPO_ROOT / "train.py")]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/deita", "recipe=tiny"])  # the console script
    assert entry_args() == ["-m", "deita"]
    module_main = types.SimpleNamespace(__spec__=types.SimpleNamespace(name="deita.__main__"))
    monkeypatch.setitem(sys.modules, "__main__", module_main)  # python -m deita
    monkeypatch.setattr(sys, "argv", [str(REPO_ROOT / "deita" / "__main__.py"), "recipe=tiny"])
    assert entry_args() == ["-m", "deita"]
    view = accelerate_view(_command(tmp_path)[3:], dict(os.environ))
    assert view["module"] and view["script"] == "deita"
    assert view["script_args"][:2] == ["recipe=tiny", "selection.budget=8"]
