"""Nuggets anchors: seeded k-means finds clear clusters, nearest-example rule, random draw, reference embedding."""

from __future__ import annotations

import numpy as np
import pytest

from deita.selection.nuggets.anchors import (
    kmeans,
    kmeans_anchor_indices,
    nearest_to_centers,
    random_anchor_indices,
)


def _blobs(seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.standard_normal((20, 2)) for c in centers])
    return x, np.repeat(np.arange(3), 20)


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    x, truth = _blobs()
    centers, labels = kmeans(x, 3, seed=0)
    # same partition as the truth, up to label names
    assert len({(a, b) for a, b in zip(labels, truth)}) == 3
    c2, l2 = kmeans(x, 3, seed=0)
    assert np.array_equal(centers, c2) and np.array_equal(labels, l2)
    for j in range(3):
        assert np.allclose(centers[j], x[labels == j].mean(0))


def test_nearest_to_centers_by_hand():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 6.0]])
    assert nearest_to_centers(x, np.array([[0.9, 0.0], [5.0, 5.4], [4.0, 4.0]])) == [1, 2]  # 3rd repeats 2
    idx = kmeans_anchor_indices(_blobs()[0], k=3, seed=1)
    assert len(idx) == 3 and len({i // 20 for i in idx}) == 3  # one anchor per blob


def test_random_anchors():
    a = random_anchor_indices(50, 10, seed=3)
    assert a == random_anchor_indices(50, 10, seed=3) and len(set(a)) == 10 and a == sorted(a)
    assert a != random_anchor_indices(50, 10, seed=4)
    with pytest.raises(ValueError):
        random_anchor_indices(5, 6)


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
