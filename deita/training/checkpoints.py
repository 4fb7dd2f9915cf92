"""Which trainer checkpoint an interrupted stage can resume from.

The Trainer writes a checkpoint file by file (weights, optimizer, scheduler, RNG state, ``trainer_state.json``
last), in place and not atomically, so a kill during a save leaves a ``checkpoint-N`` folder that looks
newest and crashes every resume. :func:`resumable_checkpoint` resumes only from a *complete* checkpoint:

* ``trainer_state.json`` parses and names its step;
* model weights are present (``*.safetensors``, ``*.bin`` or a DeepSpeed ``global_step*`` folder) and every
  ``.safetensors`` file is as long as its header says;
* optimizer state is present (``optimizer.pt``, FSDP ``optimizer*`` or DeepSpeed's folder);
* every torch file (``.pt``, ``.pth``, ``.bin``) is a readable zip archive with its members inside the file.

These checks read headers and zip directories only (milliseconds, whatever the size). An incomplete
checkpoint newer than the chosen one is deleted (the Trainer will write that step again) and the log says
so; with no complete checkpoint the stage starts from step 0, also said.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

_STEP = re.compile(r"^checkpoint-(\d+)$")
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


def safetensors_problem(path: Path) -> str | None:
    """Why the ``.safetensors`` file at ``path`` is unreadable (short, bad header), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name}: truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"{path.name}: truncated (header of {n} bytes, file of {size})"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return f"{path.name}: unreadable header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"{path.name}: truncated ({size} of {expected} bytes)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why the torch file at ``path`` is unreadable (empty, truncated zip), or None. Files in torch's
    legacy (non-zip) format are only checked for being non-empty."""
    size = path.stat().st_size
    if size == 0:
        return f"{path.name}: empty"
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            return None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path.name}: truncated"
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"{path.name}: truncated or not a torch file"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` (a ``checkpoint-N``) cannot be resumed from, or None when it is complete."""
    files = [p for p in folder.iterdir() if p.is_file()]
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in folder.iterdir())
    weights = [p for p in files if p.suffix == ".safetensors" or p.name.endswith(("model.bin", "adapter_model.bin"))]
    if not weights and not deepspeed and not any(p.name.startswith("pytorch_model_fsdp") for p in folder.iterdir()):
        return "no model weights"
    if not deepspeed and not any(p.name.startswith("optimizer") for p in folder.iterdir()):
        return "optimizer state missing"
    for index in folder.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return f"{index.name}: truncated or not an index"
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"weight shard {missing[0]} missing"
    for path in sorted(files):
        problem = None
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
        elif path.suffix in TORCH_SUFFIXES:
            problem = torch_file_problem(path)
        elif path.suffix == ".json" and path.name != "trainer_state.json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                problem = f"{path.name}: truncated or not JSON"
        if problem:
            return problem
    state = folder / "trainer_state.json"  # the Trainer writes it last
    if not state.is_file():
        return "trainer_state.json missing"
    try:
        if "global_step" not in json.loads(state.read_text()):
            return "trainer_state.json has no global_step"
    except (ValueError, UnicodeDecodeError):
        return "trainer_state.json truncated or not JSON"
    return None


def checkpoints_newest_first(ckpt_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``ckpt_dir``, highest N first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _STEP.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def resumable_checkpoint(ckpt_dir: Path, *, is_main: bool = True) -> Path | None:
    """The newest complete checkpoint in ``ckpt_dir`` (None when there is none); each newer incomplete one
    is logged and, by the main process, deleted."""
    if not ckpt_dir.is_dir():
        return None
    broken: list[tuple[Path, str]] = []
    chosen = None
    for folder in checkpoints_newest_first(ckpt_dir):
        try:
            problem = checkpoint_problem(folder)
        except OSError as err:  # vanished under us (the main process deletes broken ones) or unreadable
            problem = f"unreadable: {err}"
        if problem is None:
            chosen = folder
            break
        broken.append((folder, problem))
    for folder, problem in broken:
        target = f"resuming from {chosen.name}" if chosen else "no complete checkpoint: starting from step 0"
        log.warning("checkpoint %s is incomplete (%s), an interrupted save; %s", folder, problem, target)
        if is_main:
            shutil.rmtree(folder, ignore_errors=True)
    return chosen
