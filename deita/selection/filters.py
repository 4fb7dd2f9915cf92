"""Score-first, diversity-aware greedy selection (DEITA's "Repr Filter"), as pure array functions.

Semantics (reference: hkust-nlp/deita ``IterativeFilter.filter`` at batch_size 1, the shipped default):

1. Order the pool by score, best first (:func:`deita.selection.ranking.score_order`).
2. Always keep the first candidate.
3. Walk the order; reject a candidate iff its cosine similarity to *any* already-kept sample is
   ``> tau`` (strict), i.e. keep it iff its max similarity to the kept set is ``<= tau``.
4. Stop as soon as ``budget`` samples are kept (``budget=-1``: scan the whole order, i.e. dedup at tau).

The output is the kept pool indices in selection (= score) order, so a smaller budget selects a prefix
of a larger one.

Numerics, and why the oracle and the fast path agree by construction. Embeddings are L2-normalised to
float32 (:func:`l2_normalize`), as the reference does before comparing in float32. The *defined*
similarity of two samples is the exact dot product of their normalised float32 vectors, rounded once to
float32 and clamped to [-1, 1]; a candidate is rejected iff that value is ``> float32(tau)``. Because of
the clamp, ``tau >= 1`` rejects nothing, not even exact duplicates (the reference, unclamped, rejects an
exact duplicate at tau 1.0 only when its float32 self-similarity happens to round above 1); any tau < 1
removes exact duplicates. Both
:func:`greedy_diverse_naive` (float64 dot products, one candidate at a time) and :func:`greedy_diverse`
(float32 blocked matmuls) first compute an approximate similarity with a rigorous error bound
(``|error| <= 2 * D * unit_roundoff``, which holds for any summation order, including BLAS blocking and
FMA). A decision is taken from the approximation only when it is outside a band of that width around
tau; inside the band, both call the same :func:`_exact_sim` (float64 products of float32 values are
exact; ``math.fsum`` sums them with one correct rounding). So the two implementations can never disagree,
at any block size or on any device, even for similarities within 1e-7 of tau. The reference's own
float32 matmul can round a similarity within ~1e-6 of tau to the other side; such flips against the
reference are possible and are a documented, deliberate difference (we are deterministic instead).
The float32 matmul is run at ``torch.set_float32_matmul_precision("highest")`` (no TF32 / bf16).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

_U32 = 2.0**-24
"""Unit roundoff of float32."""
_U64 = 2.0**-53
"""Unit roundoff of float64."""


def _as_f32_matrix(emb: Any) -> np.ndarray:
    """An (N, D) float32 numpy view/copy of a numpy array or torch tensor."""
    if hasattr(emb, "detach"):  # torch tensor
        emb = emb.detach().cpu().numpy()
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"embeddings: expected an (N, D) matrix, found shape {x.shape}")
    return x.astype(np.float32, copy=False)


def _inv_norms(x: np.ndarray) -> np.ndarray:
    """float32 reciprocal L2 norms (accumulated in float64) of the rows of float32 ``x``; validates rows."""
    inv = np.empty(x.shape[0], dtype=np.float32)
    step = 4096
    for lo in range(0, x.shape[0], step):
        chunk = x[lo : lo + step]
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        if not np.isfinite(norms).all():  # float32 squares cannot overflow float64: a NaN/inf entry
            row = lo + int(np.flatnonzero(~np.isfinite(norms))[0])
            raise ValueError(f"l2_normalize: embedding row {row} has a non-finite value (NaN or inf)")
        zero = norms == 0.0
        if zero.any():
            rows = lo + np.flatnonzero(zero)
            raise ValueError(
                f"l2_normalize: embedding row {int(rows[0])} is a zero vector (norm 0), so its cosine "
                f"similarity is undefined ({int(zero.sum())} zero row(s) in rows {lo}..{lo + len(chunk) - 1})"
            )
        inv[lo : lo + step] = 1.0 / norms
    return inv


class _LazyRows:
    """Normalised rows on demand: ``rows[i]`` / ``rows.take(idx)`` equal ``l2_normalize(x)[i]`` bit for bit."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self.inv = _inv_norms(x)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.x[i] * self.inv[i]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Normalised rows ``idx`` as a C-contiguous float32 matrix."""
        return self.x[idx] * self.inv[idx][:, None]


def l2_normalize(emb: Any) -> np.ndarray:
    """Row-wise L2-normalised copy of an (N, D) embedding matrix (numpy or torch), as float32.

    Norms are accumulated in float64 from the float32 values; each row is multiplied by the float32
    reciprocal of its norm (rows end within ~1e-7 of unit norm). The reference divides by the float32 norm
    twice; the normalised values differ by ~1e-7 relative, which can only matter for similarities within
    ~1e-6 of tau.
    Raises ``ValueError`` naming the row for a zero vector or a non-finite value.
    """
    x = _as_f32_matrix(emb)
    inv = _inv_norms(x)
    out = np.empty(x.shape, dtype=np.float32)
    for lo in range(0, x.shape[0], 4096):
        np.multiply(x[lo : lo + 4096], inv[lo : lo + 4096, None], out=out[lo : lo + 4096])
    return out


