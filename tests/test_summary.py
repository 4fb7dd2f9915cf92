"""The run summary (deita/summary.py) and the metrics it reads (deita/training/common.final_metrics)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from deita.summary import summary_lines
from deita.training.common import final_metrics


def test_final_metrics_first_and_last_loss_and_preference_figures():
    history = [{"loss": 2.5, "step": 1}, {"loss": 2.0, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
               {"loss": 1.5, "rewards/accuracies": 0.75, "rewards/margins": 0.125},
               {"eval_loss": 1.9}, {"train_loss": 2.0}]
    trainer = SimpleNamespace(state=SimpleNamespace(log_history=history, global_step=3))
    assert final_metrics(trainer) == {"first_logged_loss": 2.5, "last_logged_loss": 1.5, "train_loss": 2.0,
                                      "eval_loss": 1.9, "rewards/accuracies": 0.75, "rewards/margins": 0.125,
                                      "global_steps": 3}


def _manifests() -> dict[str, dict]:
    return {
        "select": {"wall_seconds": 200.4, "pool_rows": 80, "selected_rows": 40, "budget": 40,
                   "method_report": {"scored_rows": 80, "rejected_by_tau": 3, "tau": 0.9, "scanned": 43,
                                     "timings": {"score_s": 150.2, "embed_s": 9.6, "filter_s": 0.01}}},
        "sft": {"wall_seconds": 90.0, "train_rows": 40, "trained_rows": 40,
                "metrics": {"first_logged_loss": 1.25, "last_logged_loss": 0.875, "global_steps": 5}},
        "dpo": {"wall_seconds": 60.0, "train_pairs": 16, "trained_pairs": 16,
                "metrics": {"first_logged_loss": 0.6931, "last_logged_loss": 0.69, "global_steps": 2,
                            "rewards/accuracies": 0.625, "rewards/margins": 0.0123}},
        "eval": {"wall_seconds": 10.0, "heldout_loss": 1.5, "heldout_rows": 16, "heldout_tokens": 900,
                 "model_stage": "dpo", "prompt_sets": {}},
    }


def test_summary_lines_per_stage_figures_and_paths(tmp_path: Path):
    run = tmp_path / "run"
    for stage in ("sft", "dpo"):
        (run / stage / "model").mkdir(parents=True)
        (run / stage / "model" / "config.json").write_text("{}")
    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    text = "\n".join(summary_lines(run, _manifests(), skipped={"select"}, total_seconds=360.2))
    assert "select  unchanged  80 pool rows, 80 scored, 40 selected (budget 40), 3 rejected by tau=0.9 in 43 scanned (score 150 s, embed 10 s, filter 0 s)" in text
    assert "sft          90 s  40 of 40 rows trained, 5 steps, loss 1.25 → 0.875" in text
    assert "16 of 16 pairs trained, 2 steps, loss 0.6931 → 0.69, reward accuracy 0.625, margin 0.0123" in text
    assert "held-out loss 1.5 over 16 rows (900 tokens) of the dpo model" in text
    assert "total      360 s" in text
    assert f"selected data  {run / 'select' / 'selected.jsonl'}" in text
    assert f"report         {run / 'select' / 'report.md'}" in text
    assert f"sft model      {run / 'sft' / 'model'}" in text and f"dpo model      {run / 'dpo' / 'model'}" in text
    assert f"W&B            {run / 'wandb'} (1 offline runs" in text
    (run / "select").mkdir()
    (run / "select" / "report.html").write_text("<html></html>")
    assert f"report         {run / 'select' / 'report.html'}" in "\n".join(summary_lines(run, _manifests()))
