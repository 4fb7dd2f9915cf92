"""Model passes of the golden score: log-prob sums of anchor answers, zero-shot and one-shot (fast path).

Every row sees exactly the tokens (and positions) of the reference; what is skipped is never scored
(all mask-exact, only fp rounding differs; see :mod:`deita.selection.nuggets.plan` for the token plan):

* anchors stop at their last needed input (``end - 2``); empty-span anchors are not run (they score 0);
* the tokens all anchors start with are computed once per demonstration, inside its prefill;
* anchors are sorted by length and batched by a small DP, each batch padded only to its own longest row;
  pads go at the END of a row, where the causal mask already hides them, so no padding mask is built
  (building and converting a ``[rows, 1, L, D+L]`` mask took ~25% of the tiny model's time);
* each demonstration is prefilled once; its keys/values seed a fresh cache for every anchor batch (a
  forward appends to the cache in place, so a cache object is never reused). With one candidate per
  forward (fastest on tiny:llama, measured) the demonstration K/V are ``expand``-ed views; several
  candidates per forward are right-padded (masked) with explicit ``position_ids`` that continue after
  each row's own demonstration;
* the output head runs only at scored positions, in chunks (no ``[B, L, V]`` tensor).

Sums (``accumulate``): clean mode takes log p = logit - logsumexp in float32 chunks and sums in float64 (the
more exact sum). Faithful mode repeats the reference's arithmetic after the forward pass: float32
full-vocabulary ``log_softmax``, gather, one float32 ``torch.sum`` per anchor in the reference's order
(:func:`reference_row_sums`; bit-identical to the reference given the same hidden states, tested). The
forward pass cannot match bit for bit (the reference pads every anchor to 200 in batches of 8, we batch by
length and share the prefix), so a residual remains. Against the reference loop
(:func:`deita.selection.nuggets.oracle.reference_loop_sums`, float32 sums) on Alpaca rows: SmolLM2-135M fp32,
128 pairs: max |margin difference| 1.8e-4 nats (float64 sums: 4.2e-4; max |sum difference| 1.5e-4 vs
1.5e-3); tiny:llama, 5,000 pairs: 2.4e-4 (float64: 3.0e-4). No win/loss outcome flipped in either (the
smallest reference margins were 1.2e-3 and 1.2e-4 nats): a pair closer than ~2e-4 nats can still flip. The
gap is mostly the reference's own float32 rounding (tiny: 1.9e-5 against the reference loop summed in
float64); the original ran on a GPU, whose float32 reductions round differently again. Faithful sums cost
~5% more in the output-head step (≈1% of a pass). Figures and commands: BENCHMARKS.md, "Nuggets near-ties".
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from deita.models.forward import base_model, head_logprobs, seeded_cache
from deita.selection.nuggets.plan import AnchorPlan, length_batches, plan_anchors
from deita.selection.nuggets.tokens import AnchorTokens

#: Per-forward overhead, in padded tokens, that the anchor batching DP trades against padding.
FORWARD_OVERHEAD_TOKENS = 64


def _check_head(model) -> None:
    cfg = model.config
    for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(model).__name__} sets config.{attr}={getattr(cfg, attr)!r}; the fast Nuggets path applies"
                " the output head directly and supports plain heads only (Llama, Mistral, Qwen, GPT-2, ...)"
            )


#: How the answer log-probs of one anchor row are summed (``accumulate=`` of the sum functions below).
ACCUMULATE = ("float64", "float32")


def reference_row_sums(model, hidden, targets, counts: list[int], chunk: int = 128):
    """The reference's per-row answer sums, float32 throughout: each scored position's full-vocabulary
    ``log_softmax`` (per chunk of ``chunk`` rows: the kernel works row by row, so the values are bit-identical
    to one ``log_softmax`` over the reference's ``[B, 200, V]`` tensor), gathered, then one ``torch.sum`` per
    row over its ``counts[i]`` consecutive tokens (the reference's ``torch.sum(extracted)``, same order).
    Returns float64 holding the float32 values.
    """
    import torch

    head = model.get_output_embeddings()
    lp = torch.empty(hidden.shape[0], dtype=hidden.dtype, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        logp = torch.log_softmax(head(hidden[s : s + chunk]), dim=-1)
        lp[s : s + chunk] = logp.gather(1, targets[s : s + chunk, None])[:, 0]
    return torch.stack([seg.sum() for seg in lp.split(counts)]).double()


class _Batch:
    """Padded input ids of one anchor batch plus where its scored tokens are (built once, reused)."""

    def __init__(self, plan: AnchorPlan, members: list[int], pad_id: int, device):
        import torch

        self.members = members
        self.n = len(members)
        self.width = max(len(plan.own[i]) for i in members)
        ids = torch.full((self.n, self.width), pad_id, dtype=torch.long)
        rows, cols, tgts = [], [], []
        for r, i in enumerate(members):
            own, t = plan.own[i], plan.targets[i]
            ids[r, : len(own)] = torch.tensor(own, dtype=torch.long)
            rows += [r] * len(t)
            cols += range(plan.first[i], plan.first[i] + len(t))
            tgts += t
        self.counts = [len(plan.targets[i]) for i in members]
        self.ids = ids.to(device)
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.cols = torch.tensor(cols, dtype=torch.long, device=device)
        self.tgts = torch.tensor(tgts, dtype=torch.long, device=device)

    def scored(self, g: int):
        """Row, column and target indices of the scored tokens when ``g`` candidates share the forward."""
        import torch

        if g == 1:
            return self.rows, self.cols, self.tgts
        off = torch.arange(g, device=self.rows.device)[:, None] * self.n
        return (off + self.rows).reshape(-1), self.cols.repeat(g), self.tgts.repeat(g)


def _group_sums(model, seqs: list[list[int]], batches: list[_Batch], n_active: int, pad_id: int, device,
                accumulate: str, after=None):
    """[g, n_active] answer sums of every anchor after each of the ``g`` prefixes in ``seqs`` (one group).

    ``after`` (early decision): called with the sums so far (NaN: not run) after each batch; when it returns
    True the remaining batches are skipped."""
    import torch

    decoder = base_model(model)
    g = len(seqs)
    lens = [len(s) for s in seqs]
    out = torch.full((g, n_active), np.nan if after is not None else 0.0, dtype=torch.float64, device=device)
    kv, d_mask = None, None
    if max(lens) > 0:
        width = max(lens)
        d_ids = torch.full((g, width), pad_id, dtype=torch.long)
        d_mask = torch.zeros((g, width), dtype=torch.long)
        for r, s in enumerate(seqs):
            d_ids[r, : lens[r]] = torch.tensor(s, dtype=torch.long)
            d_mask[r, : lens[r]] = 1
        d_ids, d_mask = d_ids.to(device), d_mask.to(device)
        ragged = min(lens) != width
        pre = decoder(input_ids=d_ids, attention_mask=d_mask if ragged else None, use_cache=True).past_key_values
        kv = [(layer.keys, layer.values) for layer in pre.layers]
        del pre
        if not ragged:
            d_mask = None
    elif g != 1:
        raise ValueError("empty prefixes are only supported one at a time")
    for b in batches:
        rows = g * b.n
        kwargs = {}
        ids = b.ids if g == 1 else b.ids.repeat(g, 1)
        if kv is not None:
            kwargs["past_key_values"] = seeded_cache(
                model, kv if g == 1 else [(k.repeat_interleave(b.n, 0), v.repeat_interleave(b.n, 0)) for k, v in kv],
                rows,
            )
        if d_mask is not None:  # ragged demonstrations: hide their pads, positions continue per row
            ones = torch.ones((rows, b.width), dtype=torch.long, device=device)
            kwargs["attention_mask"] = torch.cat([d_mask.repeat_interleave(b.n, 0), ones], dim=1)
            pos = torch.tensor(lens, device=device).repeat_interleave(b.n)[:, None]
            kwargs["position_ids"] = pos + torch.arange(b.width, device=device)
        # Anchor pads sit at the END of their row: the causal mask already hides them from every real
        # token, so no padding mask is needed (pad positions compute garbage that is never read).
        hidden = decoder(input_ids=ids, use_cache=kv is not None, **kwargs).last_hidden_state
        r, c, t = b.scored(g)
        if accumulate == "float32":
            sums = reference_row_sums(model, hidden[r, c], t, b.counts * g)
        else:
            sums = torch.zeros(rows, dtype=torch.float64, device=device)
            sums.index_add_(0, r, head_logprobs(model, hidden[r, c], t))
        out[:, b.members] = sums.reshape(g, b.n)
        del hidden, kwargs
        if after is not None and after(out):
            break
    return out


def _run(model, prefixes, anchors, *, anchor_batch_size, candidate_batch_size, pad_id, progress, desc, accumulate,
         rule=None, first_index=0, seed=0):
    import torch
    from tqdm.auto import tqdm

    from deita.selection.nuggets.early import batch_order

    if accumulate not in ACCUMULATE:
        raise ValueError(f"accumulate must be one of {ACCUMULATE}, got {accumulate!r}")
    _check_head(model)
    device = next(model.parameters()).device
    out = np.zeros((len(prefixes), len(anchors)))
    plan = plan_anchors(anchors)
    if rule is not None:
        out[:, list(plan.active)] = np.nan  # not run (yet); anchors without a scored token are 0: a loss
    if not len(prefixes) or not plan.active:
        return out
    lengths = [len(x) for x in plan.own]
    batches = [_Batch(plan, m, pad_id, device)
               for m in length_batches(lengths, anchor_batch_size, FORWARD_OVERHEAD_TOKENS)]
    if rule is not None:  # the same batches as the full pass (so the same sums), visited in a seeded order
        batches = [batches[i] for i in batch_order(len(batches), seed)]
    order = sorted(range(len(prefixes)), key=lambda i: (len(prefixes[i]), i))
    groups = [order[s : s + candidate_batch_size] for s in range(0, len(order), candidate_batch_size)]
    cols = list(plan.active)
    with torch.inference_mode(), tqdm(total=len(prefixes), desc=desc, unit="cand", disable=not progress) as bar:
        for group in groups:
            after = None
            if rule is not None:
                if all(rule.rejected(first_index + c, out[c]) for c in group):
                    bar.update(len(group))
                    continue  # rejected before any anchor ran (e.g. a threshold no score can pass)
                after = _decider(rule, group, cols, out, first_index)
            seqs = [list(prefixes[c]) + list(plan.prefix) for c in group]
            sums = _group_sums(model, seqs, batches, len(cols), pad_id, device, accumulate, after).cpu().numpy()
            for r, c in enumerate(group):
                out[c, cols] = sums[r]
                if rule is not None and not np.isnan(out[c]).any():
                    rule.finished(first_index + c, out[c])
            bar.update(len(group))
    return out


def _decider(rule, group: list[int], cols: list[int], out: np.ndarray, first_index: int):
    """``after`` for :func:`_group_sums`: copy the group's sums so far into ``out``; stop once the rule has
    rejected every candidate of the group."""

    def after(sums) -> bool:
        partial = sums.cpu().numpy()
        for r, c in enumerate(group):
            out[c, cols] = partial[r]
        return all(rule.rejected(first_index + c, out[c]) for c in group)

    return after


def zero_shot_sums(
    model, anchors: Sequence[AnchorTokens], prefix: Sequence[int], *, batch_size: int = 16, pad_id: int = 0,
    accumulate: str = "float64",
) -> np.ndarray:
    """Sum of answer log-probs of each anchor alone (``prefix`` + anchor), [M] float64 (``accumulate``: see
    :func:`one_shot_sums`)."""
    return _run(model, [list(prefix)], anchors, anchor_batch_size=batch_size, candidate_batch_size=1,
                pad_id=pad_id, progress=False, desc="nuggets zero-shot", accumulate=accumulate)[0]


def one_shot_sums(
    model,
    demos: Sequence[Sequence[int]],
    anchors: Sequence[AnchorTokens],
    *,
    anchor_batch_size: int = 32,
    candidate_batch_size: int = 4,
    pad_id: int = 0,
    progress: bool = False,
    accumulate: str = "float64",
    rule=None,
    first_index: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Sum of answer log-probs of every anchor after every demonstration, [N, M] float64.

    Row ``(c, a)`` sees exactly ``demos[c] + anchors[a].body`` with positions ``0..len-1``, as the
    reference's KV-cache concatenation does. ``anchor_batch_size`` caps the anchors of one forward and
    ``candidate_batch_size`` the demonstrations sharing it (so rows <= their product). ``accumulate``:
    "float64" (chunked logsumexp, float64 sums: the more exact sum) or "float32" (the reference's float32
    log_softmax and float32 ``torch.sum`` per anchor, :func:`reference_row_sums`: faithful mode).

    ``rule`` (early decision, :mod:`deita.selection.nuggets.early`): anchor batches are visited in the order
    drawn from ``seed``; a candidate (pool index ``first_index + row``) stops once ``rule.rejected`` says so,
    and its remaining pairs are NaN. The batches are those of the full pass, and candidates that share a
    forward (``candidate_batch_size``) run on until all of them are rejected, so every pair that is computed
    gets the full pass's value, bit for bit.
    """
    if any(len(d) == 0 for d in demos):
        raise ValueError("every demonstration needs at least one token")
    return _run(model, demos, anchors, anchor_batch_size=anchor_batch_size,
                candidate_batch_size=candidate_batch_size, pad_id=pad_id, progress=progress,
                desc="nuggets one-shot", accumulate=accumulate, rule=rule, first_index=first_index, seed=seed)

