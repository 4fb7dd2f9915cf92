"""Token ids exactly as the reference Nuggets code sees them, for both modes (see the package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deita.selection.nuggets.golden import answer_span

MODES = ("faithful", "clean")
REFERENCE_ANCHOR_MAX_LENGTH = 200
PAD_TOKEN = "[PAD]"


@dataclass(frozen=True)
class AnchorTokens:
    """An anchor's token ids (no BOS, already truncated) and its scored answer span ``[start, end)``.

    Token ``body[j]`` for ``j`` in the span is scored from the logits at the position right before it.
    """

    body: tuple[int, ...]
    start: int
    end: int

    @property
    def n_scored(self) -> int:
        """How many answer tokens are scored (0 when the query fills the window)."""
        return max(0, self.end - self.start)


def check_mode(mode: str) -> str:
    """Return ``mode`` or raise naming the valid modes."""
    if mode not in MODES:
        raise ValueError(f"Nuggets mode must be one of {MODES}, got {mode!r}")
    return mode


def encode_anchor(tok, query: str, full_text: str, max_length: Optional[int]) -> AnchorTokens:
    """Anchor ids without special tokens, right-truncated to ``max_length``; span = answer tokens inside.

    As in the reference, the span starts at ``len(tok(query))`` and ends at the untruncated full length
    clipped to the window, both counted without special tokens.
    """
    full = tok(full_text, add_special_tokens=False)["input_ids"]
    q_len = len(tok(query, add_special_tokens=False)["input_ids"])
    start, end = answer_span(q_len, len(full), max_length)
    body = full if max_length is None else full[:max_length]
    return AnchorTokens(tuple(body), start, end)


def encode_demo(tok, full_text: str, mode: str) -> list[int]:
    """Demonstration ids, never truncated: ``tok(text)`` with its special tokens (faithful) or
    ``[BOS] + tok(text, add_special_tokens=False)`` (clean)."""
    if check_mode(mode) == "faithful":
        return list(tok(full_text)["input_ids"])
    return zero_shot_prefix(tok, mode) + list(tok(full_text, add_special_tokens=False)["input_ids"])


def zero_shot_prefix(tok, mode: str) -> list[int]:
    """Ids before an anchor in the zero-shot pass: none (faithful) or ``[BOS]`` when the tokenizer has one."""
    if check_mode(mode) == "faithful" or tok.bos_token_id is None:
        return []
    return [int(tok.bos_token_id)]


def add_reference_pad(model, tok) -> int:
    """The reference's ``smart_tokenizer_and_embedding_resize({"pad_token": "[PAD]"})``: add ``[PAD]``,
    resize the embeddings and set the new input/output rows to the mean of the old rows.

    The new output row adds one logit to every softmax, so faithful log-probs need it. Returns the number of
    tokens added (0 when ``[PAD]`` was already the pad token in the vocabulary).
    """
    import torch

    added = tok.add_special_tokens({"pad_token": PAD_TOKEN})
    if added == 0:
        return 0
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            w = emb.weight
            w[-added:] = w[:-added].mean(dim=0, keepdim=True)
    return added
