"""Pure score math: the expected digit under a softmax restricted to the tokens "1".."6"."""

from __future__ import annotations

SCORE_DIGITS = ("1", "2", "3", "4", "5", "6")
"""The score tokens, in score order (score k is ``SCORE_DIGITS[k-1]``)."""


def expected_digit_score(digit_logits):
    """Σ_{k=1..6} k · softmax(digit_logits)_k over the last axis.

    ``digit_logits`` is a tensor ``[..., 6]`` holding the logits of "1".."6" at the position right after
    the prompt. Computed in float64 (the reference uses scipy on numpy); returns a float64 tensor ``[...]``.
    """
    import torch

    x = torch.as_tensor(digit_logits).to(torch.float64)
    if x.shape[-1] != len(SCORE_DIGITS):
        raise ValueError(f"expected the last axis to hold {len(SCORE_DIGITS)} digit logits, got shape {tuple(x.shape)}")
    weights = torch.arange(1, len(SCORE_DIGITS) + 1, dtype=torch.float64, device=x.device)
    return (torch.softmax(x, dim=-1) * weights).sum(dim=-1)


def scores_from_logits(logits, digit_ids):
    """Expected scores from full next-token ``logits`` ``[..., vocab]`` and the six ``digit_ids``."""
    import torch

    ids = torch.as_tensor(list(digit_ids), dtype=torch.long, device=logits.device)
    return expected_digit_score(logits.index_select(-1, ids))


def digit_token_ids(tokenizer) -> list[int]:
    """Token ids of "1".."6" from ``tokenizer`` (``encode(d, add_special_tokens=False)``).

    A SentencePiece tokenizer (LLaMA-1/2, Mistral) encodes a lone "1" as [word-start "▁", "1"]; the
    reference's hard-coded LLaMA ids 29896.. are the bare pieces, which is what the model emits after the
    template's trailing space (tokenised on its own as "▁"). So a two-token encoding whose last token is
    the vocabulary piece ``d`` itself and whose first token decodes to blank is accepted as that piece.
    Anything else (a digit that is several real tokens, or missing) raises.
    """
    ids: list[int] = []
    for d in SCORE_DIGITS:
        enc = list(tokenizer.encode(d, add_special_tokens=False))
        if len(enc) == 1:
            ids.append(int(enc[0]))
            continue
        piece = tokenizer.convert_tokens_to_ids(d)
        if (
            len(enc) == 2
            and piece is not None
            and piece != tokenizer.unk_token_id
            and enc[1] == piece
            and tokenizer.decode([enc[0]]).strip() == ""
        ):
            ids.append(int(piece))
            continue
        raise ValueError(
            f"score digit {d!r} is not a single token for tokenizer {type(tokenizer).__name__} "
            f"({getattr(tokenizer, 'name_or_path', '?')}): encode gives {enc}; the DEITA scorer needs "
            "one token per digit 1-6"
        )
    if len(set(ids)) != len(ids):
        raise ValueError(f"score digits 1-6 map to repeated token ids {ids}")
    return ids
