"""Nuggets anchors: the reference's scikit-learn k-means, the nearest-row rule, faiss, random draw, embedding."""

from __future__ import annotations

import numpy as np
import pytest

from deita.selection.nuggets.anchors import kmeans_anchor_indices, nearest_to_centers, random_anchor_indices

# The reference's KMeans(n_clusters=k, random_state=0) under scikit-learn 1.3 (its defaults, spelled out).
REFERENCE_KMEANS = {"random_state": 0, "init": "k-means++", "n_init": 10, "algorithm": "lloyd", "max_iter": 300,
                    "tol": 1e-4}

# Anchors (nearest row per centroid, centroid order) of scikit-learn 1.3.2's KMeans(n_clusters=100,
# random_state=0) on _pool(2000, 8, 40, seed=0) as float32; recorded with scikit-learn 1.3.2 + numpy 1.26.4
# on the matrix this module builds (benchmarks/bench_anchors.py --check-reference re-derives them).
SKLEARN_1_3_ANCHORS = [
    1249, 1610, 1106, 70, 285, 206, 470, 1468, 607, 941, 1028, 1374, 272, 1285, 1689, 1211, 1410, 1669, 927, 1069,
    1255, 513, 601, 1642, 146, 1739, 1422, 1706, 302, 717, 1239, 1013, 145, 855, 1060, 75, 1248, 192, 1325, 1961,
    984, 1816, 599, 1153, 355, 950, 1882, 720, 412, 1130, 1888, 1726, 1585, 1609, 1165, 1867, 1462, 603, 183, 1497,
    93, 1252, 1181, 1301, 1080, 993, 1881, 1483, 1361, 1045, 1383, 1596, 429, 132, 1829, 1237, 55, 1925, 1417, 1932,
    41, 1047, 1988, 1769, 201, 1947, 1041, 329, 1149, 1176, 546, 680, 786, 1167, 904, 95, 122, 289, 741, 1863,
]


def _pool(n, d, blobs, seed=0, dtype=np.float32):
    """``n`` rows around ``blobs`` Gaussian centres (the shape of a pool of instruction embeddings)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((blobs, d)) * 2
    return (centres[rng.integers(blobs, size=n)] + rng.standard_normal((n, d))).astype(dtype)


def _sklearn_kmeans(x, k, seed=0):
    """scikit-learn's own KMeans with the reference's settings, fitted on one thread (as ours: the thread
    count moves the last bits of a centroid)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return KMeans(n_clusters=k, **{**REFERENCE_KMEANS, "random_state": seed}).fit(x)


def _nearest_brute_force(x, centers):
    d = ((x.astype(np.float64)[:, None, :] - np.asarray(centers, np.float64)[None]) ** 2).sum(-1)
    return d.argmin(0).tolist()


def test_faithful_anchors_equal_sklearn_kmeans_with_the_reference_settings():
    from deita.selection.nuggets.kmeans import reference_kmeans

    x = _pool(300, 6, 8, dtype=np.float64)  # float64: scikit-learn 1.3 and 1.9 seed alike (see kmeans.py)
    anchors = []
    for seed in (0, 1):
        want = _sklearn_kmeans(x, 12, seed).cluster_centers_
        got = reference_kmeans(x, 12, seed)
        assert np.array_equal(got, want)
        anchors.append(nearest_to_centers(x, got))
        assert anchors[-1] == _nearest_brute_force(x, want)
    assert anchors[0] != anchors[1]  # the seed matters


def test_faithful_anchors_equal_sklearn_1_3_on_float32_embeddings():
    """On float32 data scikit-learn >= 1.8 seeds k-means++ with a float32 cumulative sum; the reference's
    scikit-learn 1.3 summed in float64. Here that changes the whole anchor set, and ours follows 1.3."""
    x = _pool(2000, 8, 40)
    assert kmeans_anchor_indices(x, 100, 0) == SKLEARN_1_3_ANCHORS
    today = _nearest_brute_force(x, _sklearn_kmeans(x, 100).cluster_centers_)
    assert today != SKLEARN_1_3_ANCHORS  # plain KMeans of the pinned scikit-learn would not reproduce it


def test_nearest_row_rule_ties_and_shared_rows(monkeypatch):
    from deita.selection.nuggets import anchors

    x = np.array([[5.0, 5.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [5.0, 6.0]], dtype=np.float32)
    centers = np.array([[0.1, 0.0], [5.0, 5.4], [4.0, 4.0], [0.9, 0.0]])
    # row 1 and row 3 are equally near center 0: the lowest index wins; centers 1 and 2 share row 0
    assert nearest_to_centers(x, centers) == [1, 0, 0, 2]  # faithful: one per centroid, repeats kept
    assert nearest_to_centers(x, centers, unique=True) == [1, 0, 2]  # clean: each row once, first kept
    monkeypatch.setattr(anchors, "BLOCK_BYTES", 16)  # one row per block: ties across blocks, same answers
    assert nearest_to_centers(x, centers) == [1, 0, 0, 2]
    y = _pool(500, 5, 7, seed=3)
    c = y[[3, 40, 41, 200]] + 0.01
    assert nearest_to_centers(y, c) == _nearest_brute_force(y, c)


def test_nearest_rows_hold_no_float64_copy_of_the_embeddings(monkeypatch):
    import tracemalloc

    from deita.selection.nuggets import anchors

    x = _pool(40_000, 64, 5)  # 10 MB float32; a float64 copy would be 20 MB
    c = x[:100].astype(np.float64)
    monkeypatch.setattr(anchors, "BLOCK_BYTES", 1 << 20)
    tracemalloc.start()
    nearest_to_centers(x, c)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes, peak  # a few 1 MB blocks and their [rows, k] distances; float64 x: 2 * x.nbytes


def test_same_partition_is_sklearns_relabelling_test():
    from deita.selection.nuggets.kmeans import _same_partition

    assert _same_partition(np.array([0, 0, 1, 2]), np.array([2, 2, 0, 1]))
    assert not _same_partition(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))


