"""The select stage applies the budget once, says when a selection is short, and stops on an empty one.

The CLI paths run ``train.py`` in subprocesses, as users run it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from deita.selection.base import SelectionResult
from deita.selection.stage import apply_budget, shortfall_messages
from tests.helpers import run_train, shared_paths

POOL = "instruct/llamafactory_alpaca_en_demo.json"


def _pool(shared_data: Path, limit: int) -> str:
    return f"data.pool=[{{path: {shared_data / POOL}, limit: {limit}}}]"


def _cfg(budget: int, stages: list[str], per_device: int = 4):
    return OmegaConf.create({"stages": stages, "selection": {"method": "m", "budget": budget},
                             "sft": {"per_device_batch_size": per_device}})


def _result(ranked: int) -> SelectionResult:
    return SelectionResult(table={}, ranking=list(range(ranked)), shortfall=f"{ranked} rows pass the rule")


def test_apply_budget_is_a_prefix_of_the_ranking():
    ranking = [4, 2, 7, 0]
    assert apply_budget(ranking, 2) == [4, 2]
    assert apply_budget(ranking, 10) == ranking and apply_budget(ranking, -1) == ranking
    assert apply_budget(ranking, 0) == []
    with pytest.raises(ValueError, match="selection.budget"):
        apply_budget(ranking, -2)


@pytest.mark.parametrize(
    "budget,ranked,stages,error,warning",
    [
        (10, 20, ["select", "sft"], None, None),  # the budget binds: nothing to say
        (-1, 20, ["select", "sft"], None, None),
        (10, 6, ["select", "sft"], None, "select: m selected 6 rows, fewer than selection.budget=10: 6 rows pass the rule"),
        (10, 3, ["select", "sft"], "select: m selected 3 rows, but sft needs 4 for one full batch "
                                   "(sft.per_device_batch_size=4): 3 rows pass the rule", None),
        (2, 20, ["select", "sft"], "select: m selected 2 rows, but sft needs 4 for one full batch "
                                   "(sft.per_device_batch_size=4): selection.budget=2 keeps 2 rows; raise it", None),
        (10, 3, ["select"], None, "select: m selected 3 rows, fewer than selection.budget=10: 3 rows pass the rule"),
        (-1, 0, ["select"], "select: m selected no rows: 0 rows pass the rule", None),
    ],
)
def test_shortfall_messages(budget, ranked, stages, error, warning):
    result = _result(ranked)
    selected = apply_budget(result.ranking, budget)
    assert shortfall_messages(_cfg(budget, stages), result, selected, 20) == (error, warning)


def test_a_short_selection_warns_in_report_manifest_and_log(tmp_path, shared_data):
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection.budget=30", _pool(shared_data, 20),
            *shared_paths(tmp_path, shared_data)]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    select = next((tmp_path / "runs" / "tiny").iterdir()) / "select"
    manifest = json.loads((select / "manifest.json").read_text())
    warning = "select: random selected 20 rows, fewer than selection.budget=30: the pool has 20 rows"
    assert manifest["selected_rows"] == 20 and manifest["budget"] == 30 and manifest["warnings"] == [warning]
    assert f"- **shortfall**: {warning}" in (select / "report.md").read_text()
    log_lines = (result.stdout + result.stderr).splitlines()
    from deita.summary import RULE

    before_summary = log_lines[:log_lines.index(RULE)] if RULE in log_lines else log_lines  # the run summary closes the log
    assert before_summary[-1].endswith(f"run finished; stage select warned: {warning}")


def test_an_empty_selection_stops_the_run_with_the_methods_reason(tmp_path, shared_data, tiny_llama):
    args = ["recipe=tiny", "logger=none", "stages=[select,sft]", "selection=nuggets", "selection.threshold=1.0",
            f"selection.model={tiny_llama}", "selection.anchors.method=random", "selection.anchors.k=3",
            _pool(shared_data, 8), *shared_paths(tmp_path, shared_data)]
    result = run_train(args)
    assert result.returncode == 2, result.stderr[-4000:]
    message = ("error: select: nuggets selected no rows: 0 of 8 rows have golden score > 1.0; "
               "lower selection.threshold or use top_k (report: ")
    assert message in result.stderr and "Traceback" not in result.stderr
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    assert not (run_dir / "select").exists() and not (run_dir / "sft").exists()  # nothing looks finished
    partial = next(run_dir.glob(".select.partial-*"))
    assert "- **shortfall**: select: nuggets selected no rows" in (partial / "report.md").read_text()
