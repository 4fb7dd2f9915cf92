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

Storage and memory. The embeddings are an (N, D) array-like: in memory, a torch tensor, a ``np.memmap``
of a ``.npy`` file, or row chunks of such files (:class:`deita.store.ChunkedRows`); stored as float32, or float16 to halve the file (values are widened to float32 exactly,
so the filter is exact with respect to the stored float16 values, which may select differently from their
float32 originals when a similarity is within ~1e-4 of tau). :func:`greedy_diverse` streams: it reads the
candidates in score order one block at a time, so its memory is the kept set plus one block.
"""

from __future__ import annotations

import math
import mmap
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

_U32 = 2.0**-24
"""Unit roundoff of float32."""
_U64 = 2.0**-53
"""Unit roundoff of float64."""


def _as_matrix(emb: Any) -> np.ndarray:
    """``emb`` as an (N, D) numpy array in its stored dtype; a ``np.memmap`` stays a memmap (no read)."""
    if hasattr(emb, "detach"):  # torch tensor
        emb = emb.detach().cpu().numpy()
    x = emb if isinstance(emb, np.ndarray) else np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"embeddings: expected an (N, D) matrix, found shape {x.shape}")
    return x


def _unit_rows(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ValueError | None]:
    """L2-normalise the float32 rows ``x`` (pool rows ``rows``) as far as the first invalid one.

    Returns the normalised float32 copy of the rows before the first zero or non-finite row, and ``None``
    or the ``ValueError`` naming that row (its pool index), for the caller to raise when it reaches it.
    Each row is normalised on its own (norm accumulated in float64, multiplied by the float32 reciprocal),
    so a row's result does not depend on which other rows share the block: the oracle and the streamed
    filter get bit-identical vectors.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    bad = np.flatnonzero(~(norms > 0.0) | ~np.isfinite(norms))  # float32 squares cannot overflow float64
    err = None
    if bad.size:
        j = int(bad[0])
        if norms[j] == 0.0:
            err = ValueError(f"l2_normalize: embedding row {int(rows[j])} is a zero vector (norm 0), so its cosine "
                             "similarity is undefined")
        else:
            err = ValueError(f"l2_normalize: embedding row {int(rows[j])} has a non-finite value (NaN or inf)")
        x, norms = x[:j], norms[:j]
    return x * (1.0 / norms).astype(np.float32)[:, None], err


def l2_normalize(emb: Any) -> np.ndarray:
    """Row-wise L2-normalised copy of an (N, D) embedding matrix (numpy or torch), as float32.

    Norms are accumulated in float64 from the float32 values; each row is multiplied by the float32
    reciprocal of its norm (rows end within ~1e-7 of unit norm). The reference divides by the float32 norm
    twice; the normalised values differ by ~1e-7 relative, which can only matter for similarities within
    ~1e-6 of tau.
    Raises ``ValueError`` naming the row for a zero vector or a non-finite value.
    """
    x = _as_matrix(emb)
    out = np.empty(x.shape, dtype=np.float32)
    step = 4096
    for lo in range(0, x.shape[0], step):
        hi = min(x.shape[0], lo + step)
        unit, err = _unit_rows(x[lo:hi].astype(np.float32, copy=False), np.arange(lo, hi))
        if err is not None:
            raise err
        out[lo:hi] = unit
    return out


