"""Tiny random Llama/Mistral models with an offline-trained tokenizer, for tests and ``recipe=tiny``.

Nothing here touches the hub. :func:`build_tiny_model` writes a folder that
``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load like any checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

TINY_ARCHS = ("llama", "mistral")

#: Chat template of the tiny tokenizer. Assistant content sits inside ``{% generation %}`` markers so
#: TRL's ``assistant_only_loss`` can find it.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>\n' }}"
    "{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] + eos_token }}{% endgeneration %}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to and in is that for it as with was on be by this are or from at which but not have "
    "you your we they write explain give list describe create find make answer question response "
    "instruction input output code function python data number value string list sort return print "
    "story poem email summary translate sentence word text example list step first second third next "
    "because however therefore user assistant system human gpt helpful detailed polite quality "
    "complexity score query please identify following corresponding chat between curious artificial "
    "intelligence assistant gives answers questions good bad best better simple complex harmful"
).split()


def _corpus(n_lines: int = 3000, seed: int = 0) -> list[str]:
    """Deterministic synthetic English-like lines plus the prompt vocabulary the scorers use."""
    rng = random.Random(seed)
    lines = [
        "You are a helpful assistant. Please identify the complexity score of the following user query.",
        "##Query: ##Complexity: ##Quality: #Question#: #Response#: Instruction: Input: Response:",
        "USER: ASSISTANT: A chat between a curious user and an artificial intelligence assistant.",
        "1 2 3 4 5 6 7 8 9 0 12 34 56 100 2024",
    ]
    for _ in range(n_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 999)))
        line = " ".join(words)
        lines.append(line[0].upper() + line[1:] + rng.choice([".", "?", "!", ":", ""]))
    return lines


def build_tiny_tokenizer(vocab_size: int = 1024, seed: int = 0):
    """Train a byte-level BPE offline and wrap it as a fast tokenizer with a chat template.

    Every byte is in the base alphabet, so the digits ``"1"``..``"6"`` are single tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_corpus(seed=seed), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    for digit in "123456":
        ids = tok.encode(digit, add_special_tokens=False)
        if len(ids) != 1:  # pragma: no cover - guaranteed by the byte alphabet
            raise RuntimeError(f"tiny tokenizer splits digit {digit!r} into {ids}")
    return tok


def save_model_files(model, out_dir: Path) -> None:
    """Write config, generation config and safetensors weights of ``model`` into ``out_dir`` on ANY rank.

    ``PreTrainedModel.save_pretrained`` writes nothing on a non-zero rank once a process group exists, so
    a model built on rank 1 (each rank builds its own copy of a missing offline model) would lose the race
    with an empty folder. Shared (tied) tensors are written once, as ``save_pretrained`` does.
    """
    from safetensors.torch import save_model

    model.config.architectures = [type(model).__name__]  # what save_pretrained records; loaders read it
    model.config.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


def build_tiny_model(
    out_dir: str | os.PathLike,
    arch: str = "llama",
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Build a tiny random ``LlamaForCausalLM`` or ``MistralForCausalLM`` plus tokenizer in ``out_dir``.

    The folder is written atomically (temp dir, then rename), so a crash never leaves a half model.
    Returns the folder path. Building takes well under a second.
    """
    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny model arch must be one of {TINY_ARCHS}, got {arch!r}")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    out_dir = Path(out_dir)
    tok = build_tiny_tokenizer(vocab_size=vocab_size, seed=seed)
    common = dict(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=4096, **common))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    save_model_files(model, tmp)
    tok.save_pretrained(tmp)
    (tmp / "deita_tiny.json").write_text(json.dumps({"arch": arch, "seed": seed, "hidden_size": hidden_size}))
    try:
        os.replace(tmp, out_dir)
    except OSError:  # another process finished first; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_tiny_model(out_dir: str | os.PathLike, arch: str = "llama", **kwargs) -> Path:
    """Return ``out_dir``, building the tiny model there first if it is not already complete."""
    out_dir = Path(out_dir)
    if (out_dir / "deita_tiny.json").exists():
        return out_dir
    return build_tiny_model(out_dir, arch, **kwargs)
