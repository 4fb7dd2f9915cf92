"""Benchmark: torch threads (1 vs 2) for DEITA scoring and SFT on SmolLM2-135M, and SFT peak memory.

Each measurement runs in its own fresh process (``--child``), so thread pools and allocator state never
carry over; the parent interleaves the configurations (A B A B ...) and prints medians. Optionally a
competing busy process (``--contend``: one core spinning, as another helper's job would) runs alongside,
which is what "a shared machine" means here.

Workloads (same inputs in every run):

* ``score``: the DEITA quality scorer over the first ``--rows`` Alpaca rows (forward passes only).
* ``select+sft``: what recipe=demo runs in one process: both DEITA scorers and the MiniLM embedder over
  the rows, then the same SFT steps; the SFT seconds compare with ``sft`` alone (state left behind).
* ``sft``: ``--steps`` optimizer steps of TRL ``SFTTrainer`` on the first Alpaca rows, batch 4 x
  ``--max-length`` tokens, with deita's trainer arguments; reports the per-step losses (the identical-output
  check between variants) and the child's peak RSS.

SFT memory variants (``--sft-variants``): ``trl`` (TRL 1.16 as deita used it before: fused LM head with
per-token entropy and top-1 accuracy), ``lean`` (deita's default now: the fused head computes only the
log-probs the loss needs, see :mod:`deita.training.lean_sft`).

    python benchmarks/bench_threads.py --workloads score sft --threads 1 2 --reps 2 --contend
    python benchmarks/bench_threads.py --workloads sft --threads 1 --sft-variants trl lean --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "instruct" / "llamafactory_alpaca_en_demo.json"


def alpaca_rows(n: int) -> list[dict]:
    """The first ``n`` Alpaca rows as canonical message rows."""
    raw = json.loads(DATA.read_text())[:n]
    rows = []
    for r in raw:
        prompt = r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}]})
    return rows


def run_score(args) -> dict:
    """Quality-score the first ``args.rows`` rows; seconds for the forward passes only."""
    from deita.models.resolve import resolve_model
    from deita.selection.scorers import DeitaScorer

    path = resolve_model("packaged:smollm2", REPO / ".cache")
    scorer = DeitaScorer("quality", path, device="cpu", max_length=512, max_tokens_per_batch=512, show_progress=False)
    turns = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in alpaca_rows(args.rows)]
    start = time.perf_counter()
    scores = scorer.score_turns(turns).scores
    return {"seconds": time.perf_counter() - start, "checksum": round(sum(scores), 6)}


def run_sft(args) -> dict:
    """``args.steps`` SFT steps of SmolLM2; seconds of ``train()``, per-step losses, peak RSS."""
    import tempfile

    from datasets import Dataset
    from omegaconf import OmegaConf
    from trl import SFTConfig

    from deita.models.resolve import resolve_model
    from deita.training import common
    from deita.training.lean_sft import sft_trainer_class

    path = resolve_model("packaged:smollm2", REPO / ".cache")
    tok = common.load_tokenizer(path, "chatml")
    model = common.load_model(path, OmegaConf.create({"dtype": "float32", "trust_remote_code": False,
                                                      "attn_implementation": None}),
                              OmegaConf.create({"load_in_4bit": False}))
    ds = Dataset.from_list(alpaca_rows(4 * args.steps))
    node = OmegaConf.create({"per_device_batch_size": 4, "global_batch_size": 4, "max_length": args.max_length,
                             "args": {"learning_rate": 5e-5, "num_train_epochs": 1, "logging_steps": 1,
                                      "save_strategy": "no", "disable_tqdm": True}})
    with tempfile.TemporaryDirectory() as out:
        kwargs = common.trainer_arguments(node, Path(out), world_size=1, seed=42, report_to="none",
                                          run_name="bench", eval_enabled=False)
        cfg = SFTConfig(**kwargs, assistant_only_loss=True)
        trainer = sft_trainer_class(args.variant == "lean")(model=model, args=cfg, train_dataset=ds,
                                                            processing_class=tok)
        start, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"seconds": seconds, "cpu_seconds": round(cpu, 1), "losses": losses,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_select_then_sft(args) -> dict:
    """What recipe=demo does in one process: both DEITA scorers and the MiniLM embedder over the rows,
    then the SFT steps; seconds of ``train()`` only (so it compares with ``sft`` run alone)."""
    from deita.models.resolve import packaged_minilm_dir, resolve_model
    from deita.selection.embedders.pool import embed_pool
    from deita.selection.scorers.pool import score_pool

    rows = alpaca_rows(args.rows)
    path = resolve_model("packaged:smollm2", REPO / ".cache")
    start = time.perf_counter()
    for kind in ("complexity", "quality"):
        score_pool(rows, kind, path, max_length=512, max_tokens_per_batch=512, device="cpu")
    embed_pool(rows, "sentence_transformers", str(packaged_minilm_dir()), max_length=512)
    select_seconds = time.perf_counter() - start
    return {**run_sft(args), "select_seconds": round(select_seconds, 1)}


WORKLOADS = {"score": run_score, "sft": run_sft, "select+sft": run_select_then_sft}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads[0])
    result = WORKLOADS[args.workload](args)
    print("RESULT " + json.dumps({**result, "threads": torch.get_num_threads()}))


def spawn(workload: str, threads: int, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--workload", workload, "--threads", str(threads),
           "--variant", variant, "--rows", str(args.rows), "--steps", str(args.steps),
           "--max-length", str(args.max_length)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=["score", "sft"], choices=list(WORKLOADS))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--sft-variants", nargs="+", default=["lean"], choices=["trl", "lean"])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8, help="rows the score workload scores")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps of the sft workload")
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--contend", action="store_true", help="also run every configuration beside one busy process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="score", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="lean", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    configs = [(w, t, v, c) for c in ([False, True] if args.contend else [False]) for w in args.workloads
               for t in args.threads for v in (args.sft_variants if "sft" in w else ["-"])]
    results: dict[tuple, list[dict]] = {c: [] for c in configs}
    print(f"load average before: {os.getloadavg()}", flush=True)
    for rep in range(args.reps):
        for cfg in configs:
            w, t, v, contend = cfg
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if contend else None
            try:
                r = spawn(w, t, v if v != "-" else "lean", args)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            results[cfg].append(r)
            print(f"rep {rep} {w} threads={t} variant={v} contended={contend}: {r['seconds']:.1f} s "
                  f"load={os.getloadavg()[0]:.1f} {json.dumps({k: r[k] for k in r if k != 'seconds'})}", flush=True)
    print("\n| workload | variant | threads | beside a busy process | median s | runs (s) | peak RSS GB | output |")
    print("|---|---|---|---|---|---|---|---|")
    for (w, t, v, contend), rs in results.items():
        secs = [r["seconds"] for r in rs]
        rss = max((r.get("peak_rss_gb", 0) for r in rs), default=0)
        out = rs[0].get("checksum", rs[0].get("losses"))
        print(f"| {w} | {v} | {t} | {'yes' if contend else 'no'} | {statistics.median(secs):.1f} | "
              f"{', '.join(f'{s:.1f}' for s in secs)} | {rss:.2f} | {out} |")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