def _exact_sim(a: np.ndarray, b: np.ndarray) -> float:
    """Exact dot product of two float32 vectors, correctly rounded to float64, clamped to [-1, 1]."""
    prod = a.astype(np.float64) * b.astype(np.float64)  # exact: 24+24 significand bits fit in 53
    return min(1.0, max(-1.0, math.fsum(prod.tolist())))


def _band(dim: int, unit_roundoff: float) -> float:
    """Half-width of the band around tau inside which an approximate similarity is not trusted."""
    return 2.0 * dim * unit_roundoff + 4.0 * _U32


def _tau32(tau: float) -> float:
    """``tau`` rounded to float32, the precision the reference compares in."""
    t = float(tau)
    if not math.isfinite(t):
        raise ValueError(f"tau must be a finite cosine similarity, found {tau!r}")
    return float(np.float32(t))


def _rejects(approx: np.ndarray, cand: int, others: np.ndarray, embn: np.ndarray, tau32: float, band: float) -> bool:
    """True iff candidate ``cand`` has a defined similarity ``> tau32`` to any pool row in ``others``.

    ``approx[i]`` approximates the similarity to ``others[i]`` within ``band``; only values inside the band
    around tau are recomputed exactly (highest first, stopping at the first exceedance).
    """
    if approx.size == 0:
        return False
    hi = float(approx.max())
    if hi > tau32 + band:
        return True
    if hi <= tau32 - band:
        return False
    near = np.flatnonzero(approx > tau32 - band)
    near = near[np.argsort(-approx[near], kind="stable")]
    c = embn[cand]
    for p in near:
        if float(np.float32(_exact_sim(c, embn[others[p]]))) > tau32:
            return True
    return False


def _check_inputs(embn: np.ndarray, order: Any, budget: int) -> np.ndarray:
    """Validate ``order`` against the pool size and ``budget``; return ``order`` as int64."""
    o = np.asarray(order)
    if o.ndim != 1 or (o.size and not np.issubdtype(o.dtype, np.integer)):
        raise ValueError(f"order: expected a 1-D integer array of pool indices, found {o.dtype} {o.shape}")
    o = o.astype(np.int64, copy=False)
    n = embn.shape[0]
    if o.size and (o.min() < 0 or o.max() >= n):
        raise ValueError(f"order: indices must lie in [0, {n}) (the embedding rows), found {o.min()}..{o.max()}")
    if np.unique(o).size != o.size:
        raise ValueError("order: pool indices must be unique (a repeated index would be its own duplicate)")
    if not isinstance(budget, (int, np.integer)) or budget < -1:
        raise ValueError(f"budget: expected -1 (no limit) or a count >= 0, found {budget!r}")
    return o


def greedy_diverse_naive(emb: Any, order: Any, tau: float = 0.9, budget: int = -1) -> np.ndarray:
    """Oracle greedy filter: one candidate at a time, exactly the reference's batch_size=1 semantics.

    ``emb`` is the (N, D) pool embedding matrix (not necessarily normalised), ``order`` the candidate
    pool indices best first (``ranking.score_order``). Keeps the first candidate, then each candidate whose
    max cosine similarity to the kept set is ``<= tau`` (reject iff ``> tau``), until ``budget`` are kept
    (``-1``: no limit). Similarities are float64 dot products of the float32-normalised rows; borderline
    ones are settled by the shared exact rule (see the module docstring). Returns the kept pool indices in
    selection order (int64). Cost O(N * K * D); use :func:`greedy_diverse` for real pools.
    """
    embn = l2_normalize(emb)
    o = _check_inputs(embn, order, budget)
    tau32 = _tau32(tau)
    band = _band(embn.shape[1], _U64)
    kept: list[int] = []
    kept64 = np.empty((0, embn.shape[1]), dtype=np.float64)
    for cand in o:
        if budget >= 0 and len(kept) >= budget:
            break
        approx = kept64 @ embn[cand].astype(np.float64)
        if not _rejects(approx, int(cand), np.asarray(kept, dtype=np.int64), embn, tau32, band):
            kept.append(int(cand))
            kept64 = np.vstack([kept64, embn[cand].astype(np.float64)[None]])
    return np.asarray(kept, dtype=np.int64)


@dataclass
class GreedyResult:
    """Output of :func:`greedy_diverse`."""

    kept: np.ndarray
    """Kept pool indices in selection order (int64)."""
    nn_sim: np.ndarray
    """Per kept sample: cosine similarity to its nearest previously kept sample, float32 as computed by the
    fast matmul (not the exact rule; within ~1e-5); NaN for the first kept sample."""
    rejected: int
    """Candidates rejected by tau before the budget was met (or before the order ran out)."""
    scanned: int
    """Candidates examined: ``len(kept) + rejected``."""


