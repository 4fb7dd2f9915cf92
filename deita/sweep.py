"""End-of-sweep summary: a table of each sweep point's overrides → final train/eval loss.

Wired as a Hydra callback in ``conf/config.yaml`` (``hydra.callbacks.sweep_summary``); it runs once after
a ``-m`` multirun and writes ``sweep_summary.md`` into the sweep directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deita.io import write_text_atomic


def varying_overrides(job_overrides: list[list[str]]) -> list[dict[str, str]]:
    """Per job, the ``key: value`` of each override whose value differs between jobs (the swept keys)."""
    parsed = [dict(o.split("=", 1) for o in overrides if "=" in o) for overrides in job_overrides]
    keys = [k for k in dict.fromkeys(k for p in parsed for k in p) if len({p.get(k) for p in parsed}) > 1]
    return [{k: p.get(k, "") for k in keys} for p in parsed]


def metric_columns(stage: str, manifest: dict) -> dict[str, Any]:
    """A training stage's final ``train_loss`` / ``eval_loss`` (the default sweep columns of a stage)."""
    metrics = manifest.get("metrics", {})
    return {f"{stage} {key}": round(metrics[key], 4) for key in ("train_loss", "eval_loss") if key in metrics}


def collect_rows(job_dirs: list[Path], job_overrides: list[list[str]] | None = None) -> list[dict]:
    """One summary row per job directory: the swept overrides, then each finished stage's columns
    (its ``sweep_columns`` hook, by default :func:`metric_columns`), in pipeline order."""
    from deita import stages

    rows = []
    swept = varying_overrides(job_overrides) if job_overrides else [{} for _ in job_dirs]
    for job, overrides in zip(job_dirs, swept):
        row: dict[str, Any] = {**overrides, "run": job.name}
        for stage in stages.pipeline_order():
            manifest_path = job / stage.name / "manifest.json"
            if not manifest_path.is_file():
                continue
            manifest = json.loads(manifest_path.read_text())
            row.update(stage.sweep_columns(manifest) if stage.sweep_columns else metric_columns(stage.name, manifest))
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A markdown table over the union of the rows' keys."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


class SweepSummary(Callback):
    """Hydra callback: after a multirun, print and write the budget → loss table."""

    def __init__(self) -> None:
        self.job_dirs: list[Path] = []
        self.job_overrides: list[list[str]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        self.job_dirs.append(Path(HydraConfig.get().runtime.output_dir))
        self.job_overrides.append(list(getattr(job_return, "overrides", None) or []))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from deita.distributed import env_dist

        if not self.job_dirs or not env_dist().is_main:
            return
        table = format_table(collect_rows(self.job_dirs, self.job_overrides))
        sweep_dir = self.job_dirs[0].parent
        write_text_atomic(sweep_dir / "sweep_summary.md", "# Sweep summary\n\n" + table + "\n")
        print(f"\nSweep summary ({sweep_dir / 'sweep_summary.md'}):\n{table}")
