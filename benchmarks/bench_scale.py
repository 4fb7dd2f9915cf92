"""Benchmark: DEITA selection at pool scale, 10,000 rows at tau 0.9 from N synthetic rows x 1024, one process.

Phases, each timed, for every pool size in ``--n`` (default 1,000,000):

- generate: a synthetic pool written in chunks straight to disk, never all in RAM: N x D embeddings as a
  ``.npy`` (float32 or ``--dtype float16``) and N precomputed scores (see :func:`make_chunk` for its
  clusters and near-duplicate families). Its own process.
- sort: the score order of the precomputed scores.
- filter: the streamed exact greedy (:func:`deita.selection.filters.greedy_diverse`) over the
  memory-mapped embeddings, ``--budget`` rows at ``--tau``.
- write: the selected rows as ``selected.jsonl`` and the per-pool-row table as ``scores.parquet``, as the
  select stage writes them.

sort + filter are one swappable function, :func:`select_rows` (a later change routes this through the select
stage with precomputed inputs); sort, filter and write run in one process. Every process runs under
``/usr/bin/time -v`` (peak RSS, wall time); the select process also reports its ``ru_maxrss`` after each
phase. With ``--check-max-n`` the selection is re-run on the embeddings loaded into memory (a third process)
and must be identical. The pool files live in a temporary folder (``--workdir``) and are deleted after each
size. The embeddings file is in the page cache when the select process reads it (it was just written).

Usage: python benchmarks/bench_scale.py --n 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _markdown import command_line, emit  # benchmarks/, the script's folder

TOPICS = 2000
"""Topic centres shared by the whole pool; family bases are drawn around them (cosine 0.5-0.8)."""


# ---------------------------------------------------------------------------------- generate


def _noise(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    """Random directions of about unit norm (float32 normal / sqrt(D))."""
    return rng.standard_normal((rows, dim), dtype=np.float32) * np.float32(1.0 / np.sqrt(dim))


def make_chunk(rng: np.random.Generator, centres: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` synthetic pool rows: (float32 embeddings [rows, D], float64 scores [rows]).

    Rows come in near-duplicate *families* (sizes geometric, mean 2): a family base lies at cosine 0.5-0.8
    to one of the topic centres (so bases of one topic are ~0.25-0.64 apart, below tau 0.9), and each member
    lies at cosine 0.93-0.995 to its base, so two members are ~0.87-0.99 apart, mostly above 0.9; 3% of
    members are exact copies of their family's first member. Rows are scaled by 0.5-2 (normalisation
    matters). Scores mimic DEITA's complexity x quality (product of two U(1, 6)) per family, plus N(0, 0.05)
    per member, so near-duplicates sit close together in score order, as rewordings of one sample do; the
    share rejected by tau therefore does not depend on N. Rows are shuffled within the chunk.
    """
    dim = centres.shape[1]
    sizes = rng.geometric(0.5, size=rows)
    n_fam = int(np.searchsorted(np.cumsum(sizes), rows)) + 1
    fam = np.repeat(np.arange(n_fam), sizes[:n_fam])[:rows]
    cos_b = rng.uniform(0.5, 0.8, n_fam).astype(np.float32)
    base = cos_b[:, None] * centres[rng.integers(0, len(centres), n_fam)]
    base += np.sqrt(1 - cos_b**2)[:, None] * _noise(rng, n_fam, dim)
    cos_m = rng.uniform(0.93, 0.995, rows).astype(np.float32)
    emb = _noise(rng, rows, dim)
    emb *= np.sqrt(1 - cos_m**2)[:, None]
    emb += cos_m[:, None] * base[fam]
    first = np.r_[0, np.flatnonzero(np.diff(fam)) + 1]  # first row of each family
    copy = np.flatnonzero(rng.random(rows) < 0.03)
    emb[copy] = emb[first[fam[copy]]]
    emb *= rng.uniform(0.5, 2.0, rows).astype(np.float32)[:, None]
    fam_score = rng.uniform(1, 6, n_fam) * rng.uniform(1, 6, n_fam)
    scores = fam_score[fam] + rng.normal(0, 0.05, rows)
    perm = rng.permutation(rows)
    return emb[perm], scores[perm]


