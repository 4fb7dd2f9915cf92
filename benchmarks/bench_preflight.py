"""Preflight cost: the head check of each data source (deita/preflight.py) vs the full read the stage does.

Writes a synthetic Alpaca pool of ``--rows`` rows as .jsonl, .json and .parquet, then times, per file and
interleaved, (a) ``check_source`` (the first 64 records normalised) and (b) ``load_rows`` over the whole
file (what the select stage reads), in one process; and the whole preflight of ``recipe=demo`` (its pool,
preference file and the packaged models). The first rows of both reads must be identical.

    python benchmarks/bench_preflight.py --rows 300000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._markdown import command_line, emit  # noqa: E402


def write_pool(folder: Path, rows: int) -> dict[str, Path]:
    """The same ``rows`` Alpaca records as .jsonl, .json and .parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"instruction": f"Explain item {i} in a sentence or two, please.", "input": "",
                "output": f"Item {i} is " + "a fairly ordinary thing " * (1 + i % 8)} for i in range(rows)]
    paths = {"jsonl": folder / "pool.jsonl", "json": folder / "pool.json", "parquet": folder / "pool.parquet"}
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in records))
    paths["json"].write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), paths["parquet"])
    return paths


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def demo_preflight_seconds(shared_data: str) -> float:
    """The whole preflight of ``recipe=demo`` (stages select, sft, dpo)."""
    from tests.helpers import compose_config

    from deita.preflight import preflight

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["recipe=demo", f"paths.shared_data={shared_data}", f"paths.runs_dir={tmp}/runs",
                              f"paths.cache_dir={tmp}/cache"])
        return preflight(cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--shared-data", default=os.environ.get("DEITA_SHARED_DATA", "../shared/data"))
    parser.add_argument("--out", default="benchmarks/results/preflight.md")
    args = parser.parse_args()
    from deita.data.loading import load_rows
    from deita.preflight import HEAD_RECORDS, check_source

    demo = demo_preflight_seconds(args.shared_data)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, path in write_pool(Path(tmp), args.rows).items():
            head_s, _ = timed(lambda: check_source({"path": str(path)}, "sft", "data.pool[0].path"))
            full_s, full = timed(lambda: load_rows(str(path), kind="sft"))
            head = load_rows(str(path), kind="sft", head=HEAD_RECORDS)
            same = head.rows == full.rows[:HEAD_RECORDS]
            size = path.stat().st_size / 1e6
            lines.append(f"| .{kind} | {len(full.rows):,} | {size:.0f} MB | {head_s:.3f} | {full_s:.1f} | "
                         f"{full_s / head_s:,.0f}x | {'yes' if same else 'NO'} |")
    text = "\n".join([
        "## Preflight: the head check of a data source vs the stage's full read",
        "",
        f"`{command_line(__file__, sys.argv[1:])}` (one process, {os.environ.get('OMP_NUM_THREADS', 'default')} "
        "OMP threads). Preflight normalises the first "
        f"{HEAD_RECORDS} records of each file; the select stage reads and normalises them all.",
        "",
        f"Whole preflight of `recipe=demo` (pool, preference file, SmolLM2 and MiniLM references): **{demo:.2f} s**.",
        "",
        "| file | rows | size | preflight (s) | full read (s) | ratio | first rows identical |",
        "|---|---|---|---|---|---|---|",
        *lines,
        "",
    ])
    emit(text, args.out)


if __name__ == "__main__":
    main()
