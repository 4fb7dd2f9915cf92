"""SFT without the per-token metrics' memory: TRL's fused LM head computing only what the loss needs.

TRL 1.16's ``SFTTrainer`` already avoids the full ``(batch, seq, vocab)`` logits: its fused LM head projects
the hidden states in tiles of ``TOKEN_CHUNK_SIZE`` tokens × ``_CHUNKED_LOGPROB_CHUNK_SIZE`` (32,768)
vocabulary columns. It asks that head for the per-token entropy and top-1 flag as well, for its
``entropy`` and ``mean_token_accuracy`` metrics; without Triton (CPU) each of them costs extra fp32
temporaries the size of a tile (about 200 MB each for 4 × 384 tokens on SmolLM2's 49K vocabulary).

:func:`sft_trainer_class` (``lean=True``) returns an ``SFTTrainer`` subclass whose fused head computes the
log-probabilities only and whose tiles span ``VOCAB_TILE`` columns. The loss is the same sum of the same
log-probabilities (the online log-sum-exp only visits the vocabulary in smaller steps: fp32 rounding,
measured in BENCHMARKS.md); the two metrics are no longer logged.
"""

from __future__ import annotations

import contextlib
import functools

VOCAB_TILE = 8192
"""Vocabulary columns per fused-head tile (TRL's default is 32,768)."""


def _log_probs_only(add_fused_lm_head):
    """``add_fused_lm_head`` asking for log-probs only; the forward fills the two metric fields with zeros
    so TRL's ``compute_loss`` runs unchanged (:class:`LeanSFT` drops the metrics it then records)."""

    @functools.wraps(add_fused_lm_head)
    def add(model, temperature=1.0, cast_lm_head_to_fp32=False, outputs=("log_probs",)):
        add_fused_lm_head(model, temperature, cast_lm_head_to_fp32, outputs=("log_probs",))
        fused = model.forward

        @functools.wraps(fused)
        def forward(*args, **kwargs):
            out = fused(*args, **kwargs)
            if kwargs.get("fused_lm_head") and out.log_probs is not None and out.entropy is None:
                zeros = out.log_probs.detach().new_zeros(out.log_probs.shape)
                out.entropy, out.is_top1 = zeros, zeros.bool()
            return out

        model.forward = forward

    return add


@contextlib.contextmanager
def _lean_head():
    """While TRL builds the trainer, its fused head is added for log-probs only. The tile width is TRL's
    module constant, read at every fused forward, so it stays ``VOCAB_TILE`` for the rest of the process
    (a later DPO stage's fused head uses it too: a memory setting, its loss is the same)."""
    import trl.trainer.sft_trainer as sft_module
    import trl.trainer.utils as utils_module

    original = sft_module.add_fused_lm_head
    sft_module.add_fused_lm_head = _log_probs_only(original)
    utils_module._CHUNKED_LOGPROB_CHUNK_SIZE = VOCAB_TILE  # read at every call of the fused forward
    try:
        yield
    finally:
        sft_module.add_fused_lm_head = original


def sft_trainer_class(lean: bool = True):
    """TRL's ``SFTTrainer`` (``lean=False``) or its lean subclass (see the module doc)."""
    from trl import SFTTrainer

    if not lean:
        return SFTTrainer

    class LeanSFTTrainer(SFTTrainer):
        """``SFTTrainer`` whose fused LM head computes only the log-probs of the loss (no entropy or
        token-accuracy metrics)."""

        def __init__(self, *args, **kwargs):
            with _lean_head():
                super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            metrics = self._metrics["train" if self.model.training else "eval"]
            for name in ("entropy", "mean_token_accuracy"):  # zeros, not measurements: not logged
                metrics.pop(name, None)
            return result

    return LeanSFTTrainer
