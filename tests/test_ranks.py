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
