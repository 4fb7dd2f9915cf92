"""Budget sweeps with Hydra multirun: scoring and embedding done once and cached, the summary table,
and ``launch.num_processes`` re-launching a plain ``python train.py`` under accelerate."""

from __future__ import annotations

import json
import math
from pathlib import Path


import pytest

from deita.sweep import collect_rows, format_table, loss_figure, loss_points, summary_html, varying_overrides
from tests.helpers import free_port, run_train, shared_paths
from tests.test_report import assert_drawn, assert_self_contained, embedded_images

ALPACA = "instruct/llamafactory_alpaca_en_demo.json"


def _pool(shared_data: Path, limit: int) -> str:
    return f"data.pool=[{{path: {shared_data / ALPACA}, limit: {limit}}}]"


def _manifest(job: Path, stage: str) -> dict:
    return json.loads((job / stage / "manifest.json").read_text())


def _table(summary: Path) -> list[dict[str, str]]:
    """The markdown table of ``sweep_summary.md`` as dicts (header → cell)."""
    lines = [ln for ln in summary.read_text().splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    header, body = cells[0], cells[2:]
    assert set(lines[1].replace("|", "").split("---")) <= {""}
    return [dict(zip(header, row, strict=True)) for row in body]


# ---------------------------------------------------------------------------------------------------
# The summary table itself (hand-written manifests)
# ---------------------------------------------------------------------------------------------------

def test_varying_overrides_keep_only_swept_keys():
    jobs = [["selection.budget=8", "logger=none", "sft.lr=1"], ["selection.budget=16", "logger=none", "sft.lr=1"],
            ["selection.budget=24", "logger=none"]]
    assert varying_overrides(jobs) == [{"selection.budget": "8", "sft.lr": "1"},
                                       {"selection.budget": "16", "sft.lr": "1"},
                                       {"selection.budget": "24", "sft.lr": ""}]
    assert varying_overrides([["a=1"], ["a=1"]]) == [{}, {}]


def test_summary_rows_from_manifests(tmp_path):
    jobs = []
    for budget, loss in ((8, 2.5), (16, 2.25)):
        job = tmp_path / f"selection.budget={budget}"
        for stage, body in (("select", {"selected_rows": budget, "cache": {"hits": ["a"] * (budget > 8),
                                                                            "misses": ["a"] * (budget == 8)}}),
                            ("sft", {"metrics": {"train_loss": loss, "global_steps": 3}})):
            (job / stage).mkdir(parents=True)
            (job / stage / "manifest.json").write_text(json.dumps(body))
        jobs.append(job)
    rows = collect_rows(jobs, [["selection.budget=8", "x=1"], ["selection.budget=16", "x=1"]])
    assert rows == [
        {"selection.budget": "8", "run": "selection.budget=8", "selected": 8, "select cache hits": 0,
         "select cache misses": 1, "sft train_loss": 2.5},
        {"selection.budget": "16", "run": "selection.budget=16", "selected": 16, "select cache hits": 1,
         "select cache misses": 0, "sft train_loss": 2.25},
    ]
    (tmp_path / "s.md").write_text(format_table(rows))
    assert _table(tmp_path / "s.md")[1] == {"selection.budget": "16", "run": "selection.budget=16", "selected": "16",
                                            "select cache hits": "1", "select cache misses": "0",
                                            "sft train_loss": "2.25"}


def _job(root: Path, name: str, manifests: dict[str, dict]) -> Path:
    for stage, body in manifests.items():
        (root / name / stage).mkdir(parents=True)
        (root / name / stage / "manifest.json").write_text(json.dumps(body))
    return root / name


def test_loss_plot_has_one_line_per_method_and_a_panel_per_loss(tmp_path):
    jobs, overrides = [], []
    for method in ("deita", "random"):
        for budget in (16, 8):
            select = {"budget": budget, "selected_rows": budget, "config": {"selection": {"method": method}}}
            sft = {"metrics": {"train_loss": 3.0 - budget / 16 - (method == "deita")}}
            eval_ = {"heldout_loss": 4.0 - budget / 32}
            jobs.append(_job(tmp_path, f"{method}{budget}", {"select": select, "sft": sft, "eval": eval_}))
            overrides.append([f"selection={method}", f"selection.budget={budget}", "logger=none"])
    points = loss_points(jobs, overrides)
    assert points[0] == {"line": "selection=deita", "budget": 16, "sft/train_loss": 1.0, "eval/heldout_loss": 3.5}
    fig = loss_figure(points)
    assert [ax.get_title() for ax in fig.axes] == ["SFT final train loss", "Held-out loss (pool rows not selected)"]
    for ax in fig.axes:
        assert ax.get_xlabel() == "budget (selected rows)" and ax.get_ylabel() == "loss (nats/token)"
        lines = {line.get_label(): line.get_xydata().tolist() for line in ax.get_lines()}
        assert sorted(lines) == ["selection=deita", "selection=random"]
        assert [x for x, _ in lines["selection=random"]] == [8, 16]  # sorted by budget
    html = summary_html(collect_rows(jobs, overrides), points)
    assert_self_contained(html)
    ((_, png),) = embedded_images(html)
    assert_drawn(png)
    assert html.count("<tr>") == 1 + len(jobs)  # the table: header + one row per job


def test_budget_only_sweep_names_the_line_by_method_and_a_select_only_sweep_plots_nothing(tmp_path):
    select = lambda b: {"budget": b, "selected_rows": b, "config": {"selection": {"method": "deita"}}}
    jobs = [_job(tmp_path, str(b), {"select": select(b), "sft": {"metrics": {"train_loss": 1.0 / b}}}) for b in (8, 16)]
    points = loss_points(jobs, [[f"selection.budget={b}"] for b in (8, 16)])
    assert [p["line"] for p in points] == ["deita", "deita"]
    only_select = [_job(tmp_path / "s", str(b), {"select": select(b)}) for b in (8, 16)]
    points = loss_points(only_select, [[f"selection.budget={b}"] for b in (8, 16)])
    assert loss_figure(points) is None
    html = summary_html(collect_rows(only_select), points)
    assert "nothing to plot" in html and "<img" not in html


# ---------------------------------------------------------------------------------------------------
# Real sweeps through train.py -m
# ---------------------------------------------------------------------------------------------------

def test_budget_sweep_scores_and_embeds_once(tmp_path, shared_data):
    args = ["-m", "recipe=tiny", "selection=deita", "selection.budget=8,16,24", "stages=[select]", "logger=none",
            *shared_paths(tmp_path, shared_data), _pool(shared_data, 32),
            "selection.scorer.max_length=128", "selection.embedder.max_length=128"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    sweep = tmp_path / "runs" / "tiny"
    jobs = sorted((p for p in sweep.iterdir() if p.is_dir()), key=lambda p: _manifest(p, "select")["selected_rows"])
    assert len(jobs) == 3
    manifests = [_manifest(job, "select") for job in jobs]
    assert [m["selected_rows"] for m in manifests] == [8, 16, 24]
    # Hydra runs the jobs in override order: the first computes, the other two only read the cache
    first, *rest = manifests
    kinds = lambda keys: sorted(k.split("/")[0] for k in keys)
    assert kinds(first["cache"]["misses"]) == ["deita_complexity_scores", "deita_embeddings", "deita_quality_scores"]
    assert first["cache"]["hits"] == []
    for m in rest:
        assert m["cache"]["misses"] == [] and sorted(m["cache"]["hits"]) == sorted(first["cache"]["misses"])
    # the smaller selections are prefixes of the larger (one ranking, cut at each budget)
    ids = [[json.loads(ln)["id"] for ln in (job / "select" / "selected.jsonl").read_text().splitlines()]
           for job in jobs]
    assert ids[0] == ids[1][:8] and ids[1] == ids[2][:16]

    table = _table(sweep / "sweep_summary.md")
    assert [(r["selection.budget"], r["selected"], r["select cache hits"], r["select cache misses"])
            for r in table] == [("8", "8", "0", "3"), ("16", "16", "3", "0"), ("24", "24", "3", "0")]
    html = (sweep / "sweep_summary.html").read_text()  # no training stage: the table, no plot
    assert_self_contained(html)
    assert "<img" not in html and html.count("<tr>") == 4


@pytest.fixture(scope="module")
def sft_sweep(tmp_path_factory, shared_data):
    """One ``-m`` sweep of select + SFT over two budgets × two Adam beta1 values, in Hydra's order (8, 5),
    (8, 0.9), (16, 5), (16, 0.9): a beta1 of 5 is of the right type, which validation lets through, and torch
    refuses it when SFT builds its optimizer, so points 1 and 3 crash and points 2 and 4 train. Shared by the
    two tests below: ``(result, sweep folder)``."""
    tmp = tmp_path_factory.mktemp("sft_sweep")
    args = ["-m", "recipe=tiny", "selection.budget=8,16", "++sft.args.adam_beta1=5,0.9", "stages=[select,sft]",
            "logger=none", *shared_paths(tmp, shared_data), _pool(shared_data, 24), "sft.max_length=64",
            "sft.global_batch_size=4"]
    return run_train(args, timeout=300), tmp / "runs" / "tiny"


def test_sft_sweep_reports_train_loss_per_budget(sft_sweep):
    result, sweep = sft_sweep
    rows = _table(sweep / "sweep_summary.md")
    assert [(r["selection.budget"], r["++sft.args.adam_beta1"]) for r in rows] == [
        ("8", "5"), ("8", "0.9"), ("16", "5"), ("16", "0.9")], result.stderr[-3000:]
    table = {r["selection.budget"]: r for r in rows if r["status"] == "ok"}
    assert sorted(table) == ["16", "8"]
    trained = {}
    for job in (p for p in sweep.iterdir() if (p / "sft" / "manifest.json").is_file()):
        sft = _manifest(job, "sft")
        trained[sft["train_rows"]] = sft
    assert sorted(trained) == [8, 16]  # the crashed points left no finished SFT stage
    for budget, sft in trained.items():
        assert sft["metrics"]["global_steps"] == budget // 4 and sft["config"]["sft"]["args"]["adam_beta1"] == 0.9
        assert math.isfinite(float(table[str(budget)]["sft train_loss"]))
        assert float(table[str(budget)]["sft train_loss"]) == round(sft["metrics"]["train_loss"], 4)
    html = (sweep / "sweep_summary.html").read_text()
    assert_self_contained(html)
    ((_, png),) = embedded_images(html)
    assert_drawn(png)


@pytest.mark.slow
def test_method_sweep_plots_one_line_per_method(tmp_path, shared_data):
    args = ["-m", "recipe=tiny", "selection=random,length", "selection.budget=8,16", "stages=[select,sft,eval]",
            "logger=none", *shared_paths(tmp_path, shared_data), _pool(shared_data, 40), "sft.max_length=128",
            "sft.global_batch_size=4", "eval.limit=2"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    sweep = tmp_path / "runs" / "tiny"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    points = loss_points(jobs, [[part for part in job.name.split(",") if part.startswith("selection")] for job in jobs])
    assert sorted((p["line"], p["budget"]) for p in points) == [
        ("selection=length", 8), ("selection=length", 16), ("selection=random", 8), ("selection=random", 16)]
    assert all("sft/train_loss" in p and "eval/heldout_loss" in p for p in points)
    html = (sweep / "sweep_summary.html").read_text()
    assert_self_contained(html)
    ((_, png),) = embedded_images(html)
    assert_drawn(png)
    assert html.count("<tr>") == 5


def test_relaunch_command_round_trips_overrides_and_run_dir(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from deita.cli import accelerate_command
    from tests.helpers import compose_config

    cfg = compose_config(["recipe=tiny", "launch.num_processes=2", "launch.extra_args=[--main_process_port,29617]"])
    overrides = ["recipe=tiny", "selection.budget=8", "data.pool=[{path: /d/a.json, limit: 3}]"]
    run_dir = str(tmp_path / "runs" / "tiny" / "data.pool=[{path:_d_a.json,limit:3}],selection.budget=8")
    cmd = accelerate_command(cfg, overrides, run_dir)
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("--main_process_port") + 1] == "29617"
    passed = cmd[-(len(overrides) + 1):]  # after the script: the job's overrides, then its run dir
    assert passed[:-1] == overrides
    parsed = OverridesParser.create().parse_overrides(passed)
    assert parsed[-1].key_or_group == "hydra.run.dir" and parsed[-1].value() == run_dir


@pytest.mark.slow  # the same re-launch (CLI-set ACCELERATE_USE_CPU, world size 2 in the manifest) runs in make test as
# tests/test_wheel.py::test_installed_command_relaunches_itself_as_python_m_deita
def test_num_processes_relaunches_under_accelerate(tmp_path, shared_data):
    args = ["recipe=tiny", "launch.num_processes=2", f"launch.extra_args=[--main_process_port,{free_port()}]",
            "stages=[select]", "logger=none", "selection.budget=8", *shared_paths(tmp_path, shared_data),
            _pool(shared_data, 24)]
    # No ACCELERATE_USE_CPU here: the CLI must set it for the CPU re-launch. An empty HF_HOME: a default
    # accelerate config on this machine would choose another process layout (tests/test_relaunch.py).
    result = run_train(args, env={"HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "re-launching with 2 processes" in result.stdout + result.stderr
    (job,) = [p for p in (tmp_path / "runs" / "tiny").iterdir() if p.is_dir()]
    manifest = _manifest(job, "select")
    assert manifest["world_size"] == 2 and manifest["selected_rows"] == 8
    assert manifest["config"]["launch"]["num_processes"] == 2


# ---------------------------------------------------------------------------------------------------
# Sweeps with bad points: checked before the first runs; a point failing at run time does not stop the others
# ---------------------------------------------------------------------------------------------------

def _sweep_args(tmp_path, *overrides):
    return ["-m", "recipe=tiny", "stages=[select]", "logger=none", f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}", *overrides]


@pytest.mark.parametrize("overrides, message", [
    (["selection.budget=8,-5"], "error: sweep point 2 of 2 (selection.budget=-5): config key 'selection.budget': "
                                "must be a positive row count or -1 (all), got -5; no point was run"),
    (["stages=[select,sft]", "model.name_or_path=tiny:llama,/no/such/llama"],
     "error: sweep point 2 of 2 (model.name_or_path=/no/such/llama): model.name_or_path: /no/such/llama: no such folder"),
    (["selection.budget=8,16", "+selection.tua=1"], "error: sweep point 1 of 2 (selection.budget=8): config key "
                                                    "'selection.tua': no such key"),
])
def test_every_sweep_point_is_checked_before_the_first_runs(tmp_path, shared_data, overrides, message):
    result = run_train(_sweep_args(tmp_path, f"paths.shared_data={shared_data}", *overrides), timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "runs").exists()  # no point ran: not even a run dir


def test_a_point_failing_at_run_time_is_recorded_and_the_others_run(tmp_path, shared_data):
    """The bad record lies past preflight's head, so the point passes the checks and fails in its select
    stage; the point after it still runs, the summary has both, and the sweep exits 2."""
    good = {"instruction": "q", "output": "a"}
    bad = tmp_path / "late_bad.jsonl"
    bad.write_text("".join(json.dumps({**good, "instruction": f"q{i}"}) + "\n" for i in range(100)) + '{"instruction": "x"}\n')
    fine = tmp_path / "good.jsonl"
    fine.write_text("".join(json.dumps({**good, "instruction": f"g{i}"}) + "\n" for i in range(40)))
    result = run_train(_sweep_args(tmp_path, "selection.budget=8", f"data.pool.0.path={bad},{fine}"), timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert f"error: {bad}: record 100 (line 101): field 'output'" in result.stderr
    assert "error: 1 of 2 sweep points failed (point 1); the others ran" in result.stderr
    rows = _table(tmp_path / "runs" / "tiny" / "sweep_summary.md")
    assert [r["data.pool.0.path"] for r in rows] == [str(bad), str(fine)]
    assert rows[0]["status"].startswith(f"failed: {bad}: record 100 (line 101)") and rows[0]["selected"] == ""
    assert rows[1]["status"] == "ok" and rows[1]["selected"] == "8"
    assert (tmp_path / "runs" / "tiny" / "sweep_summary.html").is_file()


def test_a_point_that_crashes_is_recorded_with_its_traceback_and_the_others_run(sft_sweep):
    """A point whose SFT stage crashes with a plain exception (the sweep above: Adam beta1 of 5) prints its
    traceback when it fails, is a failed row, and the next point trains; the sweep exits 1 (not a bad-input
    error)."""
    result, sweep = sft_sweep
    assert result.returncode == 1, result.stderr[-3000:]
    assert "sweep point 1 failed:\nTraceback (most recent call last):" in result.stderr
    assert "sweep point 3 failed:\nTraceback (most recent call last):" in result.stderr
    assert "error: 2 of 4 sweep points failed (points 1, 3); the others ran" in result.stderr
    rows = _table(sweep / "sweep_summary.md")
    assert [r["++sft.args.adam_beta1"] for r in rows] == ["5", "0.9", "5", "0.9"], rows
    for failed in (rows[0], rows[2]):
        assert failed["status"].startswith("failed: ValueError: Invalid beta parameter at index 0: 5"), failed
        assert failed["sft train_loss"] == ""
    assert rows[1]["status"] == rows[3]["status"] == "ok" and float(rows[1]["sft train_loss"]) > 0
