"""Answer prompt sets with a causal LM: multi-turn, chat-templated, batched, sharded across processes.

Multi-turn prompts are answered the way FastChat's ``gen_model_answer.py`` does: turn ``k`` is asked with
the model's own answers to turns ``1..k-1`` in the conversation. Prompts are rendered with the tokenizer's
chat template (``add_generation_prompt=True``) and generated left-padded in batches.

World-size invariance: prompts are sorted by first-turn length and cut into fixed groups of
``batch_size`` *before* sharding; each group (all its turns) is answered by one process and the groups
are gathered back in order (:func:`deita.distributed.map_sharded`). A group's batches are therefore the
same for any number of processes, and so are the answers. Sampling (``temperature > 0``) seeds each
group with ``seed + group index`` for the same reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deita.distributed import DistInfo, map_sharded
from deita.models.batching import fixed_groups

GEN_BATCH_SIZE = 8
"""Prompts generated together (left-padded) in one ``model.generate`` call."""


def load_policy(model_dir: str | Path, model_cfg: Any = None):
    """The model (eval mode, on this process's device) and its tokenizer (left padding, with a pad token).

    ``model_cfg`` is the ``model`` config node (dtype, trust_remote_code, attn_implementation) or None.
    """
    from deita.models.loading import ensure_pad_token, load_causal_lm

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"expected a saved model (config.json) in {model_dir}, found none")
    dtype = getattr(model_cfg, "dtype", "float32") if model_cfg is not None else "float32"
    trust = bool(getattr(model_cfg, "trust_remote_code", False)) if model_cfg is not None else False
    attn = getattr(model_cfg, "attn_implementation", None) if model_cfg is not None else None
    tok, model = load_causal_lm(str(model_dir), dtype, "auto", trust, allow_auto_dtype=True,
                                **({"attn_implementation": attn} if attn else {}))
    if not tok.chat_template:
        raise ValueError(f"the tokenizer in {model_dir} has no chat template; the eval stage renders prompts with it")
    ensure_pad_token(tok)
    tok.padding_side = "left"
    return model, tok


def eos_token_ids(model, tok) -> list[int]:
    """Token ids that end an answer: the model's generation-config eos id(s) plus the tokenizer's eos."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def render_prompt(tok, messages: list[dict]) -> str:
    """The chat-templated text that asks the model for the next assistant turn."""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def cut_at_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """The generated ids before the first end token."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i]
    return ids


def generate_batch(model, tok, texts: list[str], *, max_new_tokens: int, temperature: float) -> list[str]:
    """Answers to already-rendered prompt ``texts``, generated together with left padding.

    Greedy when ``temperature`` is 0, else sampling at that temperature. The prompt text already holds
    the template's special tokens, so it is tokenized with ``add_special_tokens=False`` (as
    ``apply_chat_template(tokenize=True)`` does). Answers are cut at the first end token, decoded without
    special tokens and stripped (as FastChat does).
    """
    import torch
    from transformers import GenerationConfig

    if temperature < 0:
        raise ValueError(f"eval.temperature must be >= 0 (0 = greedy), found {temperature}")
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    eos = eos_token_ids(model, tok)
    sample = temperature > 0
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id,
                               eos_token_id=eos, **({"temperature": temperature} if sample else {}))
    with torch.inference_mode():
        out = model.generate(**enc, generation_config=gen_cfg)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    return [tok.decode(cut_at_eos(ids, eos), skip_special_tokens=True).strip() for ids in new]


def answer_group(model, tok, rows: list[dict], *, max_new_tokens: int, temperature: float) -> list[list[str]]:
    """Answers to every turn of each prompt row; turn ``k`` sees the model's own earlier answers.

    Turn by turn, every row that still has a turn is asked in one batch.
    """
    histories: list[list[dict]] = [[] for _ in rows]
    answers: list[list[str]] = [[] for _ in rows]
    for turn in range(max(len(r["turns"]) for r in rows)):
        active = [k for k, r in enumerate(rows) if len(r["turns"]) > turn]
        for k in active:
            histories[k].append({"role": "user", "content": rows[k]["turns"][turn]})
        texts = [render_prompt(tok, histories[k]) for k in active]
        outs = generate_batch(model, tok, texts, max_new_tokens=max_new_tokens, temperature=temperature)
        for k, text in zip(active, outs):
            histories[k].append({"role": "assistant", "content": text})
            answers[k].append(text)
    return answers


def answer_prompts(model, tok, rows: list[dict], *, max_new_tokens: int, temperature: float,
                   dist: DistInfo | None = None, batch_size: int = GEN_BATCH_SIZE, seed: int = 0,
                   desc: str = "eval: answering") -> list[list[str]]:
    """Answers (one string per turn) to every prompt row, in row order, for any number of processes.

    Groups of prompts are fixed before sharding (see the module docstring); a tqdm bar counts this
    process's groups on rank 0.
    """
    import torch
    from tqdm.auto import tqdm

    dist = dist or DistInfo()
    if not rows:
        return []
    lengths = [len(tok(render_prompt(tok, [{"role": "user", "content": r["turns"][0]}]),
                       add_special_tokens=False)["input_ids"]) for r in rows]
    groups = fixed_groups(lengths, batch_size)

    def work(items: list[tuple[int, list[int]]]) -> list[list[list[str]]]:
        done = []
        for gi, idxs in tqdm(items, desc=desc, unit="batch", disable=not dist.is_main):
            if temperature > 0:
                torch.manual_seed(seed + gi)
            done.append(answer_group(model, tok, [rows[i] for i in idxs],
                                     max_new_tokens=max_new_tokens, temperature=temperature))
        return done

    per_group = map_sharded(list(enumerate(groups)), work, dist)
    answers: list[list[str] | None] = [None] * len(rows)
    for idxs, group_answers in zip(groups, per_group):
        for i, a in zip(idxs, group_answers):
            answers[i] = a
    return answers  # type: ignore[return-value]
