"""Resume only from complete checkpoints: the completeness checks on real torch/safetensors files, and a real
SIGKILL in the middle of a checkpoint write followed by a resume that ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deita.training.checkpoints import checkpoint_problem, resumable_checkpoint
from tests.helpers import REPO_ROOT, shared_paths


def _checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint folder laid out as the Trainer writes one, with real torch and safetensors files."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.arange(1000, dtype=torch.float32)}, folder / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.ones(1000)}}}, folder / "optimizer.pt")
    torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"python": 1}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_complete_checkpoint_has_no_problem(tmp_path):
    assert checkpoint_problem(_checkpoint(tmp_path / "checkpoint-1", 1)) is None


@pytest.mark.parametrize("damage, problem", [
    (lambda c: _truncate(c / "model.safetensors"), "model.safetensors: truncated"),
    (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt: truncated"),
    (lambda c: _truncate(c / "scheduler.pt"), "scheduler.pt: truncated"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer state missing"),
    (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
    (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json truncated"),
    (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json missing"),
    (lambda c: (c / "optimizer.pt").write_bytes(b""), "optimizer.pt: empty"),
    (lambda c: (c / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-2.safetensors"}})),
     "weight shard model-2.safetensors missing"),
])
def test_each_kind_of_damage_is_named(tmp_path, damage, problem):
    folder = _checkpoint(tmp_path / "checkpoint-1", 1)
    damage(folder)
    assert checkpoint_problem(folder).startswith(problem)


def test_newest_complete_is_chosen_newer_broken_ones_removed_and_said(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3, 10):
        _checkpoint(ckpts / f"checkpoint-{step}", step)
    _truncate(ckpts / "checkpoint-10" / "optimizer.pt")  # numeric order, not name order: 10 is newest
    (ckpts / "checkpoint-3" / "trainer_state.json").unlink()
    caplog.set_level(logging.WARNING, logger="deita.training.checkpoints")
    assert resumable_checkpoint(ckpts) == ckpts / "checkpoint-2"
    assert "checkpoint-10 is incomplete (optimizer.pt: truncated" in caplog.text and "resuming from checkpoint-2" in caplog.text
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_no_complete_checkpoint_starts_from_step_zero_and_says_so(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    _truncate(_checkpoint(ckpts / "checkpoint-1", 1) / "model.safetensors")
    caplog.set_level(logging.WARNING, logger="deita.training.checkpoints")
    assert resumable_checkpoint(ckpts, is_main=False) is None
    assert "starting from step 0" in caplog.text
    assert (ckpts / "checkpoint-1").exists()  # only the main process deletes
    assert resumable_checkpoint(tmp_path / "nothing") is None


# A train.py whose checkpoint save at step 2 writes half of optimizer.pt, says so and hangs there: the
# test SIGKILLs it mid-write. Everything else is the real entry point.
SLOW_SAVE = """
import io, os, sys, time
import torch
from transformers import Trainer

marker = sys.argv.pop(1)
original = Trainer._save_optimizer_and_scheduler

def slow_save(self, output_dir):
    if self.state.global_step == 2:
        buf = io.BytesIO()
        torch.save(self.optimizer.state_dict(), buf)
        with open(os.path.join(output_dir, "optimizer.pt"), "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
        open(marker, "w").close()
        time.sleep(600)
    return original(self, output_dir)

Trainer._save_optimizer_and_scheduler = slow_save
from deita.__main__ import main
main()
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _sft_args(runs: Path, tmp_path: Path, shared_data: Path) -> list[str]:
    # 32 rows, 8 per optimizer step: 4 steps, a checkpoint after each
    return ["recipe=tiny", "stages=[select,sft]", "logger=none", "selection.budget=32", "sft.max_length=128",
            "+sft.args.max_steps=4", "+sft.args.save_steps=1", "sft.args.warmup_steps=0",
            *shared_paths(tmp_path, shared_data), f"paths.runs_dir={runs}"]


@pytest.mark.slow  # three train.py runs: 40-75 s on 2 cores
def test_sigkill_during_a_checkpoint_write_resumes_to_the_uninterrupted_result(tmp_path, shared_data):
    from safetensors.torch import load_file

    marker = tmp_path / "mid-write"
    killed_runs = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(marker), *_sft_args(killed_runs, tmp_path, shared_data)],
                            cwd=REPO_ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    (run_dir,) = (killed_runs / "tiny").iterdir()
    (partial,) = run_dir.glob(".sft.partial-*")
    half = partial / "checkpoints" / "checkpoint-2"
    assert (half / "optimizer.pt").is_file() and not (half / "trainer_state.json").exists()

    resumed = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *_sft_args(killed_runs, tmp_path, shared_data)],
                             cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"checkpoint {half} is incomplete (optimizer.pt: truncated" in log
    assert f"resuming from {partial / 'checkpoints' / 'checkpoint-1'}" in log
    assert "stage select: unchanged" in log

    clean_runs = tmp_path / "clean"
    clean = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *_sft_args(clean_runs, tmp_path, shared_data)],
                           cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-3000:]
    (clean_dir,) = (clean_runs / "tiny").iterdir()
    got = load_file(run_dir / "sft" / "model" / "model.safetensors")
    want = load_file(clean_dir / "sft" / "model" / "model.safetensors")
    assert got.keys() == want.keys() and all(bool((got[k] == want[k]).all()) for k in want)
    manifest = json.loads((run_dir / "sft" / "manifest.json").read_text())
    assert manifest["metrics"]["global_steps"] == 4
