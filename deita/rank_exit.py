"""A bad input under a launcher the user ran (``accelerate launch --num_processes N train.py ...``, ``torchrun``):
said once, every rank exits 2, nothing left behind.

deita's own re-launch (``launch.num_processes=N``) collects its ranks' errors and prints each once
(:func:`deita.cli.ranks_errors`). Under a launcher the user ran there is no such collector, and every rank
validates the config, preflights the inputs and reads the pool itself, so every rank finds the same bad
input. Printed by each, it showed N times; and the launcher's agent, seeing the first rank exit, SIGTERMed
the others (exit -15), some before they had cleaned up their run dir. So, for a bad input (a config or
data error):

* the main rank prints the line at once; the other ranks print nothing;
* on each machine, local rank 0 waits (at most :data:`WAIT_S`) until every local rank has found it (an
  empty file per rank in a folder named after the agent's PID), then removes the unused run dir and exits;
* every rank ends with the same status, also when the agent's SIGTERM reaches it while it waits;
* a rank whose error the main rank did not share (no SIGTERM within ``WAIT_S`` + 30 s) prints it itself,
  naming its rank, and exits.

The launcher (torch's elastic agent) then reports the failed ranks with its own ``ChildFailedError``
traceback and exits 1. No rank can stop that report short of killing the launcher; the main rank writes its
error into the agent's error file (``TORCHELASTIC_ERROR_FILE``), so the report's root cause is the
bad input's line rather than a link to torch's documentation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

WAIT_S = 60.0
"""How long local rank 0 waits for its peers to reach the same error before it exits anyway."""


def user_launched_ranks() -> bool:
    """True in one of several ranks of a launcher the user ran (not deita's own re-launch)."""
    from deita.cli import ERROR_DIR_ENV, under_launcher

    return under_launcher() and int(os.environ.get("WORLD_SIZE", 1)) > 1 and not os.environ.get(ERROR_DIR_ENV)


def _meeting_folder() -> Path:
    """Where the ranks one agent started meet: named after the agent (their parent) and the job."""
    job = f"{os.getppid()}-{os.environ.get('TORCHELASTIC_RUN_ID', '')}-{os.environ.get('MASTER_PORT', '')}"
    return Path(tempfile.gettempdir()) / f"deita-ranks-{job}"


def _exit_on_sigterm(code: int) -> None:
    def handler(signum, frame):  # the agent stops the ranks once one has exited: end with the same status
        sys.stderr.flush()
        os._exit(code)

    signal.signal(signal.SIGTERM, handler)


def _record_root_cause(message: str) -> None:
    """Put ``message`` where the elastic agent reads a failed rank's error, for its report's root cause."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        try:
            # the layout torch's @record writes; the report shows "py_callstack" as the rank's traceback
            extra = {"py_callstack": message, "timestamp": str(int(time.time()))}
            Path(path).write_text(json.dumps({"message": {"message": message, "extraInfo": extra}}))
        except OSError:
            pass


def stop_every_rank(message: str, code: int, run_dir: str, runs_root: str | None) -> None:
    """End this rank of a user-run launch for a bad input (see the module doc); never returns."""
    from deita.rundir import remove_if_unused

    _exit_on_sigterm(code)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    folder = _meeting_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{local_rank}").touch()
    if int(os.environ.get("RANK", 0)) == 0:
        print(message, file=sys.stderr, flush=True)
        _record_root_cause(message)
    if local_rank != 0:  # wait for the agent's SIGTERM, sent when local rank 0 exits
        time.sleep(WAIT_S + 30)
        print(f"{message} (rank {os.environ.get('RANK', '?')}; the main rank did not stop on it)", file=sys.stderr,
              flush=True)
        os._exit(code)
    deadline = time.monotonic() + WAIT_S
    while len(list(folder.glob("rank-*"))) < local_world and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_if_unused(run_dir, runs_root)  # after every local rank's Hydra wrote its start-up files
    shutil.rmtree(folder, ignore_errors=True)
    sys.stderr.flush()
    os._exit(code)
