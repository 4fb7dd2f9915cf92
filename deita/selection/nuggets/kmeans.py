"""k-means centroids for the Nuggets anchors: the reference's scikit-learn KMeans, or faiss for big pools.

``sklearn`` (:func:`reference_kmeans`, faithful mode's only choice): what pldlgb/nuggets ran,
``KMeans(n_clusters=100, random_state=0)`` with the defaults of the scikit-learn it installed. Its
``requirements.txt`` names scikit-learn without a version; with its ``torch==2.0.0`` (Python 3.8-3.11) in
Dec 2023 pip picks scikit-learn 1.3.x, whose defaults are ``init="k-means++"`` (``2 + int(ln k)`` local
trials), ``n_init=10`` (1.4 changed the default to ``"auto"``, i.e. 1 run), ``algorithm="lloyd"``,
``max_iter=300``, ``tol=1e-4``, on the float32 embeddings as saved. We pass all of them explicitly.

scikit-learn 1.9.1 (our pin) runs the same Lloyd iterations bit for bit from the same start, but its
k-means++ seeding sums the D² weights in the data's dtype (``np.cumsum``; 1.3 used a float64
``stable_cumsum``), so on float32 embeddings a seeding can pick another row and ``n_init=10`` can end in
another clustering (measured: 3 of 15 float32 pools of 2,000-3,000 rows, k=100, none of 50 smaller
ones; on float64 data the two agree).
So the seedings are drawn here, as 1.3 drew them: one ``RandomState(seed)`` consumed by the 10 seedings in
turn, each on the mean-centred data with scikit-learn's own ``euclidean_distances``; each seeding's Lloyd
run is ``KMeans(init=<those rows>, n_init=1)``, and the lowest inertia wins (an equal-or-worse run, or a
relabelling of the best, does not replace it). Checked equal to scikit-learn 1.3.2's
``KMeans(n_clusters=100, random_state=0)`` (tests/test_anchors.py holds 1.3.2's anchors for a fixed pool).
It runs on one thread: scikit-learn's multi-threaded Lloyd sums centroids per thread, so its last bits
(and, at a near-tie, a label) depend on the thread count, and inside a process that has torch's OpenMP
pool it was ~100x slower on a loaded 2-core machine (measured: 300 x 6, k=12, 10 runs: 10 s vs 0.08 s).

``faiss`` (:func:`faiss_kmeans`, clean mode only; ``pip install deita[faiss]``): faiss-cpu's k-means, 25
iterations on at most 256 sampled rows per centroid, one seeded run: on 20K x 1024 (1 thread) 4.4x faster
than one scikit-learn run and ~40x faster than the faithful 10 runs, inertia +1-3%, other anchors
(BENCHMARKS.md). The option for 300K x 4096 pools.

Neither path copies the embedding matrix to float64: scikit-learn works in the embeddings' float32 (a
float32 working copy per run, plus briefly the temporary of its tolerance's ``np.var``: 2x the float32
matrix at the peak) and faiss reads the float32 array in place.
"""

from __future__ import annotations

import numpy as np

#: The reference's KMeans settings (scikit-learn 1.3 defaults), passed explicitly.
REFERENCE_SETTINGS = {"init": "k-means++", "n_init": 10, "algorithm": "lloyd", "max_iter": 300, "tol": 1e-4}

#: faiss k-means iterations (faiss's default).
FAISS_ITERATIONS = 25

#: Config values of ``selection.anchors.kmeans``.
KMEANS_BACKENDS = ("sklearn", "faiss")


