"""Benchmark: the whole select stage with the pool as Python rows (``data.pool_store=memory``) vs a memory-mapped
Arrow file (``data.pool_store=arrow``), through ``train.py``, one process.

For each N in ``--n``: a pool of N Alpaca rows (``llamafactory_alpaca_en_demo.json`` cycled, each with a distinct
id and instruction, written as ``.jsonl``, as in SCALING.md), precomputed scores (``scores.parquet``: ``id``,
``complexity`` = bench_scale's synthetic score, ``quality`` = 1) and N x 1024 float32 embeddings (``emb.npy`` +
``emb.ids.json``; bench_scale's near-duplicate families, so the filter scans ~17K rows for 10K kept). Then
``train.py recipe=tiny logger=none stages=[select] selection=deita selection.budget=10000 selection.tau=0.9``
with those inputs, under ``/usr/bin/time -v``, four times in this order: memory, arrow (cold: converts the
pool), arrow (warm: maps the file the cold run wrote), memory again. Each run has a fresh runs folder; the
cache folder is shared within N (so the embeddings' remembered hash serves every run after the first; the
pool files are removed before the cold run). Checks: ``scores.parquet`` and ``selected.jsonl`` byte-identical
in all four runs.

Usage: python benchmarks/bench_pool_store.py --n 100000 300000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _markdown import command_line, emit  # benchmarks/, the script's folder

REPO = Path(__file__).resolve().parents[1]
RUNS = (("memory", "first"), ("arrow", "cold"), ("arrow", "warm"), ("memory", "again"))
"""(data.pool_store, label) of the runs at each N, in order."""


def write_inputs(workdir: Path, n: int, alpaca: Path, seed: int) -> None:
    """``pool.jsonl``, ``scores.parquet``, ``emb.npy`` and ``emb.ids.json`` for ``n`` rows in ``workdir``."""
    import pandas as pd

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import generate_pool

    src = json.loads(alpaca.read_text())
    ids = [f"r{i}" for i in range(n)]
    with open(workdir / "pool.jsonl", "w") as f:
        for i in range(n):
            row = dict(src[i % len(src)], id=ids[i])
            row["instruction"] += f" #{i}"
            f.write(json.dumps(row) + "\n")
    gen = generate_pool(workdir, n, 1024, "float32", seed)
    scores = np.load(gen["scores"])
    pd.DataFrame({"id": ids, "complexity": scores, "quality": np.ones(n)}).to_parquet(workdir / "scores.parquet", index=False)
    (workdir / "emb.ids.json").write_text(json.dumps(ids))
    os.unlink(gen["scores"])


def run_select(workdir: Path, store: str, label: str, cache: Path, budget: int, tau: float) -> dict:
    """One ``train.py`` select run under ``/usr/bin/time -v``: peak RSS, wall, the stage's seconds, output bytes."""
    runs = workdir / f"runs-{store}-{label}"
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", f"selection.budget={budget}",
            f"selection.tau={tau}", f"data.pool=[{{path: {workdir / 'pool.jsonl'}}}]", f"data.pool_store={store}",
            f"selection.precomputed.scores={workdir / 'scores.parquet'}",
            f"selection.precomputed.embeddings={workdir / 'emb.npy'}", f"paths.runs_dir={runs}", f"paths.cache_dir={cache}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench_pool_store: {store} ({label}) failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", p.stderr).group(1)
    [stage] = [d for d in runs.rglob("select") if (d / "manifest.json").is_file()]
    manifest = json.loads((stage / "manifest.json").read_text())
    out = {name: (stage / name).read_bytes() for name in ("scores.parquet", "selected.jsonl")}
    shutil.rmtree(runs)
    return {"store": store, "label": label, "peak_gb": rss_kb / 1024**2,
            "wall_s": sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":")))),
            "stage_s": manifest["wall_seconds"], "selected": manifest["selected_rows"],
            "scanned": manifest["method_report"].get("scanned"), "outputs": out}


