"""One run at a time per run directory, and no debris from runs that never started.

:func:`run_lock` holds ``<run_dir>/.lock`` (an ``flock`` on a file naming the holder) for the whole run, so
a second run in the same folder fails at once, naming the holder's PID, instead of racing it. The kernel
drops the lock when its holder dies, however it dies; the next run then takes the folder over and says
whose lock it was. In a multi-process job only one process holds it: the launching ``train.py`` when it
re-launches itself (its children see :data:`HELD_ENV`), else rank 0 of the launcher's processes. No rank
ever waits on the lock, so ranks cannot deadlock on it.

:func:`remove_if_unused` deletes a run dir holding nothing but what Hydra wrote at start-up, and the
parents between it and ``paths.runs_dir`` that this leaves empty (``runs/<recipe>/``), so a run that
stopped on a bad command-line value leaves no folder behind. ``paths.runs_dir`` itself is kept.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK = ".lock"
HELD_ENV = "DEITA_RUN_LOCK_HELD"
"""Set (to the run dir) for the processes a lock holder launches: they run under its lock."""
HYDRA_ENTRIES = (".hydra", "logs")
"""What a run writes into its run dir before any stage does: Hydra's ``.hydra/`` and the per-rank
``logs/`` (:mod:`deita.logs`), plus ``*.log`` files."""


class RunDirBusy(RuntimeError):
    """Another live process holds the run dir's lock."""


def _holder_text(info: dict) -> str:
    where = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    since = f" since {info['started']}" if info.get("started") else ""
    return f"PID {info.get('pid', '?')}{where}{since}"


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        info = json.loads(raw or b"{}")
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def _pid_alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _acquire(path: Path) -> int:
    """Open and ``flock`` ``path``; the fd, or :class:`RunDirBusy` naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirBusy(
                f"run dir {path.parent} is in use by {_holder_text(holder)} ({' '.join(holder.get('argv', []))[:200]}); "
                f"wait for it to finish or stop it — two runs in one folder would overwrite each other's stages"
            ) from None
        try:  # the previous holder may have unlinked the file between our open and our flock: retry
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def run_lock(run_dir: str | os.PathLike, *, rank: int = 0) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` for the block (see the module doc); a no-op on ranks other than 0 and in
    processes launched by a holder. Raises :class:`RunDirBusy` when a live process holds it."""
    run_dir = Path(run_dir).resolve()
    if rank != 0 or os.environ.get(HELD_ENV) == str(run_dir):
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd = _acquire(path)
    try:
        stale = _read_holder(fd)
        if stale.get("pid"):
            state = "still running but no longer holds it" if _pid_alive(stale["pid"]) and \
                stale.get("host") == socket.gethostname() else "no longer running"
            log.warning("run dir %s: took over the lock of %s (%s); its unfinished stages resume",
                        run_dir, _holder_text(stale), state)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        os.fsync(fd)
        previous = os.environ.get(HELD_ENV)
        os.environ[HELD_ENV] = str(run_dir)  # inherited by a re-launch's ranks
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(HELD_ENV, None)
            else:
                os.environ[HELD_ENV] = previous
    finally:
        try:
            path.unlink()  # before unlocking: a waiter that opened this inode retries on a fresh file
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_if_unused(run_dir: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> bool:
    """Delete ``run_dir`` when it holds nothing but Hydra's start-up files (``.hydra/``, ``*.log``), then
    each parent below ``runs_root`` that is left empty; True when ``run_dir`` went. A folder with any stage
    output, partial work or another run's lock is kept, and so is any parent holding anything."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name not in HYDRA_ENTRIES and not (entry.is_file() and entry.suffix == ".log"):
            return False
    shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        return False
    if runs_root is not None:
        root, parent = Path(runs_root).resolve(), run_dir.resolve().parent
        while root in parent.parents:
            try:
                parent.rmdir()  # only an empty folder: another run's files, or its new run dir, keep it
            except OSError:
                break
            parent = parent.parent
    return True
