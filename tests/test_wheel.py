"""The installed package works without the checkout: build the wheel, install it into a fresh venv (no
downloads: the venv sees this venv's site-packages for the dependencies) and run the ``deita`` command from
a folder outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO_ROOT

RECIPES = sorted(p.stem for p in (REPO_ROOT / "deita" / "conf" / "recipe").glob("*.yaml"))


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to ``dest``: the build writes build/ and
    *.egg-info beside its sources, which must not land in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO_ROOT, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot list the source files")
    for name in filter(None, listed.stdout.decode().split("\0")):
        src, dst = REPO_ROOT / name, dest / name
        if not os.path.lexists(src):  # deleted but not yet committed
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel . --no-deps --no-build-isolation --no-index`` of a copy of the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "--no-index",
          "-q", "-w", tmp / "dist"], cwd=src)
    (built,) = (tmp / "dist").glob("deita-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (``--no-deps``); a .pth line lets it import this venv's
    dependencies. The checkout's own ``deita`` (editable install) is not visible there."""
    root = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=root.parent)
    python = root / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "_deita_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=root)
    return root


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory outside the repository."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def _env() -> dict:
    drop = {"PYTHONPATH", "DEITA_SHARED_DATA", "WORLD_SIZE", "LOCAL_RANK", "RANK"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def test_wheel_ships_every_config_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = REPO_ROOT / "deita" / "conf"
    expected = {f"deita/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*.yaml")}
    assert len(expected) > 20 and expected <= names, sorted(expected - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "deita = deita.__main__:main" in text
    assert "deita/__main__.py" in names


def test_installed_command_plans_from_another_directory(venv, elsewhere):
    env = _env()
    where = _run([venv / "bin" / "python", "-c", "import deita; print(deita.__file__)"], cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(venv)), where.stdout  # the wheel, not the checkout
    plan = _run([venv / "bin" / "deita", "recipe=mistral_deita", "plan=true"], cwd=elsewhere, env=env)
    assert "Plan for recipe=mistral_deita" in plan.stdout and "total" in plan.stdout
    # The run directory is relative to the working directory (paths.runs_dir), not to the package.
    assert (elsewhere / "runs" / "mistral_deita" / "default" / ".hydra").is_dir()


def test_installed_command_help_and_config(venv, elsewhere):
    env = _env()
    help_text = _run([venv / "bin" / "deita", "--help"], cwd=elsewhere, env=env).stdout
    (recipe_line,) = [line for line in help_text.splitlines() if line.startswith("recipe: ")]
    assert recipe_line == "recipe: " + ", ".join(RECIPES)
    job = yaml.safe_load(_run([venv / "bin" / "deita", "recipe=tiny", "--cfg", "job"], cwd=elsewhere, env=env).stdout)
    assert job["paths"]["runs_dir"] == "runs" and job["model"]["name_or_path"] == "tiny:llama"
    assert not (elsewhere / "runs").exists()  # --cfg only prints


def test_python_m_deita_and_accelerate_launch_m_deita(venv, elsewhere, shared_data):
    env = _env()
    python = venv / "bin" / "python"
    plan = _run([python, "-m", "deita", "recipe=tiny", "plan=true", f"paths.shared_data={shared_data}"],
                cwd=elsewhere, env=env)
    sft_row = next(line for line in plan.stdout.splitlines() if line.startswith("sft "))
    assert sft_row.split()[1] == "64"  # reads the shared data from the override: tiny selects 64 rows
    launched = _run([python, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "-m", "deita",
                     "recipe=mistral_deita", "plan=true"], cwd=elsewhere, env=env)
    assert "Plan for recipe=mistral_deita" in launched.stdout


def test_installed_command_relaunches_itself_as_python_m_deita(venv, elsewhere, shared_data):
    """``launch.num_processes=2`` re-launches the installed command as ``python -m deita`` under accelerate (no
    ACCELERATE_USE_CPU set here: the CLI sets it for the CPU re-launch). The launcher holds the run dir's lock
    once: its ranks neither wait on it nor take it (either would stop them), and it is released at the end."""
    from tests.helpers import free_port

    pool = f"data.pool=[{{path: {shared_data}/instruct/llamafactory_alpaca_en_demo.json, limit: 24}}]"
    args = ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=8", pool, "launch.num_processes=2",
            f"launch.extra_args=[--main_process_port,{free_port()}]"]
    # An empty HF_HOME: a default accelerate config on this machine would choose another process layout.
    env = {**_env(), "OMP_NUM_THREADS": "1", "HF_HOME": str(elsewhere / "hf_home")}
    env.pop("ACCELERATE_USE_CPU", None)
    run = _run([venv / "bin" / "deita", *args], cwd=elsewhere, env=env)
    assert "re-launching with 2 processes" in run.stdout + run.stderr
    assert " -m deita recipe=tiny " in run.stdout + run.stderr  # the processes start the installed package
    (manifest,) = (elsewhere / "runs" / "tiny").glob("*/select/manifest.json")
    record = json.loads(manifest.read_text())
    assert record["world_size"] == 2 and record["selected_rows"] == 8
    assert record["config"]["launch"]["num_processes"] == 2
    assert not (manifest.parent.parent / ".lock").exists()


def test_installed_command_without_the_shared_data_says_which_key_to_set(venv, elsewhere):
    proc = subprocess.run([str(venv / "bin" / "deita"), "recipe=tiny", "plan=true"], cwd=elsewhere, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Plan for" not in proc.stdout  # no plan of 0 rows
    assert "../shared/data/instruct/llamafactory_alpaca_en_demo.json: no such file or folder" in proc.stderr
    assert f"paths.shared_data=../shared/data is not a folder (from {elsewhere})" in proc.stderr
    assert "DEITA_SHARED_DATA" in proc.stderr
