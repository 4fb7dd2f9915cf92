"""The greedy Repr filter: fast blocked path vs the one-at-a-time oracle, hand-worked cases, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deita.selection import filters
from deita.selection.filters import (
    GreedyResult,
    greedy_diverse,
    greedy_diverse_naive,
    l2_normalize,
)
from deita.selection.ranking import score_order

BLOCKS = [1, 2, 7, 64, 1024]
TAU = 0.9


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _at_sim(u, rng, sim):
    """A vector whose cosine with unit ``u`` is ``sim`` (up to float32 rounding)."""
    w = rng.normal(size=u.shape)
    w -= (w @ u) * u
    w = _unit(w)
    return sim * u + math.sqrt(max(0.0, 1.0 - sim * sim)) * w


def _tricky_pool(seed=0, dim=48):
    """Clusters, near-duplicates at tau +- tiny deltas, exact duplicates, tied scores and NaN scores."""
    rng = np.random.default_rng(seed)
    centres = [_unit(rng.normal(size=dim)) for _ in range(12)]
    rows = []
    for c in centres:
        rows.append(c)
        for _ in range(20):  # cluster members, sims spread around tau
            rows.append(_at_sim(c, rng, rng.uniform(0.8, 0.97)))
        for d in (3e-8, 1e-7, 3e-7, 1e-6, 1e-5, 1e-3):  # just above and just below tau
            rows.append(_at_sim(c, rng, TAU + d))
            rows.append(_at_sim(c, rng, TAU - d))
        rows.append(c.copy())  # exact duplicate of the centre
        rows.append(3.0 * c)  # same direction, other norm
    emb = np.asarray(rows, dtype=np.float32)
    scores = np.round(rng.uniform(1, 6, size=len(rows)), 1)  # many ties at one decimal
    scores[rng.choice(len(rows), 15, replace=False)] = np.nan
    perm = rng.permutation(len(rows))  # interleave clusters in pool order
    return emb[perm], scores[perm]


# --------------------------------------------------------------------------------------- l2_normalize


def test_l2_normalize_unit_rows_float32():
    x = np.array([[3.0, 4.0], [0.0, -2.0]])
    y = l2_normalize(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, -1.0]], rtol=1e-7)


def test_l2_normalize_zero_row_named():
    x = np.ones((5, 3), dtype=np.float32)
    x[3] = 0
    with pytest.raises(ValueError, match="row 3 is a zero vector"):
        l2_normalize(x)


def test_l2_normalize_nonfinite_row_named():
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 has a non-finite"):
        l2_normalize(x)


@pytest.mark.parametrize("fn", [greedy_diverse_naive, greedy_diverse])
def test_greedy_zero_vector_is_an_error(fn):
    x = np.eye(4, dtype=np.float32)
    x[1] = 0
    with pytest.raises(ValueError, match="row 1 is a zero vector"):
        fn(x, [0, 1, 2, 3])


# --------------------------------------------------------------------------------------- hand-worked 5x3

HAND_EMB = np.array(
    [
        [1.0, 0.0, 0.0],  # 0  score 3.0
        [0.0, 1.0, 0.0],  # 1  score 5.0
        [1.0, 1.0, 0.0],  # 2  score 4.0   cos(2,1) = 1/sqrt2       = 0.7071
        [0.0, 1.0, 0.2],  # 3  score 2.0   cos(3,1) = 1/sqrt(1.04)  = 0.9806 > 0.9
        [1.0, 0.0, 0.5],  # 4  score 1.0   cos(4,0) = 1/sqrt(1.25)  = 0.8944
    ]
)
HAND_SCORES = [3.0, 5.0, 4.0, 2.0, 1.0]


def test_hand_worked_example():
    order = score_order(HAND_SCORES)
    assert order.tolist() == [1, 2, 0, 3, 4]
    # tau 0.9: keep 1; keep 2 (0.707); keep 0 (max 0.707 to 2); reject 3 (0.981 to 1); keep 4 (0.894 to 0)
    assert greedy_diverse_naive(HAND_EMB, order, 0.9).tolist() == [1, 2, 0, 4]
    # tau 0.7: 2 rejected (0.707 > 0.7); 0 kept (cos 0 to 1); 3 rejected; 4 rejected (0.894 to 0)
    assert greedy_diverse_naive(HAND_EMB, order, 0.7).tolist() == [1, 0]
    assert greedy_diverse_naive(HAND_EMB, order, 0.9, budget=3).tolist() == [1, 2, 0]
    for b in BLOCKS:
        r = greedy_diverse(HAND_EMB, order, 0.9, block_size=b)
        assert r.kept.tolist() == [1, 2, 0, 4]
        assert r.rejected == 1 and r.scanned == 5
        np.testing.assert_allclose(r.nn_sim[1:], [1 / math.sqrt(2), 1 / math.sqrt(2), 1 / math.sqrt(1.25)], atol=1e-6)
        assert np.isnan(r.nn_sim[0])
        assert greedy_diverse(HAND_EMB, order, 0.7, block_size=b).kept.tolist() == [1, 0]
        r3 = greedy_diverse(HAND_EMB, order, 0.9, budget=3, block_size=b)
        assert r3.kept.tolist() == [1, 2, 0] and r3.rejected == 0 and r3.scanned == 3


# --------------------------------------------------------------------------------------- oracle vs fast


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("budget", [-1, 1, 25, 10_000])
def test_fast_matches_oracle_every_block_size(seed, budget):
    emb, scores = _tricky_pool(seed)
    order = score_order(scores)
    assert order.size == len(scores) - 15
    want = greedy_diverse_naive(emb, order, TAU, budget)
    assert 0 < want.size < order.size or budget == 1
    for b in BLOCKS:
        got = greedy_diverse(emb, order, TAU, budget, block_size=b)
        np.testing.assert_array_equal(got.kept, want, err_msg=f"block_size={b}")
        assert got.scanned == got.kept.size + got.rejected
        if budget == -1 or budget > want.size:
            assert got.scanned == order.size
        else:  # stopped at the budget: the last scanned candidate is the budget-th kept one
            assert got.scanned == int(np.flatnonzero(order == want[-1])[0]) + 1


def test_borderline_pairs_exercise_the_exact_rule(monkeypatch):
    """The tricky pool really has similarities inside the uncertainty band, in both implementations."""
    calls = {"n": 0}
    real = filters._exact_sim

    def counting(a, b):
        calls["n"] += 1
        return real(a, b)

    monkeypatch.setattr(filters, "_exact_sim", counting)
    emb, scores = _tricky_pool(0)
    order = score_order(scores)
    greedy_diverse_naive(emb, order, TAU)
    assert calls["n"] >= 5
    calls["n"] = 0
    greedy_diverse(emb, order, TAU, block_size=7)
    assert calls["n"] >= 10


def test_strict_greater_than_at_exactly_tau():
    """A similarity exactly equal to float32(tau) is kept; the next float32 above is rejected."""
    tau32 = float(np.float32(TAU))
    e1 = np.array([1.0, 0.0], dtype=np.float32)
    found = {}
    # x = (t, y): normalised first coordinate is the defined similarity with e1; search y so it hits tau32
    for target, name in ((tau32, "equal"), (float(np.nextafter(np.float32(TAU), np.float32(2))), "above")):
        for step in range(-2000, 2000):
            y = np.float32(math.sqrt(1 - target * target) + step * 1e-9)
            x = np.array([target, y], dtype=np.float32)
            sim = np.float32(filters._exact_sim(l2_normalize(e1[None])[0], l2_normalize(x[None])[0]))
            if float(sim) == target:
                found[name] = x
                break
    assert set(found) == {"equal", "above"}
    emb = np.stack([e1, found["equal"], found["above"]])
    for fn in (greedy_diverse_naive, lambda *a: greedy_diverse(*a).kept):
        assert fn(emb, [0, 1], TAU).tolist() == [0, 1]  # sim == tau: not > tau, kept
        assert fn(emb, [0, 2], TAU).tolist() == [0]  # one float32 ulp above tau: rejected


def test_exact_at_any_block_size_unlike_reference_batches():
    """a~b and b~c but a!~c: greedy keeps a, rejects b, keeps c. The reference with b, c in one batch would
    also reject c (similar to the *rejected* b); ours keeps it at every block size."""
    rng = np.random.default_rng(3)
    a = _unit(rng.normal(size=16))
    w = _unit(_at_sim(a, rng, 0.0))
    b = 0.95 * a + math.sqrt(1 - 0.95**2) * w  # cos(a,b)=0.95
    c = 0.80 * a + math.sqrt(1 - 0.80**2) * w  # cos(a,c)=0.80, cos(b,c)=0.76+0.19=0.95...
    assert _unit(b) @ _unit(c) > TAU and a @ _unit(c) < TAU
    emb = np.stack([a, b, c]).astype(np.float32)
    assert greedy_diverse_naive(emb, [0, 1, 2]).tolist() == [0, 2]
    for bs in BLOCKS:
        assert greedy_diverse(emb, [0, 1, 2], block_size=bs).kept.tolist() == [0, 2]


def test_smaller_budget_is_prefix_of_larger():
    emb, scores = _tricky_pool(1)
    order = score_order(scores)
    big = greedy_diverse(emb, order, TAU, budget=40, block_size=64).kept
    small = greedy_diverse(emb, order, TAU, budget=24, block_size=7).kept
    assert big.size == 40
    np.testing.assert_array_equal(small, big[:24])
    np.testing.assert_array_equal(greedy_diverse_naive(emb, order, TAU, 24), big[:24])


def test_budget_zero_and_larger_than_pool():
    emb, scores = _tricky_pool(0)
    order = score_order(scores)
    assert greedy_diverse_naive(emb, order, TAU, 0).size == 0
    r = greedy_diverse(emb, order, TAU, 0)
    assert r.kept.size == 0 and r.scanned == 0
    everything = greedy_diverse(emb, order, TAU, -1).kept
    np.testing.assert_array_equal(greedy_diverse(emb, order, TAU, 10**6).kept, everything)


def test_exact_duplicates_and_tau_one():
    """Strict '>' with tau=1.0 rejects nothing (cosine never exceeds 1; rounding excess is clamped), so
    exact duplicates survive; any tau below 1 (here 0.9999) removes them."""
    rng = np.random.default_rng(5)
    base = rng.normal(size=(6, 10)).astype(np.float32)
    emb = np.concatenate([base, base, 2.5 * base])  # each direction three times
    order = np.arange(18)
    for fn in (greedy_diverse_naive, lambda *a: greedy_diverse(*a, block_size=4).kept):
        assert fn(emb, order, 1.0).tolist() == list(range(18))
        assert fn(emb, order, 0.9999).tolist() == list(range(6))


def test_nn_sim_matches_float64_recomputation():
    emb, scores = _tricky_pool(0)
    order = score_order(scores)
    r = greedy_diverse(emb, order, TAU, block_size=7)
    x = l2_normalize(emb).astype(np.float64)
    for i in range(1, r.kept.size):
        want = np.max(x[r.kept[:i]] @ x[r.kept[i]])
        assert abs(float(r.nn_sim[i]) - min(want, 1.0)) < 1e-5
    assert (r.nn_sim[1:] <= np.float32(TAU) + 1e-6).all()
    assert isinstance(r, GreedyResult)


def test_input_validation():
    emb = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="unique"):
        greedy_diverse(emb, [0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        greedy_diverse_naive(emb, [0, 3])
    with pytest.raises(ValueError, match="budget"):
        greedy_diverse(emb, [0, 1], budget=-2)
    with pytest.raises(ValueError, match="block_size"):
        greedy_diverse(emb, [0, 1], block_size=0)
    with pytest.raises(ValueError, match="tau"):
        greedy_diverse(emb, [0, 1], tau=float("nan"))


def test_torch_input_and_precision_restored():
    import torch

    torch.set_float32_matmul_precision("high")
    try:
        r = greedy_diverse(torch.tensor(HAND_EMB), torch.tensor([1, 2, 0, 3, 4]).numpy(), 0.9)
        assert r.kept.tolist() == [1, 2, 0, 4]
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_oracle():
    emb, scores = _tricky_pool(0)
    order = score_order(scores)
    want = greedy_diverse_naive(emb, order, TAU)
    for b in BLOCKS:
        np.testing.assert_array_equal(greedy_diverse(emb, order, TAU, block_size=b, device="cuda").kept, want)


def _save_npy(tmp_path, x, name="emb.npy"):
    """``x`` saved as ``.npy`` and reopened as a read-only memory map (nothing of it read yet)."""
    path = tmp_path / name
    np.save(path, x)
    return np.load(path, mmap_mode="r")


def _mapped_rss_kb(path) -> int:
    """Resident kB of this process's mappings of ``path`` (Linux /proc/self/smaps)."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping header: addr perms offset dev inode [path]
            inside = line.rstrip().endswith(str(path))
        elif inside and head and head[0] == "Rss:":
            total += int(head[1])
    return total