class _RowReader:
    """Reads pool rows by index, as float32, from an (N, D) array that may be a memory-mapped ``.npy``.

    For a ``np.memmap`` opened read-only or shared (``np.load(path, mmap_mode="r")``, modes r/r+/w+) whose
    rows are contiguous, rows are read from its file with explicit ``os.preadv`` calls (sorted by position,
    consecutive rows in one call), so no page of the map is touched and the process's resident memory holds
    only the block read. (Touching the map would count every page read as resident, file-backed memory, until
    the kernel evicts it: a scan of a 4 GB map shows a 4 GB peak RSS.) Any other array (in memory, torch, a
    copy-on-write map) is read by fancy indexing. The stored dtype may be float16, float32 or float64; rows
    are returned converted to float32 (exact from float16).
    """

    def __init__(self, emb: Any):
        self.x = _as_matrix(emb)
        self.n, self.dim = self.x.shape
        self._fd: int | None = None
        self._row0 = self._file_offset(self.x)

    @staticmethod
    def _file_offset(x: np.ndarray) -> int | None:
        """Byte position of row 0 in ``x.filename``, when ``x`` is a memmap readable from its file; else None."""
        if not isinstance(x, np.memmap) or not x.filename or x.mode not in ("r", "r+", "w+"):
            return None
        if x.strides[1] != x.itemsize or x.dtype.hasobject:
            return None
        root = x  # the array that owns the mmap; views inherit its ``offset`` (np.memmap.__array_finalize__)
        while isinstance(root.base, np.ndarray):
            root = root.base
        if not isinstance(root.base, mmap.mmap):
            return None
        return int(x.offset) + (x.__array_interface__["data"][0] - root.__array_interface__["data"][0])

    def __enter__(self) -> "_RowReader":
        if self._row0 is not None:
            self._fd = os.open(self.x.filename, os.O_RDONLY)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (pool indices) as a C-contiguous float32 (len(idx), D) matrix, in ``idx`` order."""
        if self._fd is None:
            return np.ascontiguousarray(self.x[idx], dtype=np.float32)
        srt = np.argsort(idx, kind="stable")
        raw = np.empty((idx.size, self.dim), dtype=self.x.dtype)
        self._pread_rows(idx[srt], raw)
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        out[srt] = raw
        return out

    def _pread_rows(self, rows: np.ndarray, raw: np.ndarray) -> None:
        """Fill ``raw`` with the ascending pool rows ``rows`` read from the file; runs of rows in one read."""
        stride, nbytes = self.x.strides[0], self.dim * self.x.itemsize
        buf = memoryview(raw.reshape(-1).view(np.uint8))
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1 if stride == nbytes else np.arange(1, rows.size)
        for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, rows.size].tolist()):
            pos, view = self._row0 + int(rows[a]) * stride, buf[a * nbytes : b * nbytes]
            while len(view):  # a short read is legal; an empty one means the file is shorter than the array
                got = os.preadv(self._fd, [view], pos)
                if got <= 0:
                    raise ValueError(f"embeddings file {self.x.filename}: truncated, cannot read row {int(rows[a])}")
                view, pos = view[got:], pos + got


class _ChunkedReader:
    """Reads pool rows, as float32, from a row-chunked matrix such as :class:`deita.store.ChunkedRows`: an
    object with ``shape``, ``starts`` (each chunk's first row, then the row count) and ``part(i)`` (chunk
    ``i`` as an array, e.g. a read-only memmap). One :class:`_RowReader` per chunk touched, at most
    ``max_open`` files open at once."""

    def __init__(self, emb: Any, max_open: int = 64):
        self.emb, self.max_open = emb, max_open
        self.starts = np.asarray(emb.starts, dtype=np.int64)
        self.n, self.dim = int(self.starts[-1]), int(emb.shape[1])
        self._open: dict[int, _RowReader] = {}  # insertion order: least recently used first

    def __enter__(self) -> "_ChunkedReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        for reader in self._open.values():
            reader.__exit__(None, None, None)
        self._open.clear()

    def _reader(self, p: int) -> _RowReader:
        reader = self._open.pop(p, None)
        if reader is None:
            if len(self._open) >= self.max_open:
                self._open.pop(next(iter(self._open))).__exit__(None, None, None)
            reader = _RowReader(self.emb.part(p)).__enter__()
        self._open[p] = reader
        return reader

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (pool indices) as a C-contiguous float32 (len(idx), D) matrix, in ``idx`` order."""
        out = np.empty((idx.size, self.dim), dtype=np.float32)
        part = np.searchsorted(self.starts, idx, side="right") - 1
        for p in np.unique(part).tolist():
            sel = np.flatnonzero(part == p)
            out[sel] = self._reader(p).take(idx[sel] - self.starts[p])
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


