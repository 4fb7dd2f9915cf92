"""The DEITA complexity / quality scorers: one forward pass per prompt, batched by length.

Score = Σ_{k=1..6} k · softmax(logits of "1".."6") at the position right after the prompt, the value
the reference computes from ``generate(max_new_tokens=2, output_scores=True).scores[0][0]`` (the first
generated position's logits under greedy decoding, which applies no logits processor by default).

The template text before ``{instruction}`` is the same for every prompt: its keys/values are computed
once per scorer and every prompt that starts with its tokens runs only its own tokens from them
(:func:`template_prefix`; the others run whole). Llama/Mistral scorers run both kinds through the packed
decoder (:mod:`deita.models.packed`: real tokens only, fused projections, the last layer at the last token).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from deita.models.batching import model_inputs, pad_batch, tokens_per_batch
from deita.models.forward import final_hidden_states, prefix_batches, use_suffix_attention
from deita.models.loading import load_causal_lm, pad_id_of
from deita.models.packed import packed_decoder
from deita.selection.scorers.expected_digit import digit_token_ids, expected_digit_score
from deita.selection.scorers.prompts import TEMPLATES
from deita.selection.scorers.truncation import PromptTooLongError, encode_scorer_prompt
from deita.selection.scorers.turns import ConversationError, conversation_turns

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "nan")


class ScoringError(RuntimeError):
    """A turn that could not be scored under ``on_error='raise'``; names the row id and turn."""


@dataclass
class ScoreBatchResult:
    """Scores of a list of turns, in input order: NaN where a turn failed under ``on_error='nan'``."""

    scores: list[float]
    truncated: list[bool]
    errors: list[str] = field(default_factory=list)


def _check_generation_config(model, path: str) -> None:
    """Say so when the reference's ``generate`` would have altered the first-step logits."""
    gc = getattr(model, "generation_config", None)
    if gc is None:
        return
    altered = []
    if getattr(gc, "do_sample", False):
        altered.append("do_sample=True (temperature/top-k/top-p warp the reference's scores)")
    if getattr(gc, "repetition_penalty", None) not in (None, 1.0):
        altered.append(f"repetition_penalty={gc.repetition_penalty}")
    if altered:
        log.warning("scorer %s generation_config has %s; deita scores the raw next-token logits, which the "
                    "reference's generate() would have processed", path, ", ".join(altered))


def _digit_rows(model, digit_ids: list[int]):
    """The output head's weight (and bias) rows of the six digits when it is a plain linear layer, else None
    (an adapter or quantised head runs its own forward)."""
    import torch

    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None
    ids = torch.tensor(digit_ids, device=head.weight.device)
    return head.weight[ids], head.bias[ids] if head.bias is not None else None


def template_prefix(model, tokenizer, kind: str):
    """The template head (text before ``{instruction}``) as a :class:`deita.models.forward.SharedPrefix`.

    Its tokens are the head's encoding (with the tokenizer's default special tokens, as the whole prompt)
    without the last token: that one ends at the boundary, where the head's trailing space usually merges
    with the instruction's first word in the whole prompt. A prompt is run from the prefix only when its
    own tokens start with exactly these ids (:meth:`SharedPrefix.split`), so the model sees the same
    tokens as for the whole prompt; other prompts run whole and are counted. None when no head token is
    left.
    """
    from deita.models.forward import SharedPrefix

    head = TEMPLATES[kind].split("{instruction}", 1)[0]
    ids = list(tokenizer(head)["input_ids"])[:-1]
    return SharedPrefix(model, ids) if ids else None


