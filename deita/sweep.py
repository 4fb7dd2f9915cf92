"""End-of-sweep summary: a table of each sweep point's overrides → final train/eval loss.

Wired as a Hydra callback in ``conf/config.yaml`` (``hydra.callbacks.sweep_summary``); it runs once after
a ``-m`` multirun and writes ``sweep_summary.md`` and ``sweep_summary.html`` (the table, and a plot of
budget against each final loss, one line per value of the other swept keys, e.g. per ``selection=``
method) into the sweep directory.
"""

from __future__ import annotations

import json
import math
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


LOSS_PANELS = (
    ("sft", "train_loss", "SFT final train loss", "loss (nats/token)"),
    ("sft", "eval_loss", "SFT eval loss (sft.eval_fraction rows)", "loss (nats/token)"),
    ("eval", "heldout_loss", "Held-out loss (pool rows not selected)", "loss (nats/token)"),
    ("dpo", "train_loss", "DPO final train loss", "loss (nats/pair)"),
)
"""(stage, manifest key, panel title, y label) of each loss the sweep plot can show; a panel is drawn only
when some job has its loss. ``train_loss``/``eval_loss`` live under the manifest's ``metrics``."""
BUDGET_KEYS = ("selection.budget", "+selection.budget")


def loss_points(job_dirs: list[Path], job_overrides: list[list[str]] | None = None) -> list[dict]:
    """Per job: ``line`` (the swept overrides other than the budget, or the selection method when only
    the budget varies), ``budget`` (rows; the rows selected when the budget is -1) and each loss of
    :data:`LOSS_PANELS` the job recorded (key ``stage/key``). Jobs without a select manifest are left out."""
    swept = varying_overrides(job_overrides) if job_overrides else [{} for _ in job_dirs]
    points = []
    for job, overrides in zip(job_dirs, swept):
        manifests = {}
        for stage in {p[0] for p in LOSS_PANELS} | {"select"}:
            path = job / stage / "manifest.json"
            if path.is_file():
                manifests[stage] = json.loads(path.read_text())
        select = manifests.get("select")
        if select is None:
            continue
        budget = select.get("budget", -1)
        others = [f"{k}={v}" for k, v in overrides.items() if k not in BUDGET_KEYS]
        method = select.get("config", {}).get("selection", {}).get("method", "?")
        point = {"line": ", ".join(others) or method,
                 "budget": budget if budget is not None and budget >= 0 else select.get("selected_rows")}
        for stage, key, _, _ in LOSS_PANELS:
            m = manifests.get(stage, {})
            value = m.get(key) if stage == "eval" else m.get("metrics", {}).get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                point[f"{stage}/{key}"] = float(value)
        points.append(point)
    return points


def loss_figure(points: list[dict]):
    """Budget against each recorded loss (one panel per loss, one line per ``line``); None when no job
    recorded a loss."""
    from deita.plotting import new_figure_row

    panels = [p for p in LOSS_PANELS if any(f"{p[0]}/{p[1]}" in pt for pt in points)]
    if not panels:
        return None
    fig, axes = new_figure_row(len(panels), max(7.0, 5.0 * len(panels)), 4.2)
    budgets = [pt["budget"] for pt in points if pt["budget"]]
    log_x = bool(budgets) and min(budgets) > 0 and max(budgets) / min(budgets) >= 10
    lines = list(dict.fromkeys(pt["line"] for pt in points))
    for ax, (stage, key, title, y_label) in zip(axes, panels):
        for line in lines:
            xy = sorted((pt["budget"], pt[f"{stage}/{key}"]) for pt in points
                        if pt["line"] == line and f"{stage}/{key}" in pt)
            if xy:
                ax.plot(*zip(*xy), marker="o", linewidth=2, label=line)
        ax.set_title(title)
        ax.set_xlabel("budget (selected rows)")
        ax.set_ylabel(y_label)
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Sweep: budget against final losses")
    return fig


def summary_html(rows: list[dict], points: list[dict]) -> str:
    """The text of ``sweep_summary.html``: the loss plot (when a job recorded a loss) and the table."""
    from deita import html as H
    from deita.plotting import png_bytes

    fig = loss_figure(points)
    body = ["<h2>Budget against final losses</h2>"]
    if fig is None:
        body.append('<p class="note">No job recorded a training or held-out loss: nothing to plot.</p>')
    else:
        body.append(H.figure(png_bytes(fig), "Sweep: budget against final losses",
                             "One line per value of the other swept keys. The held-out rows are the pool rows "
                             "each job did not select, so they differ between budgets."))
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    body += ["<h2>Jobs</h2>", H.table(columns, [[r.get(c, "") for c in columns] for r in rows])]
    return H.page("Sweep summary", body)