@pytest.mark.parametrize("dim", [33, 48, 256])
def test_block_reads_normalise_bitwise_like_l2_normalize(tmp_path, dim):
    """A row normalised inside any gathered block (memory map or array, float32 or float16) is bit-identical
    to the same row of l2_normalize on the whole matrix: the oracle and the stream see the same vectors."""
    x = (np.random.default_rng(9).normal(size=(300, dim)) * 7).astype(np.float32)
    idx = np.random.default_rng(1).permutation(300)[:77]
    for stored in (x, x.astype(np.float16)):
        full = l2_normalize(stored)
        for src in (stored, _save_npy(tmp_path, stored)):
            with filters._RowReader(src) as reader:
                got, err = filters._unit_rows(reader.take(idx), idx)
            assert err is None and np.array_equal(got, full[idx])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_memmap_input_matches_oracle(tmp_path, dtype):
    """The streamed filter on a memory-mapped .npy (float32 or float16 storage) selects exactly what the
    oracle selects on the stored values, at every block size, and reads rows with explicit file reads."""
    emb, scores = _tricky_pool(0)
    stored = emb.astype(dtype)
    order = score_order(scores)
    want = greedy_diverse_naive(stored, order, TAU)
    assert np.array_equal(want, greedy_diverse_naive(stored.astype(np.float32), order, TAU))
    mm = _save_npy(tmp_path, stored)
    assert filters._RowReader(mm)._row0 == mm.offset
    for b in BLOCKS:
        for budget in (-1, 25):
            got = greedy_diverse(mm, order, TAU, budget, block_size=b)
            np.testing.assert_array_equal(got.kept, want if budget < 0 else want[:budget], err_msg=f"block {b}")