@contextmanager
def _highest_precision() -> Iterator[None]:
    """Run float32 matmuls in true float32 (no TF32 on CUDA, no bf16 on CPU), restoring the setting."""
    import torch

    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def greedy_diverse(
    emb: Any,
    order: Any,
    tau: float = 0.9,
    budget: int = -1,
    block_size: int = 1024,
    device: Any = "cpu",
    progress: bool = False,
) -> GreedyResult:
    """Fast exact greedy filter: selects exactly what :func:`greedy_diverse_naive` selects.

    Arguments as for the oracle; ``block_size`` candidates are processed per step, ``device`` is a torch
    device ("cpu", "cuda", "cuda:1"), ``progress`` shows a tqdm bar (pass True on rank 0 only).

    Algorithm: the normalised kept embeddings live in a preallocated float32 matrix on ``device``. For each
    block of B candidates, one matmul gives their similarities to the kept set (max per row) and one gives
    the intra-block similarities among the candidates that survive the kept set; the block is then resolved in order: candidate j is kept iff its max
    similarity to the kept set is ``<= tau`` AND its max similarity to the earlier *kept* members of the
    same block is ``<= tau``; the scan stops when ``budget`` are kept. Borderline similarities are settled
    by the same exact rule as the oracle, so the selection is identical for every block size and device.

    The reference's own ``batch_size > 1`` path is only approximate: it also rejects a candidate that is
    similar to an earlier candidate of the same batch even when that earlier candidate was itself rejected.
    This implementation is exact (identical to batch_size 1) at any block size.
    """
    import torch

    embn = _LazyRows(_as_f32_matrix(emb))  # validates every row now, normalises scanned rows only
    o = _check_inputs(embn.x, order, budget)
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, found {block_size!r}")
    tau32 = _tau32(tau)
    dim = embn.x.shape[1]
    band = _band(dim, _U32)
    dev = torch.device(device)
    cap = o.size if budget < 0 else min(int(budget), o.size)
    kept_idx = np.empty(cap, dtype=np.int64)
    nn_sim = np.full(cap, np.nan, dtype=np.float32)
    kept_mat = torch.empty((min(cap, 4096) if budget < 0 else cap, dim), dtype=torch.float32, device=dev)
    col_chunk = max(1, (1 << 25) // max(1, block_size))  # bounds the B x chunk similarity buffer
    k = rejected = scanned = 0
    local = np.empty(block_size, dtype=np.int64)
    starts = range(0, o.size, block_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="greedy filter (blocks)", unit="block")
    with _highest_precision(), torch.no_grad():
        for start in starts:
            if k >= cap:
                break
            blk = o[start : start + block_size]
            c = torch.from_numpy(embn.take(blk)).to(dev)
            smax = np.full(blk.size, -np.inf, dtype=np.float32)
            for lo in range(0, k, col_chunk):
                m = (c @ kept_mat[lo : min(k, lo + col_chunk)].T).amax(dim=1)
                smax = np.maximum(smax, m.cpu().numpy())
            # intra-block sims only among candidates not already rejected by the kept set
            surv = np.flatnonzero(smax <= tau32 + band)
            slot = np.full(blk.size, -1, dtype=np.int64)
            slot[surv] = np.arange(surv.size)
            cs = c.index_select(0, torch.from_numpy(surv).to(dev)) if surv.size < blk.size else c
            gram = (cs @ cs.T).cpu().numpy()
            n_local = 0
            for j in range(blk.size):
                scanned += 1
                m = float(smax[j])
                reject = m > tau32 + band
                if not reject and m > tau32 - band:  # borderline against the kept set: one exact look
                    row = (c[j : j + 1] @ kept_mat[:k].T)[0].cpu().numpy()
                    reject = _rejects(row, int(blk[j]), kept_idx[:k], embn, tau32, band)
                if not reject and n_local:  # against the earlier kept members of this block
                    g = gram[slot[j], slot[local[:n_local]]]
                    reject = _rejects(g, int(blk[j]), blk[local[:n_local]], embn, tau32, band)
                    m = max(m, float(g.max()))
                if reject:
                    rejected += 1
                    continue
                pos = k + n_local
                kept_idx[pos] = blk[j]
                nearest = m
                nn_sim[pos] = min(nearest, 1.0) if pos else np.nan
                local[n_local] = j
                n_local += 1
                if pos + 1 >= cap:
                    break
            if n_local:
                if k + n_local > kept_mat.shape[0]:  # budget -1: grow geometrically
                    grown = torch.empty((min(cap, max(2 * kept_mat.shape[0], k + n_local)), dim),
                                        dtype=torch.float32, device=dev)
                    grown[:k] = kept_mat[:k]
                    kept_mat = grown
                sel = torch.from_numpy(local[:n_local].copy()).to(dev)
                kept_mat[k : k + n_local] = c.index_select(0, sel)
                k += n_local
    return GreedyResult(kept=kept_idx[:k].copy(), nn_sim=nn_sim[:k].copy(), rejected=rejected, scanned=scanned)