def failure_line(error: BaseException) -> str:
    """One line for a failed point's status cell: our own error's message, else the exception's type and text."""
    from deita.cli import SweepPointFailed

    text = str(error) if isinstance(error, SweepPointFailed) else f"{type(error).__name__}: {error}"
    text = " ".join(text.removeprefix("error: ").split()).replace("|", "\\|")
    return text if len(text) <= 300 else text[:297] + "..."


class SweepSummary(Callback):
    """Hydra callback around a ``-m`` sweep: checks every point before the first runs
    (:mod:`deita.sweep_points`; a bad point stops the sweep with exit 2 before anything ran), records each
    point's outcome, and at the end prints and writes the summary table and plot. A point that fails at run
    time is a ``failed: <error>`` row; the other points still run, and the sweep then exits non-zero (2 when
    every failure was a bad input, else 1), after writing the summary.
    """

    def __init__(self) -> None:
        self.job_dirs: list[Path] = []
        self.job_overrides: list[list[str]] = []
        self.job_errors: list[str | None] = []
        self.job_codes: list[int] = []
        self.points: int | None = None

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        import sys

        from omegaconf import OmegaConf

        from deita.distributed import env_dist
        from deita.sweep_points import check_points
        from deita.validate import ConfigError

        if config_name is None or int(env_dist().world_size) > 1:
            return  # `accelerate launch train.py -m`: every rank walks the sweep; each point checks itself
        try:
            self.points = check_points(config_name, list(OmegaConf.to_container(config.hydra.overrides.task)))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobStatus

        self.job_dirs.append(Path(HydraConfig.get().runtime.output_dir))
        self.job_overrides.append(list(getattr(job_return, "overrides", None) or []))
        failed = getattr(job_return, "status", None) == JobStatus.FAILED
        error = job_return._return_value if failed else None
        self.job_errors.append(failure_line(error) if failed else None)
        self.job_codes.append(getattr(error, "code", 1) if failed else 0)
        if failed:
            self._log_failure(error)
        if self.points is not None and len(self.job_dirs) == self.points and any(self.job_codes):
            self._end_with_failures(config)

    def _log_failure(self, error: BaseException) -> None:
        """Our errors were printed when they happened; anything else gets its traceback here (Hydra would
        print only the first failure's, after the last point)."""
        import sys
        import traceback

        from deita.cli import SweepPointFailed

        if not isinstance(error, SweepPointFailed):
            print(f"sweep point {len(self.job_dirs)} failed:\n" + "".join(traceback.format_exception(error)),
                  file=sys.stderr)

    def _end_with_failures(self, config: DictConfig) -> None:
        """After the last point, when some failed: write the summary (Hydra's sweeper would raise the first
        failure instead, before ``on_multirun_end``), name the failed points, exit non-zero."""
        import sys

        self.on_multirun_end(config)
        failed = [n for n, code in enumerate(self.job_codes, 1) if code]
        code = 2 if all(self.job_codes[n - 1] == 2 for n in failed) else 1
        print(f"error: {len(failed)} of {len(self.job_codes)} sweep points failed (point{'s' if len(failed) > 1 else ''} "
              f"{', '.join(map(str, failed))}); the others ran; see the status column of the summary", file=sys.stderr)
        sys.exit(code)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from deita.distributed import env_dist

        if not self.job_dirs or not env_dist().is_main:
            return
        rows = collect_rows(self.job_dirs, self.job_overrides)
        errors = self.job_errors + [None] * (len(rows) - len(self.job_errors))
        rows = [{"status": "ok" if error is None else f"failed: {error}", **row} for row, error in zip(rows, errors)]
        table = format_table(rows)
        sweep_dir = self.job_dirs[0].parent
        write_text_atomic(sweep_dir / "sweep_summary.md", "# Sweep summary\n\n" + table + "\n")
        write_text_atomic(sweep_dir / "sweep_summary.html",
                          summary_html(rows, loss_points(self.job_dirs, self.job_overrides)))
        print(f"\nSweep summary ({sweep_dir / 'sweep_summary.md'}):\n{table}")
