"""Shared fixtures: tiny offline models and the shared data folder. Nothing here touches the hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread in the test process and the processes it starts (set before anything imports torch): tiny
# models gain nothing from a second thread, and on the shared 2-core machine two threads per process spin
# against the other jobs (tests/test_nuggets_early.py at load 4: 26-36 s at one thread, 231-261 s at two).
# train.py runs at one thread by default too (torch_threads). A value set in the environment is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEITA_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data folder (``../shared/data``); tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Folder of a tiny random LlamaForCausalLM plus tokenizer (digits 1-6 single tokens)."""
    from deita.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    """Folder of a tiny random MistralForCausalLM plus tokenizer."""
    from deita.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-mistral", "mistral")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_data):
    """One quiet ``train.py recipe=tiny`` run of every stage (select, sft, dpo, eval; W&B offline) in a
    subprocess, shared by the tests that read its artifacts (tests/test_end_to_end.py) and its terminal
    output (tests/test_console.py): ``(args, result, run_dir)``. A test may run ``args`` again, with keys that
    keep the run dir and change no stage (tests/test_hub.py's dry run stages a push in ``<run dir>/hub``), but
    must not change the stages' artifacts."""
    from tests.helpers import run_train, shared_paths

    tmp = tmp_path_factory.mktemp("tiny-run")
    args = ["recipe=tiny", *shared_paths(tmp, shared_data), "selection.budget=32", "sft.max_length=128",
            "dpo.max_length=128", "stages=[select,sft,dpo,eval]",
            f"data.preference=[{{path: {shared_data}/preference/llamafactory_dpo_en_demo.json, limit: 8}}]"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp / "runs" / "tiny").iterdir()
    return args, result, run_dir


@pytest.fixture(scope="session")
def select_sweep(tmp_path_factory, shared_data):
    """One ``train.py -m recipe=tiny stages=[select] selection.budget=50,100`` sweep with a hub dry run
    (``hub.repo_prefix=me/x``; hub keys do not move run dirs), shared by the tests that read its run dirs
    (tests/test_end_to_end.py) and its push plans (tests/test_hub.py): ``(result, sweep folder)``."""
    from tests.helpers import run_train, shared_paths

    tmp = tmp_path_factory.mktemp("select-sweep")
    args = ["-m", "recipe=tiny", "logger=none", "stages=[select]", "selection.budget=50,100",
            *shared_paths(tmp, shared_data), "hub.push=true", "hub.dry_run=true", "hub.repo_prefix=me/x"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    return result, tmp / "runs" / "tiny"
