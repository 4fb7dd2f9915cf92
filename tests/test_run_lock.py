"""Run directories: one run at a time (a lock naming its holder, stale locks taken over), and no debris
from runs that stopped on a bad value or from stages that failed before writing anything. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run_train, shared_paths

HOLD = ("import sys, time\nfrom deita.rundir import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def _hold(run_dir: Path) -> subprocess.Popen:
    """A live process holding ``run_dir``'s lock (it prints 'held' once it does)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def _args(tmp_path, shared_data, *extra):
    return ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=4", *shared_paths(tmp_path, shared_data),
            *extra]


def _run_dir(tmp_path) -> Path:
    return tmp_path / "runs" / "tiny" / "selection.budget=4"


def test_a_second_run_fails_at_once_naming_the_holder_then_takes_over_a_dead_ones_lock(tmp_path, shared_data):
    """Then a bad value on a run dir with a finished stage exits 2 and does not remove the run dir."""
    run_dir = _run_dir(tmp_path)
    holder = _hold(run_dir)
    try:
        busy = run_train(_args(tmp_path, shared_data))
        assert busy.returncode == 2, busy.stderr[-3000:]
        assert f"is in use by PID {holder.pid}" in busy.stderr and "Traceback" not in busy.stderr
        assert not (run_dir / "select").exists() and not list(run_dir.glob(".select.partial-*"))  # nothing ran
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without releasing anything by hand
        holder.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid  # its stale lock file stays

    after = run_train(_args(tmp_path, shared_data))
    assert after.returncode == 0, after.stderr[-3000:]
    log = after.stdout + after.stderr
    assert f"took over the lock of PID {holder.pid}" in log and "no longer running" in log
    assert (run_dir / "select" / "manifest.json").is_file()
    assert not (run_dir / ".lock").exists()  # released at the end

    # A bad value on the next run in this run dir (a key the dir name leaves out: a finished stage is there now)
    # stops it, and the stage stays.
    again = run_train(_args(tmp_path, shared_data, "stages=[select,dpo]", "launch.timeout_minutes=-1"))
    assert again.returncode == 2 and "launch.timeout_minutes" in again.stderr, again.stderr[-3000:]
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == [run_dir.name]  # the same run dir
    assert (run_dir / "select" / "manifest.json").is_file()


def test_a_relaunched_multi_process_run_is_refused_before_it_starts_a_rank(tmp_path, shared_data):
    """The launcher takes the lock before it starts any rank, so a busy run dir stops the job at once. The
    successful re-launch (the lock taken once, by the launcher; its ranks neither wait on it nor take it; released
    at the end) runs in tests/test_wheel.py::test_installed_command_relaunches_itself_as_python_m_deita."""
    from tests.helpers import free_port

    extra = ["launch.num_processes=2", f"launch.extra_args=[--main_process_port,{free_port()}]"]
    run_dir = _run_dir(tmp_path)
    holder = _hold(run_dir)
    try:
        started = time.monotonic()
        busy = run_train(_args(tmp_path, shared_data, *extra), timeout=120)
        assert busy.returncode == 2 and f"PID {holder.pid}" in busy.stderr, busy.stderr[-3000:]
        assert "re-launching" not in busy.stdout + busy.stderr  # refused before starting any rank
        assert time.monotonic() - started < 60
        assert not (run_dir / "select").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_bad_command_line_value_leaves_no_run_dir(tmp_path, shared_data):
    result = run_train(_args(tmp_path, shared_data, "dpo.beta=-1"))
    assert result.returncode == 2 and "dpo.beta" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "runs" / "tiny").exists()  # nor its empty runs/<recipe>/ parent
    assert (tmp_path / "runs").is_dir()  # paths.runs_dir is kept


def test_removing_an_unused_run_dir_removes_only_the_parents_it_leaves_empty(tmp_path):
    from deita.rundir import remove_if_unused

    root = tmp_path / "runs"
    for name in ("a=1", "a=2"):
        (root / "tiny" / "x" / name / ".hydra").mkdir(parents=True)
    (root / "tiny" / "x" / "a=2" / "select").mkdir()  # a finished stage: kept
    assert not remove_if_unused(root / "tiny" / "x" / "a=2", root)
    assert remove_if_unused(root / "tiny" / "x" / "a=1", root)
    assert sorted(p.name for p in (root / "tiny" / "x").iterdir()) == ["a=2"]  # a parent with a run in it stays
    (root / "tiny" / "x" / "a=2" / "select").rmdir()
    assert remove_if_unused(root / "tiny" / "x" / "a=2", root)
    assert root.is_dir() and list(root.iterdir()) == []  # both empty parents gone, the root kept
    (tmp_path / "elsewhere" / "run" / ".hydra").mkdir(parents=True)
    assert remove_if_unused(tmp_path / "elsewhere" / "run", root)  # not under the root: its parent stays
    assert (tmp_path / "elsewhere").is_dir()


def test_lock_in_process_names_holder_and_is_reentrant_for_launched_children(tmp_path, monkeypatch):
    from deita.rundir import HELD_ENV, RunDirBusy, run_lock

    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()
        assert os.environ[HELD_ENV] == str(run_dir.resolve())  # what a re-launch's ranks inherit
        with run_lock(run_dir):  # a launched child (same env) does not take it again, nor wait
            pass
        monkeypatch.delenv(HELD_ENV)
        with pytest.raises(RunDirBusy, match=f"in use by PID {os.getpid()}"):
            with run_lock(run_dir):
                pass
        with run_lock(run_dir, rank=1):  # other ranks never take it
            pass
    assert not (run_dir / ".lock").exists()


@pytest.mark.slow  # select + SFT while a second train.py starts: ~35 s on 2 loaded cores
def test_two_real_runs_in_one_run_dir_the_second_stops_at_once(tmp_path, shared_data):
    """Before: both ran and crashed on each other's stage folders. Now the second exits 2 naming the first."""
    args = _args(tmp_path, shared_data, "stages=[select,sft]", "selection.budget=16", "sft.max_length=128")
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.Popen([sys.executable, str(REPO_ROOT / "train.py"), *args], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (locks := list((tmp_path / "runs").glob("tiny/*/.lock"))):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        run_dir = locks[0].parent
        second = run_train(args)
        assert second.returncode == 2 and f"is in use by PID {first.pid}" in second.stderr, second.stderr[-3000:]
        assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    finally:
        first.kill()
        first.wait()
    assert (run_dir / "sft" / "manifest.json").is_file() and not (run_dir / ".lock").exists()
