"""The block a run ends with: per stage its time and key figures, then where everything was written.

Built from the stages' manifests only (:func:`summary_lines` is a pure function of them), so a stage that
was skipped as unchanged reports the figures of the run that made it, marked "(unchanged)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RULE = "─" * 72


def _num(value: Any, digits: int = 4) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}g}"


def _select_figures(m: dict) -> str:
    report = m.get("method_report") or {}
    parts = [f"{m.get('pool_rows', '?')} pool rows"]
    if "scored_rows" in report:
        parts.append(f"{report['scored_rows']} scored")
    parts.append(f"{m.get('selected_rows', '?')} selected (budget {m.get('budget', '?')})")
    if "rejected_by_tau" in report:
        parts.append(f"{report['rejected_by_tau']} rejected by tau={report.get('tau')} "
                     f"in {report.get('scanned', '?')} scanned")
    timings = report.get("timings") or {}
    spent = " (" + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in timings.items()) + ")" if timings else ""
    return ", ".join(parts) + spent


def _training_figures(m: dict, unit: str) -> str:
    metrics = m.get("metrics") or {}
    kept_key, loaded_key = (f"trained_{unit}", f"train_{unit}")
    parts = [f"{m.get(kept_key, '?')} of {m.get(loaded_key, '?')} {unit} trained",
             f"{metrics.get('global_steps', '?')} steps",
             f"loss {_num(metrics.get('first_logged_loss'))} → {_num(metrics.get('last_logged_loss'))}"]
    if "rewards/accuracies" in metrics:
        parts.append(f"reward accuracy {_num(metrics['rewards/accuracies'], 3)}, "
                     f"margin {_num(metrics.get('rewards/margins'), 3)}")
    if "eval_loss" in metrics:
        parts.append(f"eval loss {_num(metrics['eval_loss'])}")
    return ", ".join(parts)


def _eval_figures(m: dict) -> str:
    if m.get("heldout_loss") is None:
        return m.get("heldout_note", "no held-out loss")
    parts = [f"held-out loss {_num(m['heldout_loss'])} over {m.get('heldout_rows')} rows "
             f"({m.get('heldout_tokens')} tokens) of the {m.get('model_stage')} model"]
    answered = sum(p.get("prompts", 0) for p in (m.get("prompt_sets") or {}).values())
    if answered:
        parts.append(f"{answered} prompts answered")
    return ", ".join(parts)


FIGURES = {"select": _select_figures, "sft": lambda m: _training_figures(m, "rows"),
           "dpo": lambda m: _training_figures(m, "pairs"), "orpo": lambda m: _training_figures(m, "pairs"),
           "eval": _eval_figures}
"""Stage name → its one line of figures; other stages show their time only."""


def artifact_paths(run_dir: Path, manifests: dict[str, dict]) -> list[tuple[str, Path]]:
    """``(label, path)`` of what a user opens next: the selection, its report, each model, W&B runs."""
    out: list[tuple[str, Path]] = []
    if "select" in manifests:
        out.append(("selected data", run_dir / "select" / "selected.jsonl"))
        html = run_dir / "select" / "report.html"
        out.append(("report", html if html.is_file() else run_dir / "select" / "report.md"))
    for name in manifests:
        if (run_dir / name / "model" / "config.json").is_file():
            out.append((f"{name} model", run_dir / name / "model"))
    if "eval" in manifests:
        out.append(("eval", run_dir / "eval"))
    wandb_dir = run_dir / "wandb"
    runs = sorted(p for p in wandb_dir.glob("*run-*") if p.is_dir()) if wandb_dir.is_dir() else []
    if runs:
        offline = all(p.name.startswith("offline-") for p in runs)
        note = f" ({len(runs)} offline runs; `wandb sync {wandb_dir}/offline-run-*` uploads them)" if offline else ""
        out.append(("W&B", Path(f"{wandb_dir}{note}")))
    return out


def summary_lines(run_dir: Path, manifests: dict[str, dict], skipped: set[str] = frozenset(),
                  total_seconds: float | None = None) -> list[str]:
    """The summary block's lines: one per stage (time, figures), the total, then the artifact paths."""
    lines = [RULE, f"deita run summary: {run_dir}"]
    width = max((len(n) for n in manifests), default=5)
    for name, m in manifests.items():
        secs = m.get("wall_seconds")
        when = "unchanged" if name in skipped else (f"{secs:6.0f} s" if secs is not None else "")
        figures = FIGURES.get(name, lambda _: "")(m)
        lines.append(f"  {name:<{width}}  {when:>9}  {figures}")
    if total_seconds is not None:
        lines.append(f"  {'total':<{width}}  {total_seconds:6.0f} s")
    lines.append("")
    label_width = max((len(label) for label, _ in artifact_paths(run_dir, manifests)), default=0)
    for label, path in artifact_paths(run_dir, manifests):
        lines.append(f"  {label:<{label_width}}  {path}")
    lines.append(RULE)
    return lines