def generate_pool(workdir: Path, n: int, dim: int, dtype: str, seed: int, chunk_rows: int = 8192) -> dict:
    """Write ``emb.npy`` (N x D, ``dtype``) and ``scores.npy`` (N float64) to ``workdir`` chunk by chunk.

    The ``.npy`` header comes from ``open_memmap``; the rows are appended with plain file writes, so no page
    of the file is ever mapped into this process. Returns the paths and the embeddings file size.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb_path, scores_path = workdir / "emb.npy", workdir / "scores.npy"
    header = np.lib.format.open_memmap(emb_path, mode="w+", dtype=dtype, shape=(n, dim))
    offset = header.offset
    del header
    scores = np.empty(n, dtype=np.float64)
    with open(emb_path, "r+b") as f:
        f.seek(offset)
        for c, lo in enumerate(range(0, n, chunk_rows)):
            rows = min(chunk_rows, n - lo)
            emb, sc = make_chunk(np.random.default_rng([seed, c]), centres, rows)
            f.write(memoryview(np.ascontiguousarray(emb, dtype=dtype)).cast("B"))
            scores[lo : lo + rows] = sc
    np.save(scores_path, scores)
    return {"emb": str(emb_path), "scores": str(scores_path), "emb_bytes": emb_path.stat().st_size}


# ---------------------------------------------------------------------------------- select (swappable)


def select_rows(scores_path: str, emb_path: str, budget: int, tau: float, block_size: int, device: str) -> dict:
    """The select phase: score order, then the streamed greedy over the memory-mapped embeddings.

    Returns ``kept`` (pool indices in selection order), ``nn_sim``, the filter's counts, and the seconds
    and ``ru_maxrss`` (kB, peak so far) after each of its phases ("sort", "filter").
    """
    from deita.selection.filters import greedy_diverse
    from deita.selection.ranking import score_order

    out: dict = {"seconds": {}, "rss_kb": {}}
    t0 = time.perf_counter()
    scores = np.load(scores_path)
    order = score_order(scores)
    _phase_done(out, "sort", t0)
    t0 = time.perf_counter()
    emb = np.load(emb_path, mmap_mode="r")
    res = greedy_diverse(emb, order, tau=tau, budget=budget, block_size=block_size, device=device)
    _phase_done(out, "filter", t0)
    out.update(kept=res.kept, nn_sim=res.nn_sim, scores=scores, scanned=res.scanned, rejected=res.rejected,
               rejected_at=res.rejected_at)
    return out


def _phase_done(out: dict, phase: str, t0: float) -> None:
    out["seconds"][phase] = time.perf_counter() - t0
    out["rss_kb"][phase] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def synthetic_row(i: int) -> dict:
    """The canonical row (``id``, ``messages``) standing in for pool row ``i``."""
    return {"id": f"syn-{i:07d}", "messages": [{"role": "user", "content": f"Synthetic instruction {i}."},
                                               {"role": "assistant", "content": f"Synthetic answer {i}."}]}


def write_selection(workdir: Path, sel: dict) -> None:
    """The write phase: ``selected.jsonl`` (selected rows in order) and ``scores.parquet`` (one row per pool
    row: score, selected, rank, nn_sim), as the select stage writes them."""
    import pandas as pd

    from deita.data.loading import write_jsonl

    kept, n = sel["kept"], sel["scores"].size
    write_jsonl([synthetic_row(int(i)) for i in kept], workdir / "selected.jsonl")
    rank = np.full(n, -1, dtype=np.int64)
    rank[kept] = np.arange(kept.size)
    nn_sim = np.full(n, np.nan, dtype=np.float32)
    nn_sim[kept] = sel["nn_sim"]
    pd.DataFrame({"row": np.arange(n), "score": sel["scores"], "selected": rank >= 0, "rank": rank,
                  "nn_sim": nn_sim}).to_parquet(workdir / "scores.parquet", index=False)


# ---------------------------------------------------------------------------------- phases as processes


def _phase_generate(a: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    info = generate_pool(Path(a.workdir), a.n[0], a.dim, a.dtype, a.seed)
    return {**info, "seconds": {"generate": time.perf_counter() - t0}}


def _phase_select(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    workdir = Path(a.workdir)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sel = select_rows(str(workdir / "scores.npy"), str(workdir / "emb.npy"), a.budget, a.tau, a.block_size,
                      a.device)
    t0 = time.perf_counter()
    write_selection(workdir, sel)
    _phase_done(sel, "write", t0)
    np.save(workdir / "kept.npy", sel["kept"])
    return {"seconds": sel["seconds"], "rss_kb": {"imports": rss_start, **sel["rss_kb"]},
            "kept": int(sel["kept"].size), "scanned": sel["scanned"], "rejected": sel["rejected"]}


def _phase_check(a: argparse.Namespace) -> dict:
    """The same selection from the embeddings loaded into memory; identical to the streamed one?"""
    import torch

    from deita.selection.filters import greedy_diverse
    from deita.selection.ranking import score_order

    torch.set_num_threads(a.threads)
    workdir = Path(a.workdir)
    emb = np.load(workdir / "emb.npy")
    order = score_order(np.load(workdir / "scores.npy"))
    res = greedy_diverse(emb, order, tau=a.tau, budget=a.budget, block_size=a.block_size, device=a.device)
    return {"identical": bool(np.array_equal(res.kept, np.load(workdir / "kept.npy")))}


PHASES = {"generate": _phase_generate, "select": _phase_select, "check": _phase_check}


def _run_phase(phase: str, a: argparse.Namespace, workdir: Path, n: int) -> dict:
    """Run one phase of this script in a fresh process under ``/usr/bin/time -v``; its JSON + RSS + wall."""
    args = [sys.executable, __file__, "--phase", phase, "--workdir", str(workdir), "--n", str(n),
            "--dim", str(a.dim), "--dtype", a.dtype, "--seed", str(a.seed), "--budget", str(a.budget),
            "--tau", str(a.tau), "--block-size", str(a.block_size), "--device", a.device, "--threads", str(a.threads)]
    p = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench_scale: phase {phase} at N={n} failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["peak_rss_kb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    out["process_wall_s"] = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    return out


def measure(a: argparse.Namespace, n: int) -> dict:
    """Generate a pool of ``n`` rows, select from it, check it (small ``n``), delete it; the figures."""
    root = Path(a.workdir) if a.workdir else None
    if root:
        root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"deita-bench-scale-{n}-", dir=root))
    try:
        gen = _run_phase("generate", a, workdir, n)
        print(f"N={n} generate: {gen}", flush=True)
        sel = _run_phase("select", a, workdir, n)
        print(f"N={n} select: {sel}", flush=True)
        check = _run_phase("check", a, workdir, n) if n <= a.check_max_n else None
        if check is not None:
            print(f"N={n} check: {check}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"n": n, "gen": gen, "sel": sel, "check": check}


def _gb(kb: float) -> str:
    return f"{kb / 1024**2:.2f}"


def table(a: argparse.Namespace, figs: list[dict], load: tuple[float, float], cmd: str) -> str:
    """The markdown report."""
    import torch

    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    lines = [
        f"# Selection at pool scale: {a.budget} rows at tau {a.tau} from N x {a.dim} synthetic rows, one process",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {mem_gb:.0f} GB RAM, torch {torch.__version__} "
        f"({a.threads} thread(s)), device `{a.device}`, block size {a.block_size}; load average {load[0]:.1f} at "
        f"start, {load[1]:.1f} at end (shared machine: seconds are noisy, peak RSS is not).",
        "",
        "| N | stored | embeddings file (GB) | generate (s) | generate peak RSS (GB) | sort (s) | filter (s) | "
        "write (s) | select process wall (s) | select peak RSS (GB) | RSS after imports / sort / filter / write (GB) "
        "| rows scanned | rejected by tau | filter ms per 1K scanned | identical to in-memory run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        g, s = f["gen"], f["sel"]
        rss = " / ".join(_gb(s["rss_kb"][k]) for k in ("imports", "sort", "filter", "write"))
        check = "not run" if f["check"] is None else ("yes" if f["check"]["identical"] else "NO")
        lines.append(
            f"| {f['n']:,} | {a.dtype} | {g['emb_bytes'] / 1e9:.2f} | {g['seconds']['generate']:.1f} | "
            f"{_gb(g['peak_rss_kb'])} | {s['seconds']['sort']:.2f} | {s['seconds']['filter']:.1f} | "
            f"{s['seconds']['write']:.2f} | {s['process_wall_s']:.1f} | **{_gb(s['peak_rss_kb'])}** | {rss} | "
            f"{s['scanned']:,} | {s['rejected']:,} ({s['rejected'] / max(1, s['scanned']):.0%}) | "
            f"{1e3 * s['seconds']['filter'] / max(1, s['scanned']) * 1e3:.0f} | {check} |")
    lines += [
        "",
        "- generate: chunks of 8,192 rows (near-duplicate families around 2,000 topic centres, see "
        "`make_chunk`) appended to the `.npy` with plain writes; its own process.",
        "- select process (one process, under `/usr/bin/time -v`): sort = `score_order` of the precomputed "
        "scores; filter = `greedy_diverse` over `np.load(emb.npy, mmap_mode='r')` (blocks read with explicit "
        "file reads, the map is never touched); write = `selected.jsonl` + `scores.parquet` (one row per "
        "pool row). Peak RSS is `/usr/bin/time -v`'s maximum resident set size; the per-phase column is "
        "`ru_maxrss` (peak so far) after each phase.",
        "- identical to in-memory run: the same selection from the embeddings loaded fully into RAM "
        f"(third process, run for N <= {a.check_max_n:,}).",
        "- the embeddings file was in the page cache when the filter read it (just written); a cold read "
        "from disk adds I/O time, not memory.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Parse arguments; as the driver, measure every ``--n`` and write the markdown; else run one phase."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[1_000_000], help="pool sizes (rows)")
    p.add_argument("--dim", type=int, default=1024, help="embedding dimension")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored embedding dtype")
    p.add_argument("--budget", type=int, default=10_000, help="rows to select")
    p.add_argument("--tau", type=float, default=0.9, help="cosine similarity threshold")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--block-size", type=int, default=1024, help="filter candidates per block")
    p.add_argument("--device", default="cpu", help="torch device of the filter")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fair on a shared machine)")
    p.add_argument("--check-max-n", type=int, default=100_000,
                   help="re-run the selection in memory and compare, for pools up to this size")
    p.add_argument("--workdir", default=None, help="folder for the temporary pool files (default: system temp)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "scale.md"), help="markdown output")
    p.add_argument("--phase", choices=sorted(PHASES), default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.phase:
        print(json.dumps(PHASES[a.phase](a)))
        return
    load0 = os.getloadavg()[0]
    figs = [measure(a, n) for n in a.n]
    cmd = command_line(__file__, sys.argv[1:])
    text = table(a, figs, (load0, os.getloadavg()[0]), cmd)
    emit(text, a.out)


if __name__ == "__main__":
    main()