def test_float16_storage_is_exact_for_its_own_values(tmp_path):
    """cos = 1/sqrt(1 + y^2) crosses tau 0.995 at y = 0.1003768; y = 0.100375 (float32, just below: rejected)
    rounds to float16 0.1004028 (just above: kept). Each storage is filtered exactly for its own values."""
    emb = np.array([[1.0, 0.0], [1.0, 0.100375]], dtype=np.float32)
    assert float(emb.astype(np.float16)[1, 1]) == pytest.approx(0.1004028, abs=1e-7)
    assert greedy_diverse_naive(emb, [0, 1], 0.995).tolist() == [0]
    assert greedy_diverse_naive(emb.astype(np.float16), [0, 1], 0.995).tolist() == [0, 1]
    for b in (1, 2):
        assert greedy_diverse(emb, [0, 1], 0.995, block_size=b).kept.tolist() == [0]
        assert greedy_diverse(emb.astype(np.float16), [0, 1], 0.995, block_size=b).kept.tolist() == [0, 1]
        half = _save_npy(tmp_path, emb.astype(np.float16))
        assert greedy_diverse(half, [0, 1], 0.995, block_size=b).kept.tolist() == [0, 1]


def test_memmap_views_and_copy_on_write_maps(tmp_path):
    """Row slices of a map (own byte offset, negative stride) are read from the right file positions; a
    copy-on-write map (its private edits are not in the file) is read through the map instead."""
    emb, scores = _tricky_pool(1)
    mm = _save_npy(tmp_path, emb)
    order = score_order(scores[40:])
    for view, arr in ((mm[40:], emb[40:]), (mm[::-1][: emb.shape[0] - 40], emb[::-1][: emb.shape[0] - 40])):
        assert filters._RowReader(view)._row0 is not None
        np.testing.assert_array_equal(greedy_diverse(view, order, TAU, block_size=7).kept,
                                      greedy_diverse_naive(arr, order, TAU))
    cow = np.load(tmp_path / "emb.npy", mmap_mode="c")
    cow[:] = cow[::-1]  # private edits: the file still holds the original order
    assert filters._RowReader(cow)._row0 is None
    order = score_order(scores)
    np.testing.assert_array_equal(greedy_diverse(cow, order, TAU, block_size=7).kept,
                                  greedy_diverse_naive(emb[::-1], order, TAU))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/smaps"), reason="needs Linux /proc/self/smaps")
