"""Nuggets anchor ("predefined task") sets: k-means medoids of the pool, a seeded random sample, or a file.

Reference (pldlgb/nuggets): every pool example is rendered as its full Nuggets text, embedded with the
scoring LLM's ``AutoModel`` (``last_hidden_state`` averaged over ALL 512 padded positions, pads included:
a quirk kept by :func:`reference_embeddings`), saved as float32, clustered with ``sklearn
KMeans(n_clusters=100, random_state=0)`` (:mod:`deita.selection.nuggets.kmeans` says which settings that
means and how they are reproduced), and for each centroid the pool example nearest to it (squared
Euclidean) becomes an anchor: one anchor per centroid, ``k`` in all.

Nearest-row rule (:func:`nearest_to_centers`): distances in float64, one block of rows at a time (the
embedding matrix itself stays float32); an exact tie goes to the lowest pool index (``argmin``). When two
centroids share their nearest example, faithful mode keeps it twice, as the reference's one-per-centroid
rule does (the anchor then counts twice in every golden score, which stays a fraction of ``k``); clean
mode keeps it once (fewer than ``k`` anchors). The reference adds a randomly initialised ``[PAD]``
embedding row; we initialise it to the mean row so the embedding is deterministic.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

#: Bytes of float64 rows :func:`nearest_to_centers` converts at a time.
BLOCK_BYTES = 16 << 20


def nearest_to_centers(x, centers, *, unique: bool = False) -> list[int]:
    """For each center in order, the index of the nearest row of ``x`` (squared Euclidean; ties: lowest
    index). ``unique`` drops an index an earlier center already took.

    Rows are converted to float64 one block (:data:`BLOCK_BYTES`) at a time; ``x`` is never copied whole.
    """
    c = np.asarray(centers, dtype=np.float64)
    c_sq = (c * c).sum(1)
    n, k = len(x), c.shape[0]
    best_d, best_i = np.full(k, np.inf), np.zeros(k, dtype=np.int64)
    step = max(1, BLOCK_BYTES // (8 * max(1, c.shape[1])))
    for s in range(0, n, step):
        xb = np.asarray(x[s : s + step], dtype=np.float64)
        d = np.einsum("ij,ij->i", xb, xb)[:, None] - 2.0 * (xb @ c.T) + c_sq[None, :]
        i = d.argmin(0)
        v = d[i, np.arange(k)]
        closer = v < best_d  # strict: an earlier block keeps a tie
        best_d[closer], best_i[closer] = v[closer], i[closer] + s
    out = [int(i) for i in best_i]
    return list(dict.fromkeys(out)) if unique else out


def kmeans_anchor_indices(emb, k: int = 100, seed: int = 0, *, kmeans: str = "sklearn",
                          unique: bool = False) -> list[int]:
    """Pool indices of the k-means anchors: the example nearest each of ``k`` centroids, in centroid order.

    ``kmeans`` picks the backend (:data:`deita.selection.nuggets.kmeans.KMEANS_BACKENDS`); ``unique``
    keeps a shared nearest example once (clean mode) instead of once per centroid (faithful mode).
    """
    from deita.selection.nuggets.kmeans import kmeans_centers

    return nearest_to_centers(emb, kmeans_centers(emb, k, seed, kmeans), unique=unique)


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

    from deita.models.loading import resolve_dtype

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path, dtype=resolve_dtype(dtype)).eval()
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
