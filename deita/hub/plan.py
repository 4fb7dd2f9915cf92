"""What a push uploads: repo names, the staged files and cards, and the plan (repo, type, files).

Everything here is local and real (the cards are rendered, the parquet written); only
:func:`deita.hub.remote.upload` talks to the Hub. The plan covers every finished artifact of the run
directory whose lineage is current (a stage built from the upstream artifacts now in the folder):
``select/`` becomes the dataset repo, each ``<stage>/model`` a model repo.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from deita.io import write_json_atomic

DATA_PARQUET = "data/train-00000-of-00001.parquet"
MAX_NAME = 96  # the Hub's limit on a repo name (the part after the namespace)


@dataclass
class RepoUpload:
    """One repo to push: its id and type, its visibility at creation, and its files."""

    repo_id: str
    repo_type: str
    """'dataset' or 'model'."""
    private: bool
    files: dict[str, str]
    """Path in the repo → local file."""
    commit_message: str


def check_repo_prefix(prefix: str | None) -> str:
    """``prefix`` when it is ``ORG/NAME`` in the Hub's repo-id alphabet, else ValueError saying why."""
    if not prefix:
        raise ValueError("is required with hub.push=true: give it as ORG/NAME (repos ORG/NAME-data, ORG/NAME-sft, ...)")
    if prefix.count("/") != 1:
        raise ValueError(f"must be ORG/NAME (one '/'), got {prefix!r}")
    for part in prefix.split("/"):
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?", part) or "--" in part or ".." in part:
            raise ValueError(f"{prefix!r}: {part!r} may hold only letters, digits, '-', '_', '.', "
                             "must start and end with a letter or digit, and have no '--' or '..'")
    return prefix


def sweep_point_slug(dirname: str) -> str:
    """A sweep point's override dirname shortened for a repo name: keys lose their dotted prefix and every
    run of other characters becomes one '-' (``selection.budget=16,sft.max_length=128`` →
    ``budget-16-max_length-128``)."""
    short = re.sub(r"(?:[A-Za-z0-9_]+\.)+(?=[A-Za-z0-9_]+=)", "", dirname)
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", short)
    slug = re.sub(r"\.{2,}", ".", slug)
    return re.sub(r"-{2,}", "-", slug).strip("-._")


def repo_id(prefix: str, kind: str, sweep_point: str | None = None) -> str:
    """``ORG/NAME-<kind>``, or ``ORG/NAME-<sweep point>-<kind>`` for a ``-m`` sweep point; a point too long
    for the Hub's 96-character names is cut and tagged with a hash of its full dirname (names stay unique)."""
    namespace, name = check_repo_prefix(prefix).split("/")
    if sweep_point is None:
        full = f"{name}-{kind}"
    else:
        slug = sweep_point_slug(sweep_point) or "default"
        full = f"{name}-{slug}-{kind}"
        if len(full) > MAX_NAME:
            tag = hashlib.sha1(sweep_point.encode()).hexdigest()[:8]
            room = MAX_NAME - len(name) - len(kind) - len(tag) - 3
            full = f"{name}-{slug[:max(room, 0)].rstrip('-._')}-{tag}-{kind}".replace("--", "-")
    if len(full) > MAX_NAME:
        raise ValueError(f"repo name {full!r} is longer than the Hub's {MAX_NAME} characters; shorten hub.repo_prefix")
    return f"{namespace}/{full}"


def reproduce_command(recipe: str, overrides: list[str]) -> str:
    """The command that re-makes this run's artifacts: ``python train.py recipe=... <overrides>``.

    Hydra's own and the ``hub.*`` overrides are left out: they do not change what the stages produce.
    """
    kept = [o for o in overrides if not re.match(r"[~+]*(hydra|hub)[.=]", o)]
    if not any(o.startswith("recipe=") for o in kept):
        kept.insert(0, f"recipe={recipe}")
    return " ".join(["python", "train.py", *map(shlex.quote, kept)])


def current_stages(run_dir: Path) -> dict[str, dict]:
    """Finished stages of ``run_dir`` whose upstream fingerprints match the upstream artifacts now there,
    upstream first. A stage left from an earlier run of a since re-run upstream is left out."""
    manifests = {}
    for path in sorted(run_dir.glob("*/manifest.json")):
        manifests[path.parent.name] = json.loads(path.read_text())
    current: dict[str, dict] = {}
    pending = dict(manifests)
    while pending:
        ready = [name for name, m in pending.items()
                 if all(up in current or up not in pending for up in m["inputs"].get("upstream", {}))]
        if not ready:
            break
        for name in sorted(ready):
            manifest = pending.pop(name)
            upstream = manifest["inputs"].get("upstream", {})
            if all(up in current and current[up]["fingerprint"] == fp for up, fp in upstream.items()):
                current[name] = manifest
    return current