def test_faiss_kmeans_anchors():
    pytest.importorskip("faiss")
    from deita.selection.nuggets.kmeans import faiss_kmeans

    def inertia(c):
        return float(((x[:, None, :] - c[None]) ** 2).sum(-1).min(1).sum())

    x = _pool(3000, 16, 60, seed=2)  # blobs overlap: k=30 centroids are a real trade-off
    centers = faiss_kmeans(x, 30, 0)
    assert np.array_equal(centers, faiss_kmeans(x, 30, 0)) and not np.array_equal(centers, faiss_kmeans(x, 30, 1))
    assert kmeans_anchor_indices(x, 30, 0, kmeans="faiss") == _nearest_brute_force(x, centers)
    ref = inertia(_sklearn_kmeans(x, 30).cluster_centers_)
    assert ref <= inertia(centers) < 1.05 * ref  # close to the reference's 10-run optimum


def test_anchors_kmeans_config_errors(monkeypatch):
    import sys

    from deita.selection.methods.nuggets import NuggetsSelectionConfig, check_config
    from deita.validate import ConfigError

    cfg = NuggetsSelectionConfig()
    cfg.anchors.kmeans = "faiss"
    with pytest.raises(ConfigError, match=r"selection\.anchors\.kmeans.*mode=faithful"):
        check_config(cfg)
    cfg.mode, cfg.anchor_max_length = "clean", 200
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ConfigError, match=r"selection\.anchors\.kmeans.*pip install 'deita\[faiss\]'"):
        check_config(cfg)
    cfg.anchors.method = "random"  # no k-means, no faiss needed
    check_config(cfg)
    cfg.anchors.kmeans = "numpy"
    with pytest.raises(ConfigError, match=r"selection\.anchors\.kmeans.*one of \['sklearn', 'faiss'\]"):
        check_config(cfg)


def test_random_anchors():
    a = random_anchor_indices(50, 10, seed=3)
    assert a == random_anchor_indices(50, 10, seed=3) and len(set(a)) == 10 and a == sorted(a)
    assert a != random_anchor_indices(50, 10, seed=4)
    with pytest.raises(ValueError):
        random_anchor_indices(5, 6)


def test_nuggets_method_takes_the_reference_kmeans_anchors(tmp_path, tiny_llama):
    """Faithful mode end to end: the anchors are sklearn KMeans(random_state=0, n_init=10)'s on the
    reference embedding of the pool's Nuggets texts."""
    from deita.cache import ContentCache
    from deita.distributed import DistInfo
    from deita.selection.base import SELECTORS, SelectionContext
    from deita.selection.nuggets.anchors import reference_embeddings
    from deita.selection.nuggets.prompts import row_texts
    from deita.selection.stage import rank_and_cut
    from tests.test_nuggets_method import _rows

    rows = _rows()
    ctx = SelectionContext(cache=ContentCache(tmp_path / "cache"), dist=DistInfo(), data_fingerprint="fp",
                           model_resolver=lambda ref: str(tiny_llama))
    nuggets = SELECTORS.get("nuggets")
    cfg = nuggets.config_class(model="tiny", threshold=None, top_k=4)
    cfg.anchors.k, cfg.anchors.embed_max_length = 3, 64
    result, _ = rank_and_cut(nuggets(cfg), rows, ctx)

    emb = reference_embeddings(str(tiny_llama), [row_texts(r, i)[1] for i, r in enumerate(rows)], max_length=64)
    want = _nearest_brute_force(emb, _sklearn_kmeans(emb, 3).cluster_centers_)
    assert [i for i, a in enumerate(result.table["is_anchor"]) if a] == sorted(set(want))
    assert result.report["anchors"] == 3


def test_reference_embedding_includes_pads(tiny_llama):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from deita.selection.nuggets.anchors import reference_embeddings

    texts = ["Instruction:\nSay hi\nResponse:\nhi", "Instruction:\nList two numbers\nResponse:\n1 2"]
    e16 = reference_embeddings(str(tiny_llama), texts, max_length=16, batch_size=1)
    e32 = reference_embeddings(str(tiny_llama), texts, max_length=32, batch_size=2)
    assert e16.shape == (2, 64) and not np.allclose(e16, e32)  # pads change the mean: the reference quirk
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    model = AutoModel.from_pretrained(tiny_llama).eval()
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        w = model.get_input_embeddings().weight
        w[-1] = w[:-1].mean(0)
        enc = tok(texts[:1], return_tensors="pt", truncation=True, padding="max_length", max_length=16)
        want = model(**enc).last_hidden_state[0].mean(0).numpy()
    assert np.allclose(e16[0], want, atol=1e-5)


def test_faithful_faiss_anchors_stop_the_cli_with_the_key(tmp_path, shared_data):
    from tests.helpers import run_train, shared_paths

    proc = run_train(["recipe=tiny", "stages=[select]", "logger=none", *shared_paths(tmp_path, shared_data),
                      "selection=nuggets", "selection.anchors.kmeans=faiss"], timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: config key 'selection.anchors.kmeans': mode=faithful" in proc.stderr
    assert "Traceback" not in proc.stderr