def _float_matrix(x) -> np.ndarray:
    """``x`` as a C-contiguous float32/float64 2-D array; float32 and float64 input is not copied."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def _same_partition(labels: np.ndarray, best: np.ndarray) -> bool:
    """True when every cluster of ``labels`` lies inside one cluster of ``best`` (scikit-learn's test for
    'the same clustering, relabelled')."""
    pairs = np.unique(np.stack([labels, best]), axis=1)
    return pairs.shape[1] == np.unique(labels).size


def _plusplus_rows(xc: np.ndarray, k: int, rng: np.random.RandomState, sq_norms: np.ndarray) -> np.ndarray:
    """Row indices of one greedy k-means++ seeding, drawing from ``rng`` as scikit-learn 1.3 does.

    The first row is ``rng.choice`` with uniform weights; each next one is the best (lowest total D²) of
    ``2 + int(ln k)`` rows drawn by D² weight (float64 cumulative sum).
    """
    from sklearn.metrics.pairwise import euclidean_distances

    n = xc.shape[0]
    weights = np.ones(n, dtype=xc.dtype)
    trials = 2 + int(np.log(k))
    rows = np.empty(k, dtype=np.int64)
    rows[0] = rng.choice(n, p=weights / weights.sum())
    closest = euclidean_distances(xc[rows[:1]], xc, Y_norm_squared=sq_norms, squared=True)
    potential = closest @ weights
    for c in range(1, k):
        targets = rng.uniform(size=trials) * potential
        cand = np.searchsorted(np.cumsum(weights * closest, dtype=np.float64), targets)
        np.clip(cand, None, n - 1, out=cand)
        dist = euclidean_distances(xc[cand], xc, Y_norm_squared=sq_norms, squared=True)
        np.minimum(closest, dist, out=dist)
        pots = dist @ weights.reshape(-1, 1)
        best = int(np.argmin(pots))
        potential, closest, rows[c] = pots[best], dist[best], cand[best]
    return rows


def reference_seedings(x, k: int, seed: int = 0, n_init: int = REFERENCE_SETTINGS["n_init"]) -> list[np.ndarray]:
    """The ``n_init`` k-means++ seedings (row indices) of scikit-learn 1.3's ``KMeans(random_state=seed)``:
    one ``RandomState(seed)`` drawn by each seeding in turn, on the data minus its column mean."""
    from sklearn import config_context
    from sklearn.utils.extmath import row_norms

    x = _float_matrix(x)
    rng = np.random.RandomState(seed)
    centred = x - x.mean(axis=0)
    sq_norms = row_norms(centred, squared=True)
    with config_context(assume_finite=True, skip_parameter_validation=True):  # no full-matrix scan per call
        return [_plusplus_rows(centred, k, rng, sq_norms) for _ in range(n_init)]


def reference_kmeans(x, k: int, seed: int = 0) -> np.ndarray:
    """Centroids [k, d] of the reference's ``KMeans(n_clusters=k, random_state=seed)`` (module doc), on one
    thread: the same centroids on every machine, and no OpenMP contention with torch's thread pool."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    x = _float_matrix(x)
    _check_k(x, k)
    settings = {key: v for key, v in REFERENCE_SETTINGS.items() if key not in ("init", "n_init")}
    best = None
    with threadpool_limits(limits=1):
        for rows in reference_seedings(x, k, seed):
            run = KMeans(n_clusters=k, init=x[rows], n_init=1, **settings).fit(x)
            if best is None or (run.inertia_ < best.inertia_ and not _same_partition(run.labels_, best.labels_)):
                best = run
    return best.cluster_centers_


def faiss_kmeans(x, k: int, seed: int = 0) -> np.ndarray:
    """Centroids [k, d] from faiss-cpu's k-means (float32, :data:`FAISS_ITERATIONS` iterations, seeded)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_k(x, k)
    km = faiss.Kmeans(x.shape[1], k, niter=FAISS_ITERATIONS, seed=seed, verbose=False)
    km.train(x)
    return np.asarray(km.centroids)


def kmeans_centers(x, k: int, seed: int = 0, backend: str = "sklearn") -> np.ndarray:
    """Centroids [k, d] of ``x`` with ``backend`` (one of :data:`KMEANS_BACKENDS`)."""
    if backend == "sklearn":
        return reference_kmeans(x, k, seed)
    if backend == "faiss":
        return faiss_kmeans(x, k, seed)
    raise ValueError(f"k-means backend must be one of {KMEANS_BACKENDS}, got {backend!r}")


def _check_k(x: np.ndarray, k: int) -> None:
    if x.ndim != 2 or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means: need a 2-D array with at least k={k} rows, got shape {x.shape}")
