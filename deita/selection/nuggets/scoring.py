"""Model passes of the golden score: log-prob sums of anchor answers, zero-shot and one-shot (fast path).

What makes it fast without changing results (all mask-exact; only fp rounding differs):

* zero-shot sums are computed once, in length-sorted batches padded to the batch's longest anchor;
* each candidate's demonstration is prefilled once; its KV cache is repeated over the anchor rows of a
  batch. A fresh :class:`~transformers.DynamicCache` is built for every forward, because a forward appends
  the anchor keys to the cache in place;
* several candidates share one forward: demonstrations are right-padded (masked) and every anchor gets
  explicit ``position_ids`` that continue after its own demonstration, as in the reference;
* anchors are padded to the batch's longest anchor, not to 200;
* the output head runs only at scored positions, in chunks, and log p = logit - logsumexp (no full
  ``[B, L, V]`` log-softmax).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from deita.selection.nuggets.tokens import AnchorTokens


def _check_head(model) -> None:
    cfg = model.config
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} sets config.{attr}={getattr(cfg, attr)!r}; the fast Nuggets path applies"
                " the output head directly and supports plain heads only (Llama, Mistral, Qwen, GPT-2, ...)"
            )


def _decoder(model):
    return getattr(model, model.base_model_prefix)


def head_logprobs(model, hidden, targets, chunk: int = 1024):
    """log p(target) from hidden states ``[n, H]`` via the output head, ``chunk`` rows at a time (fp64 out)."""
    import torch

    head = model.get_output_embeddings()
    out = torch.empty(hidden.shape[0], dtype=torch.float64, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s : s + chunk])
        t = targets[s : s + chunk]
        out[s : s + chunk] = (logits.gather(1, t[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)).double()
    return out


def _scored_positions(anchors: Sequence[AnchorTokens], offsets: Sequence[int]):
    """Row, column (position whose logits predict) and target of every scored token; ``offsets[r]`` is
    where row ``r``'s anchor body starts in the input."""
    rows, cols, tgts = [], [], []
    for r, (a, off) in enumerate(zip(anchors, offsets)):
        for j in range(a.start, a.end):
            rows.append(r)
            cols.append(off + j - 1)
            tgts.append(a.body[j])
    return rows, cols, tgts


def _sums(model, hidden, anchors, offsets, device):
    import torch

    rows, cols, tgts = _scored_positions(anchors, offsets)
    sums = torch.zeros(len(anchors), dtype=torch.float64, device=device)
    if rows:
        r = torch.tensor(rows, device=device)
        with torch.no_grad():
            lp = head_logprobs(model, hidden[r, torch.tensor(cols, device=device)], torch.tensor(tgts, device=device))
        sums.index_add_(0, r, lp)
    return sums.cpu().numpy()


def zero_shot_sums(
    model, anchors: Sequence[AnchorTokens], prefix: Sequence[int], *, batch_size: int = 16, pad_id: int = 0
) -> np.ndarray:
    """Sum of answer log-probs of each anchor alone (``prefix`` + anchor), [M] float64."""
    import torch

    device = next(model.parameters()).device
    out = np.zeros(len(anchors))
    order = sorted(range(len(anchors)), key=lambda i: len(anchors[i].body))
    p = list(prefix)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        seqs = [p + list(anchors[i].body) for i in idx]
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, x in enumerate(seqs):
            ids[r, : len(x)] = torch.tensor(x)
            mask[r, : len(x)] = 1
        with torch.no_grad():
            hidden = _decoder(model)(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        out[idx] = _sums(model, hidden, [anchors[i] for i in idx], [len(p)] * len(idx), device)
    return out


def one_shot_sums(
    model,
    demos: Sequence[Sequence[int]],
    anchors: Sequence[AnchorTokens],
    *,
    anchor_batch_size: int = 32,
    candidate_batch_size: int = 4,
    pad_id: int = 0,
    progress: bool = False,
) -> np.ndarray:
    """Sum of answer log-probs of every anchor after every demonstration, [N, M] float64.

    Row ``(c, a)`` sees exactly ``demos[c] + anchors[a].body`` with positions ``0..len-1``, as the
    reference's KV-cache concatenation does.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    _check_head(model)
    device = next(model.parameters()).device
    out = np.zeros((len(demos), len(anchors)))
    if not len(demos) or not len(anchors):
        return out
    if any(len(d) == 0 for d in demos):
        raise ValueError("every demonstration needs at least one token")
    a_order = sorted(range(len(anchors)), key=lambda i: len(anchors[i].body))
    a_chunks = [a_order[s : s + anchor_batch_size] for s in range(0, len(a_order), anchor_batch_size)]
    c_order = sorted(range(len(demos)), key=lambda i: len(demos[i]))
    c_groups = [c_order[s : s + candidate_batch_size] for s in range(0, len(c_order), candidate_batch_size)]
    decoder = _decoder(model)
    bar = tqdm(total=len(demos), desc="nuggets one-shot", unit="cand", disable=not progress)
    for group in c_groups:
        lens = [len(demos[c]) for c in group]
        d_width = max(lens)
        d_ids = torch.full((len(group), d_width), pad_id, dtype=torch.long)
        d_mask = torch.zeros((len(group), d_width), dtype=torch.long)
        for r, c in enumerate(group):
            d_ids[r, : lens[r]] = torch.tensor(list(demos[c]))
            d_mask[r, : lens[r]] = 1
        d_ids, d_mask = d_ids.to(device), d_mask.to(device)
        with torch.no_grad():
            pre = decoder(input_ids=d_ids, attention_mask=d_mask, use_cache=True).past_key_values
        kv = [(layer.keys, layer.values) for layer in pre.layers]
        for chunk in a_chunks:
            n_a = len(chunk)
            a_width = max(len(anchors[a].body) for a in chunk)
            a_ids = torch.full((n_a, a_width), pad_id, dtype=torch.long)
            a_mask = torch.zeros((n_a, a_width), dtype=torch.long)
            for r, a in enumerate(chunk):
                body = anchors[a].body
                a_ids[r, : len(body)] = torch.tensor(body)
                a_mask[r, : len(body)] = 1
            g = len(group)
            ids = a_ids.repeat(g, 1).to(device)
            mask = torch.cat([d_mask.repeat_interleave(n_a, 0), a_mask.repeat(g, 1).to(device)], dim=1)
            pos = torch.tensor(lens, device=device).repeat_interleave(n_a)[:, None] + torch.arange(a_width, device=device)
            cache = DynamicCache(
                ddp_cache_data=[(k.repeat_interleave(n_a, 0), v.repeat_interleave(n_a, 0)) for k, v in kv],
                config=model.config,
            )
            with torch.no_grad():
                hidden = decoder(
                    input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True
                ).last_hidden_state
            rows_anchors = [anchors[a] for _ in group for a in chunk]
            sums = _sums(model, hidden, rows_anchors, [0] * len(rows_anchors), device).reshape(g, n_a)
            for r, c in enumerate(group):
                out[c, chunk] = sums[r]
            del cache, hidden
        bar.update(len(group))
    bar.close()
    return out


def pad_id_of(tok, fallback: Optional[int] = 0) -> int:
    """A token id to fill padded (masked) positions with."""
    for cand in (tok.pad_token_id, tok.eos_token_id, fallback):
        if cand is not None:
            return int(cand)
    return 0