def test_memmap_pages_stay_out_of_resident_memory(tmp_path):
    """Scanning a memory-mapped pool reads rows with explicit file reads: none of the map's pages becomes
    resident in this process (a fancy-indexed scan of the same map makes its scanned rows resident)."""
    emb = np.random.default_rng(2).normal(size=(3000, 256)).astype(np.float32)
    path = tmp_path / "pool.npy"
    np.save(path, emb)
    mm = np.load(path, mmap_mode="r")
    r = greedy_diverse(mm, np.arange(3000), 0.2, block_size=256)
    assert r.scanned == 3000
    assert _mapped_rss_kb(path) == 0
    mm[np.arange(0, 3000, 2)].sum()  # the control: fancy indexing through the map touches its pages
    assert _mapped_rss_kb(path) >= 1500 * 1024 // 1024


def test_truncated_embeddings_file_is_a_clear_error(tmp_path):
    emb, scores = _tricky_pool(0)
    mm = _save_npy(tmp_path, emb)
    os_size = (tmp_path / "emb.npy").stat().st_size
    __import__("os").truncate(tmp_path / "emb.npy", os_size - 10 * emb.shape[1] * 4)
    last = emb.shape[0] - 1
    with pytest.raises(ValueError, match=f"emb.npy: truncated, cannot read row {last}"):
        greedy_diverse(mm, [0, last], 0.9)