def _rejects(approx: np.ndarray, cand: np.ndarray, other: Callable[[int], np.ndarray], tau32: float,
             band: float) -> bool:
    """True iff the normalised candidate ``cand`` has a defined similarity ``> tau32`` to any of the others.

    ``approx[p]`` approximates the similarity to the normalised vector ``other(p)`` within ``band``; only
    values inside the band around tau are recomputed exactly (highest first, stopping at the first exceedance).
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
    for p in near:
        if float(np.float32(_exact_sim(cand, other(int(p))))) > tau32:
            return True
    return False


def _check_inputs(n: int, order: Any, budget: int) -> np.ndarray:
    """Validate ``order`` against the pool size ``n`` and ``budget``; return ``order`` as int64."""
    o = np.asarray(order)
    if o.ndim != 1 or (o.size and not np.issubdtype(o.dtype, np.integer)):
        raise ValueError(f"order: expected a 1-D integer array of pool indices, found {o.dtype} {o.shape}")
    o = o.astype(np.int64, copy=False)
    if o.size and (o.min() < 0 or o.max() >= n):
        raise ValueError(f"order: indices must lie in [0, {n}) (the embedding rows), found {o.min()}..{o.max()}")
    if np.unique(o).size != o.size:
        raise ValueError("order: pool indices must be unique (a repeated index would be its own duplicate)")
    if not isinstance(budget, (int, np.integer)) or budget < -1:
        raise ValueError(f"budget: expected -1 (no limit) or a count >= 0, found {budget!r}")
    return o


def greedy_diverse_naive(emb: Any, order: Any, tau: float = 0.9, budget: int = -1) -> np.ndarray:
    """Oracle greedy filter: one candidate at a time, exactly the reference's batch_size=1 semantics.

    ``emb`` is the (N, D) pool embedding matrix (not necessarily normalised; float16 values are used
    exactly as stored), ``order`` the candidate pool indices best first (``ranking.score_order``). Keeps
    the first candidate, then each candidate whose max cosine similarity to the kept set is ``<= tau``
    (reject iff ``> tau``), until ``budget`` are kept (``-1``: no limit). Similarities are float64 dot
    products of the float32-normalised rows; borderline ones are settled by the shared exact rule (see the
    module docstring). Returns the kept pool indices in selection order (int64). Cost O(N * K * D) and an
    in-memory N x D copy; use :func:`greedy_diverse` for real pools.
    """
    embn = l2_normalize(emb)
    o = _check_inputs(embn.shape[0], order, budget)
    tau32 = _tau32(tau)
    band = _band(embn.shape[1], _U64)
    kept: list[int] = []
    kept64 = np.empty((0, embn.shape[1]), dtype=np.float64)
    for cand in o:
        if budget >= 0 and len(kept) >= budget:
            break
        approx = kept64 @ embn[cand].astype(np.float64)
        if not _rejects(approx, embn[cand], lambda p: embn[kept[p]], tau32, band):
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
    rejected_at: np.ndarray
    """Scan positions (0-based indices into ``order``) of the candidates rejected by tau, ascending (int64,
    ``rejected`` entries); every other scanned position was kept. See :meth:`rejected_by`."""
    tau: float = float("nan")
    """The threshold the filter ran with (cosine similarity)."""

    def rejected_by(self, n_scanned: Any) -> np.ndarray:
        """Running count of rejections by tau among the first ``n_scanned`` candidates (int or int array).

        ``rejected_by(np.arange(1, r.scanned + 1))`` is the curve of rows rejected against rows scanned.
        """
        return np.searchsorted(self.rejected_at, np.asarray(n_scanned), side="left")


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

    Streaming: ``emb`` may be a ``np.memmap`` of a ``.npy`` file (``np.load(path, mmap_mode="r")``) or a
    row-chunked store of such files (:class:`deita.store.ChunkedRows`, what the embedding cache returns), in
    float32 or float16 (computed in float32 from the stored values, exactly). Candidates are read in score
    order one block at a time (see :class:`_RowReader`: explicit file reads, so the map's pages never
    count as resident memory), so the memory is the kept set (``budget`` x D float32, preallocated; grown
    geometrically when ``budget`` is -1) plus one block, never N x D. Only the scanned rows are read and
    validated (a zero or non-finite row raises ``ValueError`` naming it when the scan reaches it; rows past
    the point where the budget is met are never read).

    Algorithm: the normalised kept embeddings live in a preallocated float32 matrix on ``device``. For each
    block of B candidates, one matmul gives their similarities to the kept set (max per row) and one gives
    the intra-block similarities among the candidates that survive the kept set; the block is then resolved
    in order: candidate j is kept iff its max similarity to the kept set is ``<= tau`` AND its max
    similarity to the earlier *kept* members of the same block is ``<= tau``; the scan stops when ``budget``
    are kept. Borderline similarities are settled by the same exact rule as the oracle, so the selection is
    identical for every block size and device.

    The reference's own ``batch_size > 1`` path is only approximate: it also rejects a candidate that is
    similar to an earlier candidate of the same batch even when that earlier candidate was itself rejected.
    This implementation is exact (identical to batch_size 1) at any block size.
    """
    import torch

    reader = _ChunkedReader(emb) if hasattr(emb, "starts") and hasattr(emb, "part") else _RowReader(emb)
    o = _check_inputs(reader.n, order, budget)
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, found {block_size!r}")
    tau32 = _tau32(tau)
    dim = reader.dim
    band = _band(dim, _U32)
    dev = torch.device(device)
    cap = o.size if budget < 0 else min(int(budget), o.size)
    kept_idx = np.empty(cap, dtype=np.int64)
    nn_sim = np.full(cap, np.nan, dtype=np.float32)
    kept_mat = torch.empty((min(cap, 4096) if budget < 0 else cap, dim), dtype=torch.float32, device=dev)
    col_chunk = max(1, (1 << 25) // max(1, block_size))  # bounds the B x chunk similarity buffer
    k = scanned = 0
    rejected_at: list[np.ndarray] = []
    local = np.empty(block_size, dtype=np.int64)
    rejected_here = np.zeros(block_size, dtype=bool)
    starts = range(0, o.size, block_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="greedy filter (blocks)", unit="block")

    def kept_row(p: int) -> np.ndarray:
        return kept_mat[p].cpu().numpy()

    with reader, _highest_precision(), torch.no_grad():
        for start in starts:
            if k >= cap:
                break
            blk = o[start : start + block_size]
            cn, invalid = _unit_rows(reader.take(blk), blk)  # raise ``invalid`` only if the scan reaches it
            blk = blk[: cn.shape[0]]
            c = torch.from_numpy(cn).to(dev)
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
            rejected_here[:] = False
            for j in range(blk.size):
                scanned += 1
                m = float(smax[j])
                reject = m > tau32 + band
                if not reject and m > tau32 - band:  # borderline against the kept set: one exact look
                    row = (c[j : j + 1] @ kept_mat[:k].T)[0].cpu().numpy()
                    reject = _rejects(row, cn[j], kept_row, tau32, band)
                if not reject and n_local:  # against the earlier kept members of this block
                    g = gram[slot[j], slot[local[:n_local]]]
                    reject = _rejects(g, cn[j], lambda p: cn[local[p]], tau32, band)
                    m = max(m, float(g.max()))
                if reject:
                    rejected_here[j] = True
                    continue
                pos = k + n_local
                kept_idx[pos] = blk[j]
                nn_sim[pos] = min(m, 1.0) if pos else np.nan
                local[n_local] = j
                n_local += 1
                if pos + 1 >= cap:
                    break
            rejected_at.append(start + np.flatnonzero(rejected_here[: blk.size]))
            if n_local:
                if k + n_local > kept_mat.shape[0]:  # budget -1: grow geometrically
                    grown = torch.empty((min(cap, max(2 * kept_mat.shape[0], k + n_local)), dim),
                                        dtype=torch.float32, device=dev)
                    grown[:k] = kept_mat[:k]
                    kept_mat = grown
                sel = torch.from_numpy(local[:n_local].copy()).to(dev)
                kept_mat[k : k + n_local] = c.index_select(0, sel)
                k += n_local
            if invalid is not None and k < cap:
                raise invalid
    rej = np.concatenate(rejected_at) if rejected_at else np.empty(0, dtype=np.int64)
    return GreedyResult(kept=kept_idx[:k].copy(), nn_sim=nn_sim[:k].copy(), rejected=int(rej.size), scanned=scanned,
                        rejected_at=rej.astype(np.int64, copy=False), tau=float(tau))
