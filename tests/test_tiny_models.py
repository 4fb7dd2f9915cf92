"""The tiny offline models: loadable, digits are single tokens, chat template marks assistant tokens."""

import pytest


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_tiny_model_round_trip(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deita.models.tiny import build_tiny_model

    path = build_tiny_model(tmp_path / arch, arch)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == f"{arch.capitalize()}ForCausalLM"
    assert all(len(tok.encode(d, add_special_tokens=False)) == 1 for d in "123456")
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    answer = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(answer) == "hello" + tok.eos_token


def test_unknown_arch_is_rejected(tmp_path):
    from deita.models.tiny import build_tiny_model

    with pytest.raises(ValueError, match="arch must be one of"):
        build_tiny_model(tmp_path / "x", "gpt2")


def test_tiny_model_is_complete_when_built_on_a_non_zero_rank(tmp_path, monkeypatch):
    """Each rank of a launch builds a missing tiny model; HF's save_pretrained writes no weights on rank 1,
    and a rank-1 folder that won the rename race once left SFT without a config.json."""
    from transformers import PreTrainedModel

    from deita.models.tiny import build_tiny_model

    hf_globals = PreTrainedModel.should_save_on_this_rank.__globals__
    monkeypatch.setitem(hf_globals, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setitem(hf_globals, "_get_torch_distributed_rank", lambda: 1)
    path = build_tiny_model(tmp_path / "rank1", "llama")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}


def test_tiny_model_config_records_its_architecture(tiny_mistral):
    import json

    assert json.loads((tiny_mistral / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]