class DeitaScorer:
    """A loaded complexity or quality scorer.

    ``kind``: 'complexity' or 'quality'; ``max_length``: prompt tokens kept (middle of the text cut, see
    :mod:`.truncation`); ``max_tokens_per_batch``: padded tokens per forward pass; ``prefix_cache``: run
    the template text before ``{instruction}`` once and every prompt from its keys/values
    (:func:`template_prefix`); ``packed``: run Llama/Mistral models through
    :class:`deita.models.packed.PackedDecoder` (other models, or False: the Hugging Face forward), where
    ``max_tokens_per_batch`` counts real tokens.
    """

    def __init__(self, kind: str, path: str, *, dtype: str = "float32", device: str = "auto",
                 max_length: int = 2048, max_tokens_per_batch: int = 16384, trust_remote_code: bool = False,
                 show_progress: bool = True, prefix_cache: bool = True, packed: bool = True):
        if kind not in ("complexity", "quality"):
            raise ValueError(f"scorer kind must be 'complexity' or 'quality', got {kind!r}")
        self.kind, self.path = kind, str(path)
        self.max_length, self.max_tokens_per_batch = int(max_length), int(max_tokens_per_batch)
        self.show_progress = show_progress
        self.tokenizer, self.model = load_causal_lm(self.path, dtype, device, trust_remote_code)
        self.device = next(self.model.parameters()).device
        self.digit_ids = digit_token_ids(self.tokenizer)
        self.pad_id = pad_id_of(self.tokenizer)
        _check_generation_config(self.model, self.path)
        self.packed = packed_decoder(self.model, self.max_length) if packed else None
        self._digit_head = _digit_rows(self.model, self.digit_ids)
        self.prefix = template_prefix(self.model, self.tokenizer, kind) if prefix_cache else None
        if self.prefix is not None and self.packed is None:
            use_suffix_attention(self.model, self.max_length)  # no [B, 1, L, P + L] mask per batch
        self.prefix_stats = {"tokens": len(self.prefix) if self.prefix is not None else 0, "rows": 0, "fallback_rows": 0}
        """Shared-prefix use so far: prefix ``tokens``, ``rows`` run from it, ``fallback_rows`` run whole
        (their tokenisation differs from the prefix's at the template boundary)."""

    def encode(self, instruction: str, output: str = "") -> tuple[list[int], bool]:
        """Prompt token ids for one turn, and whether the text was truncated to fit ``max_length``."""
        return encode_scorer_prompt(self.tokenizer, self.kind, instruction, output, self.max_length)

    def score_ids(self, seqs: list[list[int]]) -> list[float]:
        """Expected digit score of each token sequence (batched, right padded, input order kept).

        Each distinct sequence is scored once and its score shared by every copy, so duplicate prompts tie
        exactly, as under the reference's one-at-a-time scoring (scored in batches of different shapes,
        copies would differ by float rounding, and ``tie_break: reference`` could not order them as the
        reference does).
        """
        distinct: dict[tuple[int, ...], int] = {}
        slot = [distinct.setdefault(tuple(s), len(distinct)) for s in seqs]
        scores = self._score_distinct([list(s) for s in distinct])
        return [scores[k] for k in slot]

    def _score_distinct(self, seqs: list[list[int]]) -> list[float]:
        """:meth:`score_ids` without the sharing of duplicates: rows that start with the template head's
        tokens run from its cached keys/values (:attr:`prefix`), the others whole."""
        import torch
        from tqdm.auto import tqdm

        out = [math.nan] * len(seqs)
        budget = tokens_per_batch(self.max_tokens_per_batch, self.device)
        own, work = prefix_batches(self.prefix, seqs, budget, stats=self.prefix_stats, padded=self.packed is None)
        bar = tqdm(work, desc=f"{self.kind} scores", disable=not self.show_progress or len(work) < 2)
        with torch.inference_mode():
            for how, batch in bar:
                split = how == "split"
                if self.packed is not None:
                    rows = self.packed.last_hidden([(own if split else seqs)[i] for i in batch],
                                                   self.prefix if split else None)
                else:
                    ids, mask, pos, last = pad_batch([(own if split else seqs)[i] for i in batch], self.pad_id,
                                                     "right")
                    hidden = (self.prefix.hidden_after(ids) if split else
                              final_hidden_states(self.model, **model_inputs("right", ids, mask, pos, self.device)))
                    rows = hidden[torch.arange(len(batch), device=self.device), last.to(self.device)]
                for i, score in zip(batch, self._scores_at(rows)):
                    out[i] = score
        return out

    def _scores_at(self, rows) -> list[float]:
        """Expected digit scores from final hidden states ``[B, H]`` at the position after each prompt
        (NaN where a digit logit is not finite)."""
        import torch
        import torch.nn.functional as F

        if self._digit_head is not None:  # only the six digit rows of the head: each logit is its own dot product
            digit_logits = F.linear(rows, *self._digit_head).float()
        else:  # an adapter or quantised head: its own forward over the vocabulary
            digit_logits = self.model.get_output_embeddings()(rows).float()[:, self.digit_ids]
        softcap = getattr(self.model.config, "final_logit_softcapping", None)
        if softcap:
            digit_logits = torch.tanh(digit_logits / softcap) * softcap
        scores = expected_digit_score(digit_logits).cpu().tolist()
        bad = (~torch.isfinite(digit_logits).all(dim=1)).tolist()
        return [math.nan if b else x for x, b in zip(scores, bad)]

    def score_turns(self, turns: list[tuple[str, str]], labels: list[str] | None = None,
                    on_error: str = "raise") -> ScoreBatchResult:
        """Score ``(instruction, response)`` turns; ``labels`` name them in errors ("row X, turn t")."""
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        labels = labels or [f"turn {i}" for i in range(len(turns))]
        seqs, truncated, errors, ok = [], [], [""] * len(turns), []
        for i, (instruction, response) in enumerate(turns):
            try:
                ids, cut = self.encode(instruction, response)
            except PromptTooLongError as exc:
                if on_error == "raise":
                    raise ScoringError(f"{labels[i]}: {exc}") from exc
                errors[i] = str(exc)
                truncated.append(False)
                continue
            seqs.append(ids)
            ok.append(i)
            truncated.append(cut)
        scores = [math.nan] * len(turns)
        for i, s in zip(ok, self.score_ids(seqs)):
            if not math.isfinite(s):
                if on_error == "raise":
                    raise ScoringError(f"{labels[i]}: {self.kind} scorer produced non-finite digit logits")
                errors[i] = "non-finite digit logits"
            scores[i] = s
        return ScoreBatchResult(scores=scores, truncated=truncated, errors=errors)


