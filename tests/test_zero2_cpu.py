"""A real 2-process DeepSpeed ZeRO-2 SFT run on CPU through ``launch/deepspeed_zero2.yaml``.

Slow: the first DeepSpeed run on a machine JIT-builds ``deepspeed_shm_comm`` (about a minute), cached in
``~/.cache/torch_extensions`` afterwards. On CPU the trainer args need ``ddp_backend="gloo"``; without it
accelerate sees no CUDA backend and DeepSpeed's batch-size check fails (see launch/README.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys, time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from deita.data.templates import apply_template

model_dir, out_dir = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
apply_template(tok, "vicuna_v1.1")
rows = [
    {"messages": [{"role": "user", "content": f"list {i} numbers"}, {"role": "assistant", "content": "1 2 3 " * (i % 4 + 1)}]}
    for i in range(16)
]
args = SFTConfig(
    output_dir=str(out_dir / "run"), ddp_backend="gloo", bf16=False, gradient_checkpointing=False,
    report_to="none", save_strategy="no", max_steps=3, max_length=64, per_device_train_batch_size=2,
    learning_rate=1e-3, logging_steps=1, assistant_only_loss=True, disable_tqdm=True, seed=0,
)
trainer = SFTTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
t0 = time.perf_counter()
trainer.train()
acc = trainer.accelerator
import deepspeed
info = {
    "rank": acc.process_index,
    "world_size": acc.num_processes,
    "distributed_type": str(acc.distributed_type),
    "engine": type(trainer.model_wrapped).__name__,
    "is_engine": isinstance(trainer.model_wrapped, deepspeed.DeepSpeedEngine),
    "zero_stage": trainer.model_wrapped.zero_optimization_stage(),
    "global_step": trainer.state.global_step,
    "train_s": time.perf_counter() - t0,
    "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
}
assert info["distributed_type"] == "DistributedType.DEEPSPEED", info
assert info["world_size"] == 2 and info["is_engine"] and info["zero_stage"] == 2, info
(out_dir / f"rank{acc.process_index}.json").write_text(json.dumps(info))
'''


@pytest.mark.slow
def test_zero2_two_cpu_processes(tiny_llama, tmp_path):
    pytest.importorskip("deepspeed")
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    script = tmp_path / "zero2_sft.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it would silently drop DeepSpeed
    env.update(WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    cmd = [accelerate, "launch", "--config_file", "launch/deepspeed_zero2.yaml", "--num_processes", "2",
           str(script), str(tiny_llama), str(tmp_path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    infos = sorted((json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)), key=lambda d: d["rank"])
    assert [i["rank"] for i in infos] == [0, 1]
    for info in infos:
        assert info["distributed_type"] == "DistributedType.DEEPSPEED"
        assert info["world_size"] == 2 and info["is_engine"] and info["zero_stage"] == 2
        assert info["global_step"] == 3
    print(f"zero2 cpu: wall {wall:.1f} s, train() {infos[0]['train_s']:.1f} s, losses {infos[0]['losses']}")
