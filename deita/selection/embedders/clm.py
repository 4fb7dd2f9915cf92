"""Causal-LM embedders: final-layer (post-norm) hidden state at the last real token, or mean-pooled.

``clm_last`` is the reference Repr-Filter embedding (hkust-nlp/deita ``CLM_Embedder``): the rendered
conversation tokenised with the tokenizer's default special tokens (BOS), truncated on the right at
``max_length``, and the last layer's hidden state of the last non-pad token. We read the base model's
``last_hidden_state`` (identical to ``hidden_states[-1]``) instead of materialising every layer.

With ``prefix_text`` (the template's fixed head, e.g. vicuna_v1.1's system prompt and ``"USER: "``), the
head runs once and every conversation whose tokens start with its tokens runs only its own tokens from the
head's keys/values (:class:`deita.models.forward.SharedPrefix`); the others run whole and are counted.

``clm_last`` on a Llama/Mistral model runs both kinds through the packed decoder
(:class:`deita.models.packed.PackedDecoder`: real tokens only, the last layer at the last token only).
"""

from __future__ import annotations

from deita.models.batching import model_inputs, pad_batch
from deita.models.forward import SharedPrefix, final_hidden_states, prefix_batches, use_suffix_attention
from deita.models.loading import load_causal_lm, pad_id_of
from deita.models.packed import packed_decoder


class ClmEmbedder:
    """Embeds texts with a causal LM. ``pooling``: 'last' (reference) or 'mean' (over real tokens);
    ``packed``: with 'last', run Llama/Mistral models through the packed decoder (``padding_side`` then
    does not matter: no row is padded outside the attention)."""

    def __init__(self, path: str, *, pooling: str = "last", max_length: int = 2048, batch_size: int = 8,
                 dtype: str = "float32", device: str = "auto", padding_side: str = "right",
                 trust_remote_code: bool = False, show_progress: bool = True, prefix_text: str | None = None,
                 packed: bool = True):
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        self.path, self.pooling, self.padding_side = str(path), pooling, padding_side
        self.max_length, self.batch_size, self.show_progress = int(max_length), int(batch_size), show_progress
        self.tokenizer, self.model = load_causal_lm(self.path, dtype, device, trust_remote_code)
        self.device = next(self.model.parameters()).device
        self.pad_id = pad_id_of(self.tokenizer)
        self.packed = packed_decoder(self.model, self.max_length) if packed and pooling == "last" else None
        self.prefix = None
        if prefix_text:
            ids = list(self.tokenizer(prefix_text)["input_ids"])[:-1]  # the boundary token may merge
            self.prefix = SharedPrefix(self.model, ids) if ids else None
            if self.prefix is not None and padding_side == "right":
                use_suffix_attention(self.model, self.max_length)
        self.prefix_stats = {"tokens": len(self.prefix) if self.prefix is not None else 0, "rows": 0,
                             "fallback_rows": 0}
        """Shared-prefix use so far: prefix ``tokens``, ``rows`` run from it, ``fallback_rows`` run whole."""

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text: default special tokens, right truncation at ``max_length``."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [list(x) for x in enc["input_ids"]]

    def embed_ids(self, seqs: list[list[int]]):
        """Raw (unnormalised) float32 embeddings ``[N, H]`` of token sequences, in input order.

        With a shared prefix (``prefix_text``), sequences that start with its tokens run only their own
        tokens from its keys/values (right padded); the mean adds the prefix's hidden states once per row.
        """
        import numpy as np
        import torch
        from tqdm.auto import tqdm

        hidden_size = self.model.config.hidden_size
        out = np.zeros((len(seqs), hidden_size), dtype=np.float32)
        own, work = prefix_batches(self.prefix, seqs, self.batch_size * self.max_length, self.batch_size,
                                   self.prefix_stats, padded=self.packed is None)
        bar = tqdm(work, desc=f"embed ({self.pooling})", disable=not self.show_progress or len(work) < 2)
        with torch.inference_mode():
            for how, batch in bar:
                if self.packed is not None:
                    split = how == "split"
                    vec = self.packed.last_hidden([(own if split else seqs)[i] for i in batch],
                                                  self.prefix if split else None)
                    out[batch] = vec.float().cpu().numpy()
                    continue
                if how == "whole":
                    side = self.padding_side
                    ids, mask, pos, last = pad_batch([seqs[i] for i in batch], self.pad_id, side)
                    hidden = final_hidden_states(self.model, **model_inputs(side, ids, mask, pos, self.device))
                else:
                    ids, mask, _, last = pad_batch([own[i] for i in batch], self.pad_id, "right")
                    hidden = self.prefix.hidden_after(ids)
                hidden = hidden.float()
                if self.pooling == "last":
                    vec = hidden[torch.arange(len(batch), device=self.device), last.to(self.device)]
                else:
                    m = mask.to(self.device).unsqueeze(-1).to(hidden.dtype)
                    total, count = (hidden * m).sum(dim=1), m.sum(dim=1)
                    if how == "split":
                        total = total + self.prefix.hidden.float().sum(dim=0)
                        count = count + len(self.prefix)
                    vec = total / count
                out[batch] = vec.cpu().numpy()
        return out

    def embed_texts(self, texts: list[str], normalize: bool = True):
        """Float32 embeddings ``[N, H]`` of ``texts``; L2-normalised rows unless ``normalize=False``."""
        from deita.selection.filters import l2_normalize

        raw = self.embed_ids(self.tokenize(texts))
        return l2_normalize(raw) if normalize else raw
