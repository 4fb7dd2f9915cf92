"""Nuggets anchor ("predefined task") sets: k-means medoids of the pool, a seeded random sample, or a file.

Reference (pldlgb/nuggets): every pool example is rendered as its full Nuggets text, embedded with the
scoring LLM's ``AutoModel`` (``last_hidden_state`` averaged over ALL 512 padded positions, pads included:
a quirk kept by :func:`reference_embeddings`), clustered with ``sklearn KMeans(n_clusters=100,
random_state=0)``, and the pool example nearest (squared Euclidean) to each centroid becomes an anchor.

Differences, stated: scikit-learn is not a dependency, so :func:`kmeans` is our own seeded k-means++
(greedy, ``2 + ln k`` local trials like sklearn) with Lloyd iterations; the same seed gives the same
anchors here, but not sklearn's exact clusters. When two centroids share a nearest example, it is kept
once (the anchor set has no duplicates). The reference adds a randomly initialised ``[PAD]`` embedding
row; we initialise it to the mean row so the embedding is deterministic.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [n, k] (float64)."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each new center is the best of ``2 + ln k`` D²-weighted draws."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centers = [x[rng.integers(n)]]
    closest = _sq_dists(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[None, :], _sq_dists(x, x[cand]).T)
        best = int(np.argmin(d.sum(1)))
        centers.append(x[cand[best]])
        closest = d[best]
    return np.stack(centers)


def kmeans(x, k: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means (k-means++ init, Lloyd iterations) on rows of ``x``. Returns ``(centers, labels)``.

    Stops when no label changes or the total squared center shift is ``<= tol * mean feature variance``
    (sklearn's criterion). An emptied cluster keeps its previous center.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: need a 2-D array with at least k={k} rows, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    centers = kmeans_pp_init(x, k, rng)
    eps = tol * float(np.var(x, axis=0).mean())
    labels = np.full(x.shape[0], -1)
    for _ in range(max_iter):
        new_labels = np.argmin(_sq_dists(x, centers), axis=1)
        new_centers = centers.copy()
        for j in range(k):
            members = x[new_labels == j]
            if len(members):
                new_centers[j] = members.mean(0)
        shift = float(((new_centers - centers) ** 2).sum())
        done = np.array_equal(new_labels, labels) or shift <= eps
        centers, labels = new_centers, new_labels
        if done:
            break
    return centers, np.argmin(_sq_dists(x, centers), axis=1)


def nearest_to_centers(x, centers) -> list[int]:
    """For each center in order, the index of the nearest row (squared Euclidean, ties: lowest index);
    an index already taken by an earlier center is not repeated."""
    d = _sq_dists(np.asarray(x, dtype=np.float64), np.asarray(centers, dtype=np.float64))
    out: list[int] = []
    for j in range(d.shape[1]):
        i = int(np.argmin(d[:, j]))
        if i not in out:
            out.append(i)
    return out


def kmeans_anchor_indices(emb, k: int = 100, seed: int = 0) -> list[int]:
    """Pool indices of the k-means anchors: the example nearest each of ``k`` centroids."""
    centers, _ = kmeans(emb, k, seed)
    return nearest_to_centers(emb, centers)


def random_anchor_indices(n: int, k: int, seed: int = 0) -> list[int]:
    """``k`` distinct pool indices drawn uniformly with ``numpy.random.default_rng(seed)``, sorted."""
    if not 1 <= k <= n:
        raise ValueError(f"random anchors: need 1 <= k <= pool size {n}, got k={k}")
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def reference_embeddings(
    model_path: str,
    texts: Sequence[str],
    *,
    max_length: int = 512,
    batch_size: int = 30,
    dtype: str = "float32",
    device: Optional[str] = None,
    progress: bool = False,
) -> np.ndarray:
    """The reference anchor embedding: ``AutoModel`` ``last_hidden_state`` mean over all ``max_length``
    positions of ``tok(texts, truncation=True, padding="max_length")`` (pads INCLUDED), float32 [N, H].

    As the reference, a ``[PAD]`` token is added and the embeddings resized (new row = mean row).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    if device:
        model.to(device)
    added = tok.add_special_tokens({"pad_token": "[PAD]"})
    if added:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            w = model.get_input_embeddings().weight
            w[-added:] = w[:-added].mean(0, keepdim=True)
    dev = next(model.parameters()).device
    out = []
    for s in tqdm(range(0, len(texts), batch_size), desc="nuggets anchor embeddings", disable=not progress):
        enc = tok(list(texts[s : s + batch_size]), return_tensors="pt", truncation=True,
                  padding="max_length", max_length=max_length)
        with torch.no_grad():
            h = model(**{k: v.to(dev) for k, v in enc.items()}).last_hidden_state
        out.append(h.float().mean(dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