def measure(a: argparse.Namespace, n: int) -> list[dict]:
    """Write the inputs for ``n`` rows, run the four select runs, delete the inputs; one dict per run."""
    workdir = Path(tempfile.mkdtemp(prefix=f"deita-bench-pool-{n}-", dir=a.workdir))
    try:
        write_inputs(workdir, n, Path(a.alpaca), a.seed)
        cache, figs = workdir / "cache", []
        for store, label in RUNS:
            if label == "cold":
                shutil.rmtree(cache / "pools", ignore_errors=True)
            fig = run_select(workdir, store, label, cache, a.budget, a.tau)
            fig["pool_file_gb"] = sum(p.stat().st_size for p in (cache / "pools").glob("*.arrow")) / 1e9 \
                if store == "arrow" else 0.0
            print(f"N={n} {store} ({label}): peak {fig['peak_gb']:.2f} GB, wall {fig['wall_s']:.1f} s, "
                  f"stage {fig['stage_s']:.1f} s", flush=True)
            figs.append(fig)
        pool_gb = (workdir / "pool.jsonl").stat().st_size / 1e9
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    same = all(f["outputs"] == figs[0]["outputs"] for f in figs)
    for f in figs:
        f.update(n=n, identical=same, pool_jsonl_gb=pool_gb)
    return figs


def table(figs: list[dict], cmd: str, load: tuple[float, float]) -> str:
    """The markdown report."""
    lines = [
        "## Select stage, pool as Python rows vs memory-mapped Arrow (data.pool_store), whole train.py run",
        "",
        f"Command: `{cmd}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, 1 thread; load average {load[0]:.1f} at start, "
        f"{load[1]:.1f} at end (shared machine: seconds are noisy, peak RSS is not).",
        "",
        "| N | pool .jsonl (GB) | store | run | peak RSS (GB) | process wall (s) | stage (s) | pool file (GB) | "
        "selected / scanned | outputs identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        lines.append(f"| {f['n']:,} | {f['pool_jsonl_gb']:.2f} | {f['store']} | {f['label']} | **{f['peak_gb']:.2f}** | "
                     f"{f['wall_s']:.1f} | {f['stage_s']:.1f} | {f['pool_file_gb']:.2f} | "
                     f"{f['selected']:,} / {f['scanned']:,} | {'yes' if f['identical'] else 'NO'} |")
    by_n: dict[int, dict] = {}
    for f in figs:
        by_n.setdefault(f["n"], {})[(f["store"], f["label"])] = f
    lines += ["", "| N | peak RSS memory (mean of 2) | arrow warm | arrow cold | warm / memory | stage s memory / warm |",
              "|---|---|---|---|---|---|"]
    for n, runs in by_n.items():
        mem = (runs[("memory", "first")]["peak_gb"] + runs[("memory", "again")]["peak_gb"]) / 2
        mem_s = (runs[("memory", "first")]["stage_s"] + runs[("memory", "again")]["stage_s"]) / 2
        warm, cold = runs[("arrow", "warm")], runs[("arrow", "cold")]
        lines.append(f"| {n:,} | {mem:.2f} GB | {warm['peak_gb']:.2f} GB | {cold['peak_gb']:.2f} GB | "
                     f"{warm['peak_gb'] / mem:.2f} | {mem_s:.1f} / {warm['stage_s']:.1f} |")
    lines += [
        "",
        "- peak RSS: `/usr/bin/time -v`'s maximum resident set size of the whole `train.py` process (imports, config, "
        "the stage, its writes). The Arrow file's pages read through the map count in RSS only while resident (shared, "
        "file-backed: the page cache holds one copy for every process on the node).",
        "- identical: `scores.parquet` and `selected.jsonl` byte for byte in all four runs at that N.",
        "- cold: the run that converts the pool (parses the .jsonl, writes the Arrow file); warm: a later run that maps it.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100000, 300000])
    p.add_argument("--budget", type=int, default=10000)
    p.add_argument("--tau", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpaca", default=str(Path(os.environ.get("DEITA_SHARED_DATA", REPO.parent / "shared/data")) / "instruct/llamafactory_alpaca_en_demo.json"))
    p.add_argument("--workdir", default=None, help="parent folder of the temporary inputs (default: the system's)")
    p.add_argument("--out", default=str(REPO / "benchmarks/results/pool_store.md"))
    a = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    figs = [f for n in a.n for f in measure(a, n)]
    emit(table(figs, command_line(__file__, sys.argv[1:] if argv is None else argv), (load0, os.getloadavg()[0])), a.out)


if __name__ == "__main__":
    main()
