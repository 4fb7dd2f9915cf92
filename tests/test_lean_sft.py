"""The lean SFT trainer (deita/training/lean_sft.py): the same loss as TRL's SFTTrainer, step by step,
without the per-token metrics, also when the fused LM head walks the vocabulary in several tiles."""

from __future__ import annotations

import pytest


def _train(model_dir, lean: bool, out_dir, steps: int = 3) -> list[dict]:
    import torch
    from datasets import Dataset
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig

    from deita.training.common import trainer_arguments
    from deita.training.lean_sft import sft_trainer_class

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = [{"messages": [{"role": "user", "content": f"question {i} " * (1 + i % 5)},
                          {"role": "assistant", "content": f"answer {i} " * (2 + i % 7)}]} for i in range(4 * steps)]
    node = OmegaConf.create({"per_device_batch_size": 2, "global_batch_size": 4, "max_length": 64,
                             "args": {"learning_rate": 1e-3, "num_train_epochs": 1, "logging_steps": 1,
                                      "save_strategy": "no", "disable_tqdm": True}})
    args = SFTConfig(**trainer_arguments(node, out_dir, world_size=1, seed=0, report_to="none", run_name="t",
                                         eval_enabled=False), assistant_only_loss=True)
    trainer = sft_trainer_class(lean)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                      processing_class=tok)
    trainer.train()
    return [e for e in trainer.state.log_history if "loss" in e]


@pytest.mark.parametrize("tile", [None, 96])
def test_lean_sft_loss_equals_trl_and_drops_only_the_token_metrics(tiny_llama, tmp_path, monkeypatch, tile):
    import trl.trainer.utils as trl_utils

    from deita.training import lean_sft

    if tile is not None:  # the tiny vocabulary (about 1K) in several tiles, as SmolLM2's 49K is at 8192
        monkeypatch.setattr(lean_sft, "VOCAB_TILE", tile)
    monkeypatch.setattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE)
    plain = _train(tiny_llama, False, tmp_path / "plain")
    lean = _train(tiny_llama, True, tmp_path / "lean")
    assert len(plain) == len(lean) == 3
    for p, q in zip(plain, lean):
        assert q["loss"] == pytest.approx(p["loss"], abs=1e-5)
        assert q["grad_norm"] == pytest.approx(p["grad_norm"], rel=1e-4)
        assert "entropy" in p and "mean_token_accuracy" in p
        assert "entropy" not in q and "mean_token_accuracy" not in q
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == lean_sft.VOCAB_TILE
