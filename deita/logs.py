"""One log file per rank: ``<run_dir>/logs/rank<N>.log``.

Console output stays on the main process (stages log there only); each rank's file keeps what that rank
logged, warnings and errors of every rank included, so a rank that died or hung at scale can be read on
its own. Every line names its rank. Files are appended to, so a resumed run continues its ranks' logs.
Hydra's own log file (``<run_dir>/deita.log``) is the main rank's: other ranks stop writing to it while
the run is logged here, so N processes do not interleave their lines in one file.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FORMAT = "[%(asctime)s][rank {rank}][%(name)s][%(levelname)s] - %(message)s"


class RankFileHandler(logging.FileHandler):
    """The handler :func:`rank_log` installs."""


def rank_log_path(run_dir: str | os.PathLike, rank: int) -> Path:
    """Where rank ``rank`` of a run in ``run_dir`` writes its log."""
    return Path(run_dir) / "logs" / f"rank{int(rank)}.log"


@contextmanager
def rank_log(run_dir: str | os.PathLike, rank: int, world_size: int) -> Iterator[Path]:
    """While the block runs, the root logger's records (INFO and above, as far as the root level lets
    them through: INFO under ``train.py``) also go to this rank's log file; yields its path."""
    path = rank_log_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = RankFileHandler(path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT.format(rank=int(rank))))
    root.addHandler(handler)
    shared = [] if int(rank) == 0 else [h for h in root.handlers if type(h) is logging.FileHandler]
    for h in shared:  # Hydra's deita.log: the main rank's alone
        root.removeHandler(h)
    try:
        logging.getLogger(__name__).info("rank %d of %d, pid %d on %s, logging to %s", rank, world_size,
                                         os.getpid(), socket.gethostname(), path)
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()
        for h in shared:
            root.addHandler(h)
