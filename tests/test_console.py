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


QUIET_PROBE = """
import sys
from deita import console
if sys.argv[1] == "before":
    import datasets, transformers
console.configure(False)
print(sorted({"datasets", "transformers"} & set(sys.modules)))
import datasets, transformers
from transformers.utils import logging as hf_logging
print(hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), datasets.utils.logging.get_verbosity(),
      datasets.is_progress_bar_enabled())
"""


def test_quiet_mode_silences_transformers_and_datasets_imported_before_or_after_it():
    """Quiet mode leaves transformers and datasets at errors only with no bars, whether they were imported before
    it (set by call) or after (read from the environment it sets), and does not import them itself."""
    import os
    import subprocess
    import sys

    from deita.console import QUIET_LIBRARY_ENV
    from tests.helpers import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k not in QUIET_LIBRARY_ENV}
    procs = {when: subprocess.Popen([sys.executable, "-c", QUIET_PROBE, when], cwd=REPO_ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for when in ("before", "after")}
    for when, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        imported, settings = out.strip().splitlines()[-2:]
        assert imported == ("['datasets', 'transformers']" if when == "before" else "[]"), when
        assert settings == "40 False 40 False", when  # logging.ERROR, bars off


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
