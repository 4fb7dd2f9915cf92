"""Multi-process jobs end cleanly: a bad input in a re-launched job is printed once by the launcher (exit
2, no traceback), a stalled rank ends the job after ``launch.timeout_minutes`` with a message naming it."""

from __future__ import annotations

import json
import time

import pytest

from deita.cli import ranks_errors
from tests.helpers import free_port, run_train, shared_paths


def _record(folder, rank, message, code):
    (folder / f"rank-{rank}.json").write_text(json.dumps({"message": message, "code": code}))


def test_the_launcher_reports_each_distinct_error_once(tmp_path):
    assert ranks_errors(str(tmp_path), 0) == ("", 0)
    message, code = ranks_errors(str(tmp_path), 1)
    assert code == 1 and "accelerate exit status 1" in message  # killed ranks recorded nothing

    _record(tmp_path, 0, "error: pool.json: record 3: no 'output'", 2)
    _record(tmp_path, 1, "error: pool.json: record 3: no 'output'", 2)
    assert ranks_errors(str(tmp_path), 0) == ("error: pool.json: record 3: no 'output'", 2)

    _record(tmp_path, 1, "error: a rank did not reach the barrier", 1)  # a consequence: left out
    assert ranks_errors(str(tmp_path), 0) == ("error: pool.json: record 3: no 'output' (rank 0)", 2)

    for f in tmp_path.iterdir():
        f.unlink()
    _record(tmp_path, 0, "error: a rank did not reach the barrier before stage select", 1)
    assert ranks_errors(str(tmp_path), 1) == ("error: a rank did not reach the barrier before stage select", 1)


def test_a_relaunched_job_with_a_bad_input_prints_its_error_once_and_exits_2(tmp_path, shared_data):
    pool = tmp_path / "pool.json"
    # record 100 lacks its output: past the head the preflight reads, so the ranks meet it in the stage
    pool.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(100)] + [{"instruction": "q"}]))
    args = ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=2", "launch.num_processes=2",
            f"launch.extra_args=[--main_process_port,{free_port()}]", f"data.pool=[{{path: '{pool}'}}]",
            *shared_paths(tmp_path, shared_data)]
    result = run_train(args, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pool.json" in errors[0] and "100" in errors[0], result.stderr[-3000:]
    assert "re-launching with 2 processes" in result.stdout + result.stderr  # the ranks, not the preflight
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    assert "ChildFailedError" not in result.stderr


def test_a_user_run_accelerate_launch_with_a_bad_input_prints_it_once_and_every_rank_exits_2(tmp_path, shared_data):
    """`accelerate launch --num_processes 2 train.py ...` run by the user (not deita's re-launch): a bad config
    value (every rank's validation finds it) and a bad record past the preflight's head (both ranks find it
    inside select) are each printed once, by the main rank; both ranks exit 2 (none SIGTERMed by the agent),
    the launcher's report names the error as its root cause, and no run dir or meeting folder is left. The
    launcher's own ChildFailedError traceback remains (torch's agent prints it; see deita/rank_exit.py)."""
    import os
    import sys

    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(100)] + [{"instruction": "q"}]))
    cases = [(["selection.budget=-5"], "error: config key 'selection.budget': must be a positive row count or -1"),
             ([f"data.pool=[{{path: '{pool}'}}]"], f"error: {pool}: record 100: field 'output'")]
    temp = tmp_path / "tmp"
    temp.mkdir()
    for overrides, message in cases:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port())]
        args = ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=2", *overrides,
                *shared_paths(tmp_path, shared_data)]
        result = run_train(args, launcher=launcher, env={"ACCELERATE_USE_CPU": "1", "TMPDIR": str(temp)}, timeout=300)
        out = result.stdout + result.stderr
        assert result.returncode != 0, out[-3000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(message), out[-3000:]
        assert "stopped on rank 1" not in out and "rank 1 of 2" not in out  # rank 1's console is its log file
        assert out.count("exitcode  : 2 ") == 2 and "SIGTERM)" not in out, out[-3000:]  # both ranks exit 2
        assert f"traceback : {message}" in out  # the agent's root cause is the error, not a link
        assert out.count("Traceback") == 1 and "ChildFailedError" in out  # the launcher's own report, once
        assert not any((tmp_path / "runs").iterdir())  # no run dir, no empty runs/tiny
        assert not list(temp.glob("deita-ranks-*"))


WAITING_RANK = """
import sys
from deita import rank_exit
rank_exit.WAIT_S = float(sys.argv[1])
print("waiting", flush=True)
rank_exit.stop_every_rank("error: bad input", 2, sys.argv[2], None)
"""


def test_a_waiting_rank_exits_2_on_the_agents_sigterm_or_prints_an_error_the_main_rank_did_not_share(tmp_path):
    """Rank 1 of a user-run launch waits for the agent's SIGTERM and exits 2 on it, silently; when none comes
    (the main rank did not stop on this error) it prints the error itself, naming its rank."""
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
           "LOCAL_WORLD_SIZE": "2", "MASTER_PORT": str(free_port()), "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-c", WAITING_RANK]
    proc = subprocess.Popen([*cmd, "30", str(tmp_path / "run")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "waiting\n"
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("deita-ranks-*/rank-1")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err == ""
    alone = subprocess.run([*cmd, "-29.5", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 2
    assert alone.stderr == "error: bad input (rank 1; the main rank did not stop on it)\n"


STALL = """
import os, time
import deita.pipeline as pipeline

original = pipeline.run_stage

def run_stage(*args, **kwargs):
    if os.environ.get("RANK") == "1":
        time.sleep(600)  # a hung rank: never reaches the stage barrier
    return original(*args, **kwargs)

pipeline.run_stage = run_stage
from deita.__main__ import main
main()
"""


@pytest.mark.slow  # waits out a 0.25-minute timeout after two ranks start: ~40-60 s
def test_a_stalled_rank_ends_the_job_naming_the_rank(tmp_path, shared_data):
    import subprocess
    import sys

    from tests.helpers import REPO_ROOT

    script = tmp_path / "stall.py"
    script.write_text(STALL)
    args = ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=4", "launch.num_processes=2",
            "launch.timeout_minutes=0.25", f"launch.extra_args=[--main_process_port,{free_port()}]",
            *shared_paths(tmp_path, shared_data)]
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script), *args], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=400)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: rank 1 did not reach the barrier before stage select within "
                                "launch.timeout_minutes=0.25; stopping the job")
    assert took < 300  # not the 600 s the stalled rank sleeps