@pytest.mark.parametrize("block", [1, 2, 1024])
def test_rows_past_the_budget_are_not_validated(block):
    """Rows are validated as the scan reaches them, at any block size: a zero or NaN row after the budget
    is met is not an error; one the scan reaches is."""
    x = np.eye(5, dtype=np.float32)
    x[3] = 0
    x[4, 0] = np.nan
    assert greedy_diverse(x, [0, 1, 2, 3, 4], budget=3, block_size=block).kept.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="row 3 is a zero vector"):
        greedy_diverse(x, [0, 1, 2, 3, 4], budget=4, block_size=block)
    with pytest.raises(ValueError, match="row 4 has a non-finite value"):
        greedy_diverse(x, [0, 1, 4, 3], block_size=block)


@pytest.mark.parametrize("budget", [-1, 25])
def test_rejected_at_records_every_rejection_by_scan_position(budget):
    emb, scores = _tricky_pool(0)
    order = score_order(scores)
    want = greedy_diverse_naive(emb, order, TAU, budget)
    pos = {int(p): s for s, p in enumerate(order)}
    kept_pos = [pos[int(i)] for i in want]
    scanned = kept_pos[-1] + 1 if budget > 0 else order.size
    expected = sorted(set(range(scanned)) - set(kept_pos))
    for b in BLOCKS:
        r = greedy_diverse(emb, order, TAU, budget, block_size=b)
        assert r.rejected_at.dtype == np.int64 and r.rejected_at.tolist() == expected
        curve = r.rejected_by(np.arange(1, r.scanned + 1))
        assert curve[-1] == r.rejected and (np.diff(curve) >= 0).all()
        assert curve.tolist() == [sum(1 for p in expected if p < s) for s in range(1, r.scanned + 1)]
