"""A clean terminal: a quiet run prints no third-party warnings or per-shard bars and ends with the summary;
``verbose=true`` shows what the libraries print. Real subprocess runs of train.py."""

from __future__ import annotations

import re

import pytest

from tests.helpers import run_train, shared_paths

NOISE = ("Warning", "Setting accelerator to CPU", "Writing model shards", "Loading weights",
         "Running in WANDB offline mode", "'train_runtime'")


def test_quiet_tiny_run_has_no_warnings_and_ends_with_the_summary(tiny_run):
    _, result, _ = tiny_run  # recipe=tiny, every stage, quiet (conftest.py)
    output = result.stdout + result.stderr
    for noise in NOISE:
        assert not [line for line in output.splitlines() if noise in line], noise
    for stage in ("select", "sft", "dpo", "eval"):
        assert f"── stage {stage} ──" in output
    assert re.search(r"sft: 100%.*loss=", output)  # one bar per training stage, with its loss
    summary = result.stdout[result.stdout.index("deita run summary"):]
    assert result.stdout.rstrip().endswith("─" * 72)
    for figure in ("select ", "32 selected (budget 32)", "rows trained", "pairs trained", "reward accuracy",
                   "held-out loss", "selected data", "report", "sft model", "dpo model", "W&B", "total"):
        assert figure in summary, figure


@pytest.mark.slow
def test_verbose_shows_the_libraries_output(tmp_path, shared_data):
    result = run_train(["recipe=tiny", "logger=none", "verbose=true", *shared_paths(tmp_path, shared_data),
                        "selection.budget=8", "sft.max_length=64", "stages=[select,sft]"])
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert "FutureWarning" in output and "Writing model shards" in output
    assert "deita run summary" in result.stdout


def test_the_gguf_dequantisation_bar_follows_transformers_progress_bar_switch(capfd):
    """transformers' GGUF loader draws its bar with tqdm directly; quiet mode (transformers' bars off) hides
    it too while packaged:smollm2 is de-quantised, and a verbose run (bars on) keeps it. The real loader is
    checked to draw that bar through the module's ``tqdm`` name (what the switch replaces)."""
    import inspect

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from deita.models.resolve import gguf_bar_like_transformers_bars

    assert "tqdm(reader.tensors" in inspect.getsource(gguf_utils.load_gguf_checkpoint)
    was_enabled = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (False, True):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            capfd.readouterr()
            with gguf_bar_like_transformers_bars():
                for _ in gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
                    pass
            assert ("de-quantizing" in capfd.readouterr().err) == enabled
        original = gguf_utils.tqdm
        hf_logging.disable_progress_bar()
        with gguf_bar_like_transformers_bars():
            pass
        assert gguf_utils.tqdm is original  # restored
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()