def dataset_rows(select_dir: Path, scores) -> list[dict]:
    """The selected canonical rows in selection order, each with its ``rank`` and the method's scalar scores
    (from ``scores``, the stage's per-row table)."""
    from deita.data.readers import read_jsonl
    from deita.selection.report import numeric_columns

    rows = read_jsonl(select_dir / "selected.jsonl")
    columns = ["rank", *numeric_columns(scores)]
    by_id = scores.set_index("id")[columns].to_dict("index")
    out = [{**row, **{c: v for c, v in by_id[row["id"]].items() if c not in row}} for row in rows]
    keys = list(dict.fromkeys(k for row in out for k in row))  # Dataset.from_list keeps the first row's keys only:
    return [{k: row.get(k) for k in keys} for row in out]  # rows without an Alpaca split get null there


def stage_dataset(select_dir: Path, manifest: dict, out: Path, *, repo: str, private: bool, command: str,
                  license: str | None) -> RepoUpload:
    """Write the dataset repo's parquet and card into ``out``; its plots and reports are uploaded in place."""
    import pandas as pd
    import pyarrow.parquet as pq
    from datasets import Dataset

    from deita.hub.cards import dataset_card

    scores = pd.read_parquet(select_dir / "scores.parquet")
    (out / DATA_PARQUET).parent.mkdir(parents=True, exist_ok=True)
    # datasets' Arrow table carries the features in its schema metadata, so the Hub reads the types back
    pq.write_table(Dataset.from_list(dataset_rows(select_dir, scores)).data.table, out / DATA_PARQUET)
    files = {DATA_PARQUET: out / DATA_PARQUET}
    plots = {f"plots/{p.name}": p for p in sorted((select_dir / "plots").glob("*.png"))}
    reports = {name: select_dir / name for name in ("report.html", "report.md") if (select_dir / name).is_file()}
    card = dataset_card(repo_id=repo, select_manifest=manifest, scores=scores,
                        command=command, plots=list(plots), reports=list(reports), license=license)
    card.save(out / "README.md")
    files.update({**plots, **reports, "README.md": out / "README.md"})
    method = manifest["config"]["selection"]["method"]
    return RepoUpload(repo, "dataset", private, {k: str(v) for k, v in sorted(files.items())},
                      f"deita: {manifest['selected_rows']} rows selected by {method}")


def stage_model(stage_dir: Path, manifest: dict, out: Path, *, repo: str, private: bool, base_model_id: str | None,
                datasets: list[str], license: str | None) -> RepoUpload:
    """Write the model repo's card into ``out``; the model's own files are uploaded in place."""
    from deita.hub.cards import model_card

    out.mkdir(parents=True, exist_ok=True)
    card = model_card(stage=stage_dir.name, record=manifest, config=manifest["config"], versions=manifest["versions"],
                      repo_id=repo, base_model_id=base_model_id, datasets=datasets, license=license)
    card.save(out / "README.md")
    model_dir = stage_dir / "model"
    files = {str(p.relative_to(model_dir)): str(p) for p in sorted(model_dir.rglob("*")) if p.is_file()}
    files["README.md"] = str(out / "README.md")
    trainer = manifest.get("trainer", stage_dir.name)
    return RepoUpload(repo, "model", private, dict(sorted(files.items())), f"deita: {stage_dir.name} model ({trainer})")


def plan_push(run_dir: Path, out: Path, *, prefix: str, private: bool = True, license: str | None = None,
              command: str, sweep_point: str | None = None) -> list[RepoUpload]:
    """Stage every current artifact of ``run_dir`` into ``out`` and return the uploads, upstream first."""
    from deita.models.resolve import hub_model_id

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    plan: list[RepoUpload] = []
    pushed: dict[str, str] = {}  # stage → repo id
    for stage, manifest in current_stages(run_dir).items():
        stage_dir = run_dir / stage
        if stage == "select":
            repo = repo_id(prefix, "data", sweep_point)
            plan.append(stage_dataset(stage_dir, manifest, out / "data", repo=repo, private=private,
                                      command=command, license=license))
        elif (stage_dir / "model").is_dir():
            repo = repo_id(prefix, stage, sweep_point)
            base_stage = manifest.get("base_stage")
            base = pushed.get(base_stage) if base_stage else hub_model_id(manifest.get("base_model", ""))
            hub_sources = [entry["hub"] for entry in manifest["inputs"].get("data", []) if "hub" in entry]
            datasets = [pushed["select"]] if "select" in pushed else []
            plan.append(stage_model(stage_dir, manifest, out / stage, repo=repo, private=private, base_model_id=base,
                                    datasets=datasets + hub_sources, license=license))
        else:
            continue
        pushed[stage] = repo
    return plan


def write_plan(plan: list[RepoUpload], path: Path, *, command: str) -> None:
    """``plan.json``: the command and, per repo, its id, type, visibility, commit message and files."""
    write_json_atomic(path, {"command": command, "repos": [asdict(r) for r in plan]})
