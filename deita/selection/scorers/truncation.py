"""Encode a scorer prompt within ``max_length`` tokens, cutting the middle of its free-text fields.

Policy: a prompt that fits is encoded exactly as the reference does (``tokenizer(prompt)`` with the
tokenizer's default special tokens, e.g. LLaMA's BOS), so untruncated rows are token-identical to the
reference. A longer prompt is encoded once with character offsets; tokens lying wholly inside the
instruction / response text are the only ones removed, from the middle of each field, so the template
head and tail (``##Complexity: `` / ``##Quality: ``) survive unchanged. With two fields the longer one
is cut first (water-filling: each field keeps ``min(n_i, cap)`` tokens for the largest cap that fits).
"""

from __future__ import annotations

from deita.selection.scorers.prompts import field_spans


class PromptTooLongError(ValueError):
    """The template alone (without its free text) does not fit in ``max_length`` tokens."""


def keep_counts(sizes: list[int], budget: int) -> list[int]:
    """Tokens each field keeps: ``min(size, cap)`` for the largest ``cap`` with a total ≤ ``budget``.

    Leftover budget (when caps tie) goes to the earlier fields one token each, so the total is exactly
    ``min(budget, sum(sizes))``.
    """
    if budget >= sum(sizes):
        return list(sizes)
    lo, hi = 0, max(sizes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(s, mid) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid - 1
    keep = [min(s, lo) for s in sizes]
    spare = budget - sum(keep)
    for i, s in enumerate(sizes):
        if spare > 0 and keep[i] < s:
            keep[i] += 1
            spare -= 1
    return keep


def encode_scorer_prompt(tokenizer, kind: str, instruction: str, output: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of the ``kind`` prompt for this turn and whether it was truncated (see module doc)."""
    text, spans = field_spans(kind, instruction, output)
    ids = list(tokenizer(text)["input_ids"])
    if len(ids) <= max_length:
        return ids, False
    if not getattr(tokenizer, "is_fast", False):
        raise PromptTooLongError(
            f"{kind} prompt has {len(ids)} tokens > max_length {max_length} and truncation needs a fast "
            "tokenizer (character offsets)"
        )
    enc = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    inside: list[list[int]] = [[] for _ in spans]
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue  # special tokens have an empty span
        for f, (s, e) in enumerate(spans):
            if s <= a and b <= e:
                inside[f].append(t)
    excess = len(ids) - max_length
    sizes = [len(x) for x in inside]
    if sum(sizes) < excess:
        raise PromptTooLongError(
            f"{kind} prompt: the template alone needs {len(ids) - sum(sizes)} tokens, more than "
            f"max_length {max_length}"
        )
    keep = keep_counts(sizes, sum(sizes) - excess)
    drop: set[int] = set()
    for idx, k in zip(inside, keep):
        head, tail = (k + 1) // 2, k // 2
        drop.update(idx[head : len(idx) - tail])
    return [t for i, t in enumerate(ids) if i not in drop], True
