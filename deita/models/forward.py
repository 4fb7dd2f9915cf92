"""Model passes over token sequences: the base model's final hidden states and the output head's
log-probabilities at chosen positions (never a ``[B, T, vocab]`` tensor).

Every scorer, embedder and loss in deita reads a causal LM through these functions: the DEITA scorers and
the CLM embedders (final hidden state at one position), Nuggets, IFD/Superfiltering and the held-out loss
(log p of chosen tokens).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def base_model(model):
    """The decoder inside a causal LM (``model.<base_model_prefix>``): it returns final (post-norm)
    hidden states without applying the output head."""
    base = getattr(model, model.base_model_prefix, None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__} has no base model at .{model.base_model_prefix}")
    return base


def final_hidden_states(model, input_ids, attention_mask=None, position_ids=None):
    """Final-layer (post-norm) hidden states ``[B, T, H]`` from the base model of a causal LM.

    Calls the base model rather than asking the LM for every layer's hidden states, so only the last
    layer is kept and no ``[B, T, vocab]`` logits are built.
    """
    out = base_model(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
    return out.last_hidden_state


def head_logprobs(model, hidden, targets, chunk: int = 128):
    """log p(target) from hidden states ``[n, H]`` via the output head, ``chunk`` rows at a time (fp64 out).

    log p = logit[target] - (max + log sum exp(logits - max)), computed in place on each logits chunk
    (small chunks stay in cache; measured ~1.6x faster than ``torch.logsumexp`` on a 49k vocabulary).
    """
    import torch

    head = model.get_output_embeddings()
    out = torch.empty(hidden.shape[0], dtype=torch.float64, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s : s + chunk])
        picked = logits.gather(1, targets[s : s + chunk, None])[:, 0]
        top = logits.amax(dim=-1, keepdim=True)
        lse = logits.sub_(top).exp_().sum(dim=-1).log_() + top[:, 0]
        out[s : s + chunk] = (picked - lse).double()
    return out


def token_logprobs(model, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 8,
                   pad_id: int = 0, progress: bool = False, desc: str = "forwards") -> list[np.ndarray]:
    """log p(ids[t] | ids[:t]) for every chosen position ``t`` of every ``(ids, positions)`` (each t >= 1),
    float64 arrays in input order (empty where nothing is chosen).

    Sequences are batched longest first, ``batch_size`` per forward, right padded with a padding mask (a
    real token never sees a pad); the output head runs only at the positions before chosen tokens.
    """
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    decoder = base_model(model)
    out: list[np.ndarray] = [np.zeros(0) for _ in seqs]
    todo = [i for i, (ids, pos) in enumerate(seqs) if len(pos)]
    for i in todo:
        ids, pos = seqs[i]
        if min(pos) < 1 or max(pos) >= len(ids):
            raise ValueError(f"sequence {i}: chosen positions must lie in 1..{len(ids) - 1}")
    todo.sort(key=lambda i: -len(seqs[i][0]))
    for b in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress):
        idx = todo[b : b + batch_size]
        width = max(len(seqs[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        rows, cols, tgts = [], [], []
        for r, i in enumerate(idx):
            seq, pos = seqs[i]
            ids[r, : len(seq)] = torch.tensor(list(seq))
            mask[r, : len(seq)] = 1
            rows += [r] * len(pos)
            cols += [t - 1 for t in pos]
            tgts += [seq[t] for t in pos]
        with torch.no_grad():
            h = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            lp = head_logprobs(model, h[torch.tensor(rows), torch.tensor(cols)], torch.tensor(tgts, device=device))
        lp = lp.cpu().numpy()
        at = 0
        for i in idx:
            n = len(seqs[i][1])
            out[i] = lp[at : at + n]
            at += n
    return out
