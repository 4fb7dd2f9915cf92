"""Pure planning for the fast Nuggets pass: which anchor tokens a forward must see, and how to batch them.

No torch here, so tests can check the plan on hand-made token lists. Facts the plan relies on (all exact):

* token ``body[j]`` is scored from the hidden state at position ``j - 1``; the last scored token
  ``body[end - 1]`` is never an input that anything scored depends on, so an anchor's input stops at
  ``body[end - 2]`` (``end - 1`` tokens);
* an anchor with an empty span (its query fills the 200-token window) scores 0 in every pass and needs no
  forward at all;
* the tokens that EVERY active anchor starts with (``"Instruction:\\n"`` ...) see the same context in every
  row, so they are computed once per demonstration, as part of its prefill; the shared part stops before
  any scored position;
* rows are padded only to the longest row of their own batch; anchors are sorted by length and cut into
  batches by a small dynamic program that trades padded tokens against a per-forward overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from deita.selection.nuggets.tokens import AnchorTokens


@dataclass(frozen=True)
class AnchorPlan:
    """What the anchors contribute to every forward (see the module doc).

    ``own[i]`` are the input ids of active anchor ``active[i]`` after the shared ``prefix``;
    ``first[i]`` is the index inside ``own[i]`` whose hidden state scores ``targets[i][0]``; the scored
    hidden states are ``own[i][first[i] : first[i] + len(targets[i])]`` positions.
    """

    prefix: tuple[int, ...]
    """Ids every active anchor starts with, computed once per demonstration (after it)."""
    active: tuple[int, ...]
    """Indices (into the caller's anchor list) of anchors with at least one scored token."""
    own: tuple[tuple[int, ...], ...]
    """Per active anchor: its input ids after ``prefix``, without the final (never-input) token."""
    first: tuple[int, ...]
    """Per active anchor: position in ``own`` whose output predicts the first scored token."""
    targets: tuple[tuple[int, ...], ...]
    """Per active anchor: the scored token ids ``body[start:end]``."""


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix shared by every sequence (0 for an empty list)."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for j in range(n):
        t = first[j]
        if any(s[j] != t for s in seqs):
            return j
    return n


def plan_anchors(anchors: Sequence[AnchorTokens], *, share_prefix: bool = True) -> AnchorPlan:
    """Trim each anchor to the tokens a forward needs and factor out the shared leading tokens."""
    active = [i for i, a in enumerate(anchors) if a.end > a.start]
    bad = [i for i in active if anchors[i].start < 1]
    if bad:
        raise ValueError(f"anchor {bad[0]}: answer span starts at token 0, expected a non-empty query before it")
    inputs = [tuple(anchors[i].body[: anchors[i].end - 1]) for i in active]
    p = 0
    if share_prefix and active:
        # never share a scored position: the first scored hidden state (start - 1) stays in each row
        p = min(common_prefix_len(inputs), min(anchors[i].start - 1 for i in active))
        p = max(p, 0)
    prefix = inputs[0][:p] if active else ()
    return AnchorPlan(
        prefix=tuple(prefix),
        active=tuple(active),
        own=tuple(x[p:] for x in inputs),
        first=tuple(anchors[i].start - 1 - p for i in active),
        targets=tuple(tuple(anchors[i].body[anchors[i].start : anchors[i].end]) for i in active),
    )


def length_batches(lengths: Sequence[int], max_rows: int, overhead: int = 64) -> list[list[int]]:
    """Cut items into batches of at most ``max_rows``, minimising padded tokens + ``overhead`` per batch.

    Items are sorted by length (ties by index) and each batch is a contiguous run of that order, padded to
    its longest item; the split is found by dynamic programming (optimal for this cost). Returns lists of
    item indices, shortest batch first.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for e in range(1, n + 1):
        width = lengths[order[e - 1]]
        for s in range(max(0, e - max_rows), e):
            c = best[s] + (e - s) * width + overhead
            if c < best[e]:
                best[e], cut[e] = c, s
    out, e = [], n
    while e > 0:
        out.append(order[cut[e] : e])
        e = cut[e]
    return out[::-1]