def score_rows(rows: list[dict], scorer: DeitaScorer, on_error: str = "raise") -> dict[str, list]:
    """Per-row columns for one scorer: ``<kind>_turns`` (score per turn), ``<kind>_truncated`` (turns
    cut to fit), ``<kind>_error`` ('' when fine). A row that cannot be split into turns raises, or under
    ``on_error='nan'`` gets a single NaN turn and its error text."""
    kind = scorer.kind
    flat, labels, owner = [], [], []
    row_errors = [""] * len(rows)
    for r, row in enumerate(rows):
        rid = str(row.get("id", r))
        try:
            turns = conversation_turns(row.get("messages", []), rid)
        except ConversationError as exc:
            if on_error == "raise":
                raise
            row_errors[r] = str(exc)
            continue
        for t, turn in enumerate(turns):
            flat.append(turn)
            labels.append(f"row {rid!r} turn {t}")
            owner.append(r)
    res = scorer.score_turns(flat, labels, on_error)
    per_row: list[list[float]] = [[] for _ in rows]
    cut = [0] * len(rows)
    for j, r in enumerate(owner):
        per_row[r].append(float(res.scores[j]))
        cut[r] += int(res.truncated[j])
        if res.errors[j] and not row_errors[r]:
            row_errors[r] = f"{labels[j]}: {res.errors[j]}"
    for r, err in enumerate(row_errors):
        if err and not per_row[r]:
            per_row[r] = [math.nan]
    return {f"{kind}_turns": per_row, f"{kind}_truncated": cut, f"{kind}_error": row_errors}


def evol_score(complexity_turns: list[float], quality_turns: list[float]) -> float:
    """DEITA's evol score of one conversation: Σ_t c_t · q_t (NaN if any turn is NaN)."""
    if len(complexity_turns) != len(quality_turns):
        raise ValueError(
            f"per-turn complexity ({len(complexity_turns)}) and quality ({len(quality_turns)}) scores differ in length"
        )
    return float(sum(float(c) * float(q) for c, q in zip(complexity_turns, quality_turns)))
