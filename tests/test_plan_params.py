"""Plan mode counts a local model's parameters from its config.json, exactly as torch would."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from deita.plan import format_plan, params_billions, params_from_config


@pytest.mark.parametrize("make, tied", [(LlamaConfig, False), (LlamaConfig, True), (MistralConfig, False)])
def test_params_from_config_equals_numel(tmp_path, make, tied):
    config = make(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    config.save_pretrained(tmp_path)
    numel = sum(p.numel() for p in model.parameters())  # tied weights are counted once by parameters()
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert params_from_config(tmp_path) * 1e9 == pytest.approx(numel - norms, abs=0.5)
    assert params_billions(str(tmp_path)) == params_from_config(tmp_path)


def test_unknown_size_is_shown_as_question_mark_not_nan(tmp_path):
    assert params_from_config(tmp_path) is None
    assert params_billions(str(tmp_path / "no-size-here")) != params_billions(str(tmp_path / "no-size-here"))  # NaN

    class Opts:
        gpus, gpu_tflops, mfu, chars_per_token = 8, 989.0, 0.4, 3.6

    class Cfg:
        plan_options, recipe_name = Opts, "x"

    plan = [{"stage": "select", "rows": 10, "tokens": 100.0, "gpu_hours": float("nan"), "notes": "n"},
            {"stage": "sft", "rows": 10, "tokens": 100.0, "gpu_hours": 1.0, "notes": "n", "optimizer_steps": 1}]
    text = format_plan(Cfg, plan)
    assert "nan" not in text and "?" in text and "total ≈ 1.00 GPU-hours" in text


def test_plan_counts_a_pool_by_streaming_it_with_the_loaders_counts(tmp_path):
    """Plan mode's row and token counts equal those of the loaded rows (bad records skipped as the source
    says, limits kept),
    while it never holds the pool: its peak Python allocation stays a small fraction of the rows' size."""
    import json
    import tracemalloc

    from omegaconf import OmegaConf

    from deita.data.sources import load_sources
    from deita.plan import _text_chars, source_stats

    pool = tmp_path / "pool.jsonl"
    with pool.open("w") as f:
        for i in range(20000):
            f.write(json.dumps({"instruction": f"question {i} " + "x" * 200, "output": "y" * 300}) + "\n")
        f.write("{bad json\n")
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(50)))
    sources = [OmegaConf.create({"path": str(pool), "on_error": "skip"}), OmegaConf.create({"path": str(second), "limit": 30})]
    tracemalloc.start()
    stats = source_stats(sources, "sft", 4.0)
    _, streamed_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    rows = load_sources(sources, "sft").rows
    _, rows_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert stats.rows == len(rows) == 20030
    assert stats.tokens == sum(_text_chars(r) for r in rows) / 4.0
    assert streamed_peak < rows_peak / 4, (streamed_peak, rows_peak)
