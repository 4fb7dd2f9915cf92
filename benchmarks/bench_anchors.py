"""Nuggets k-means anchors: time, peak memory and inertia of each k-means backend on the same embeddings.

Usage: python benchmarks/bench_anchors.py --rows 10000 --dim 768 --k 100 --reps 3 \
           --backends sklearn sklearn-1run faiss [--numpy-from OLD_ANCHORS_PY]
Embeddings: ``--rows`` x ``--dim`` float32 around 300 Gaussian centres (seeded), written once to
``--workdir``. Every (backend, repetition) runs in a fresh process on 1 thread (OMP/MKL/OpenBLAS, faiss),
in an order that rotates every repetition; each child loads the embeddings, then times
``kmeans_anchor_indices`` (centroids + nearest rows) and reports its peak RSS above the RSS it had before
(``ru_maxrss``). Backends: ``sklearn`` (faithful: the reference's 10 k-means++ runs), ``sklearn-1run``
(scikit-learn KMeans, one k-means++ run: the same work as one of our runs), ``faiss``, and ``numpy``: the
``kmeans()`` of an older ``deita/selection/nuggets/anchors.py`` given with ``--numpy-from`` (removed in
favour of scikit-learn; ``git show c39525a:deita/selection/nuggets/anchors.py > /tmp/old_anchors.py``).
``--check-reference`` instead prints the anchors of the test pool in tests/test_anchors.py (to compare with
scikit-learn 1.3.2's, run in an environment that has it: ``--backends sklearn-plain``).
Prints a markdown table: median seconds, ratio to the fastest, inertia relative to the best, peak extra
memory in MB and as a multiple of the float32 embedding matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def make_pool(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """float32 rows around 300 Gaussian centres: the shape of a pool of instruction embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((300, dim), dtype=np.float32)
    x = centres[rng.integers(300, size=rows)]
    x += 1.5 * rng.standard_normal((rows, dim), dtype=np.float32)
    return x


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _inertia(x: np.ndarray, centers: np.ndarray) -> float:
    from deita.selection.nuggets import anchors

    c = np.asarray(centers, np.float64)
    total, step = 0.0, max(1, anchors.BLOCK_BYTES // (8 * x.shape[1]))
    for s in range(0, len(x), step):
        xb = x[s : s + step].astype(np.float64)
        total += float(((xb * xb).sum(1)[:, None] - 2 * xb @ c.T + (c * c).sum(1)[None]).min(1).sum())
    return total


def child(args) -> None:
    """Run one backend once on the saved embeddings; print a JSON line."""
    from deita.selection.nuggets import anchors

    x = np.load(args.pool)
    # imports first: neither the timing nor the memory figure should count loading libraries
    if args.backend == "faiss":
        import faiss

        faiss.omp_set_num_threads(1)
    if args.backend.startswith("sklearn"):
        from sklearn.cluster import KMeans
        from sklearn.metrics.pairwise import euclidean_distances  # noqa: F401
    from deita.selection.nuggets.kmeans import kmeans_centers
    if args.backend == "numpy":
        import importlib.util

        spec = importlib.util.spec_from_file_location("old_anchors", args.numpy_from)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)

    def centers_of():
        if args.backend in ("sklearn", "faiss"):
            return kmeans_centers(x, args.k, 0, args.backend)
        if args.backend in ("sklearn-1run", "sklearn-plain"):
            n_init = 1 if args.backend == "sklearn-1run" else 10
            return KMeans(n_clusters=args.k, random_state=0, n_init=n_init).fit(x).cluster_centers_
        if args.backend == "numpy":
            return old.kmeans(x, args.k, 0)[0]
        raise SystemExit(f"unknown backend {args.backend!r}")

    base = _rss_mb()
    t = time.perf_counter()
    centers = centers_of()
    idx = anchors.nearest_to_centers(x, centers)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"backend": args.backend, "seconds": seconds, "extra_mb": peak - base,
                      "inertia": _inertia(x, centers), "anchors": idx}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", nargs="+", default=["sklearn", "sklearn-1run", "faiss"])
    ap.add_argument("--numpy-from", help="an older anchors.py whose kmeans() is timed as backend 'numpy'")
    ap.add_argument("--workdir", default="/tmp/deita-bench-anchors")
    ap.add_argument("--check-reference", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    os.makedirs(args.workdir, exist_ok=True)
    if args.check_reference:
        args.pool = os.path.join(args.workdir, "test_pool.npy")
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from tests.test_anchors import _pool

        np.save(args.pool, _pool(2000, 8, 40))
        args.k, args.rows, args.dim = 100, 2000, 8
    else:
        args.pool = os.path.join(args.workdir, f"pool_{args.rows}x{args.dim}.npy")
        if not os.path.exists(args.pool):
            np.save(args.pool, make_pool(args.rows, args.dim))
    env = {**os.environ, **{v: "1" for v in THREAD_VARS}}
    results = {b: [] for b in args.backends}
    for rep in range(args.reps):
        order = args.backends[rep % len(args.backends):] + args.backends[: rep % len(args.backends)]
        for b in order:
            cmd = [sys.executable, __file__, "--child", "--backend", b, "--pool", args.pool, "--k", str(args.k)]
            if args.numpy_from:
                cmd += ["--numpy-from", args.numpy_from]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            results[b].append(json.loads(out.strip().splitlines()[-1]))
    if args.check_reference:
        for b, runs in results.items():
            print(b, runs[0]["anchors"])
        return
    x_mb = args.rows * args.dim * 4 / 2**20
    med = {b: float(np.median([r["seconds"] for r in runs])) for b, runs in results.items()}
    best_inertia = min(r["inertia"] for runs in results.values() for r in runs)
    fastest = min(med.values())
    print(f"pool {args.rows} x {args.dim} float32 ({x_mb:.0f} MB; a float64 copy: {2 * x_mb:.0f} MB), k={args.k}, "
          f"1 thread, {args.reps} reps, load {os.getloadavg()[0]:.1f}")
    print("seconds per rep: " + "; ".join(f"{b} {[round(r['seconds'], 1) for r in runs]}" for b, runs in results.items()))
    print("| k-means | seconds (median) | vs fastest | inertia vs best | peak extra memory |")
    print("|---|---|---|---|---|")
    for b, runs in results.items():
        extra = max(r["extra_mb"] for r in runs)
        print(f"| {b} | {med[b]:.1f} | {med[b] / fastest:.1f}x | +{100 * (runs[0]['inertia'] / best_inertia - 1):.2f}% "
              f"| {extra:.0f} MB ({extra / x_mb:.2f}x the embeddings) |")
    if "numpy" in results and "sklearn-1run" in results:
        ratio = np.median([n["seconds"] / s["seconds"] for n, s in zip(results["numpy"], results["sklearn-1run"])])
        print(f"median per-rep ratio numpy / sklearn-1run: {ratio:.2f}")

if __name__ == "__main__":
    main()
