"""The real thing, as users run it: train.py in subprocesses, single process, 2 CPU processes, multirun."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import free_port, run_train, shared_paths

SMALL = ["selection.budget=32", "sft.max_length=128", "dpo.max_length=128"]
SMALL_POOL = "data.pool=[{path: ${paths.shared_data}/instruct/llamafactory_alpaca_en_demo.json, limit: 64}]"


def _manifest(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "manifest.json").read_text())


def _small_preference(shared_data: Path) -> str:
    return f"data.preference=[{{path: {shared_data}/preference/llamafactory_dpo_en_demo.json, limit: 16}}]"


def test_tiny_recipe_end_to_end_then_skips(tiny_run):
    args, _, run_dir = tiny_run  # recipe=tiny, select + sft + dpo + eval, budget 32 (conftest.py)

    select = run_dir / "select"
    table = pd.read_parquet(select / "scores.parquet")
    assert len(table) == 300 and table["selected"].sum() == 32
    assert sorted(table.loc[table["selected"], "rank"]) == list(range(32))
    selected = [json.loads(line) for line in (select / "selected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in selected] == list(table.sort_values("rank").query("selected")["id"])
    assert (select / "report.md").read_text().startswith("# Selection report: random")

    for stage in ("sft", "dpo"):
        manifest = _manifest(run_dir, stage)
        assert manifest["status"] == "complete" and manifest["world_size"] == 1
        assert manifest["metrics"]["global_steps"] > 0
        assert (run_dir / stage / "model" / "config.json").is_file()
        assert not (run_dir / stage / "checkpoints").exists()
    card = (run_dir / "sft" / "model" / "README.md").read_text()
    assert _manifest(run_dir, "select")["fingerprint"] in card  # the card says where the data came from
    assert _manifest(run_dir, "dpo")["inputs"]["upstream"]["sft"] == _manifest(run_dir, "sft")["fingerprint"]

    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 3  # select, sft, dpo
    assert all(list(r.glob("run-*.wandb")) for r in wandb_runs)

    again = run_train(args)
    assert again.returncode == 0, again.stderr[-4000:]
    log = again.stdout + again.stderr
    assert all(f"stage {s}: unchanged" in log for s in ("select", "sft", "dpo", "eval"))


def test_two_cpu_processes_really_run_with_world_size_two(tmp_path, shared_data):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    # deita: scoring shared out (24 rows in chunks of 8), the tau filter on rank 0 and broadcast; sizes cut to
    # what the assertions need (the fixed cost of starting three processes dominates what is left)
    args = ["recipe=tiny", "logger=none", "selection=deita", *shared_paths(tmp_path, shared_data), "selection.budget=16",
            "sft.max_length=128", "dpo.max_length=128", "selection.chunk_rows=8", "selection.scorer.max_length=128",
            "selection.embedder.max_length=128", _small_preference(shared_data),
            "data.pool=[{path: ${paths.shared_data}/instruct/llamafactory_alpaca_en_demo.json, limit: 24}]"]
    result = run_train(args, launcher=launcher, env={"ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    for stage in ("select", "sft", "dpo"):
        assert _manifest(run_dir, stage)["world_size"] == 2
    assert _manifest(run_dir, "sft")["distributed_type"] == "DistributedType.MULTI_CPU"
    assert _manifest(run_dir, "dpo")["distributed_type"] == "DistributedType.MULTI_CPU"
    logs = {rank: (run_dir / "logs" / f"rank{rank}.log").read_text() for rank in (0, 1)}  # one file per rank
    assert "[rank 1]" in logs[1] and "rank 1 of 2" in logs[1] and "[rank 0]" not in logs[1]
    assert "stage select: done" in logs[0] and "stage dpo: done" in logs[0]
    assert _manifest(run_dir, "select")["selected_rows"] == 16
    hydra_log = (run_dir / "deita.log").read_text()  # Hydra's file is the main rank's alone
    assert "rank 0 of 2" in hydra_log and "rank 1 of 2" not in hydra_log


def test_multirun_writes_one_deterministic_dir_per_job(select_sweep):
    _, sweep = select_sweep  # -m selection.budget=50,100 (with a hub dry run, conftest.py)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["selection.budget=100", "selection.budget=50"]
    for budget in (50, 100):
        assert _manifest(sweep / f"selection.budget={budget}", "select")["selected_rows"] == budget
    assert "| selection.budget=50 |" in (sweep / "sweep_summary.md").read_text()


@pytest.mark.slow  # 45 s under load; the default suite's 2-process run above selects with deita too
def test_deita_select_on_two_processes_writes_the_same_bytes_as_one(tmp_path, shared_data):
    """DEITA scoring, embedding and the tau filter through train.py: 2 CPU processes (the filter on the
    main one, its result broadcast) give scores.parquet and selected.jsonl byte-identical to 1 process."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection=deita", "selection.budget=24",
            "selection.chunk_rows=16", SMALL_POOL]
    outputs = {}
    for world, launch in ((1, None), (2, launcher)):
        base = tmp_path / f"world{world}"
        result = run_train([*args, *shared_paths(base, shared_data)], launcher=launch, env={"ACCELERATE_USE_CPU": "1"})
        assert result.returncode == 0, result.stderr[-4000:]
        select = next((base / "runs" / "tiny").iterdir()) / "select"
        assert _manifest(select.parent, "select")["world_size"] == world
        outputs[world] = {name: (select / name).read_bytes() for name in ("scores.parquet", "selected.jsonl")}
    table = pd.read_parquet(select / "scores.parquet")
    assert table["selected"].sum() == 24 and table["nn_sim"].notna().sum() == 23
    assert outputs[1] == outputs[2]
