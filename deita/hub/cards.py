"""The Hub cards: a dataset card for the selection and a model card for each trained model.

Pure functions from what the run recorded (stage manifests, the per-row score table, the command) to
``huggingface_hub`` card objects: YAML metadata (``CardData``) on top, markdown below. The training stages
write their local ``model/README.md`` with :func:`model_card` too, so a model card has one builder; at push
time it is rebuilt with the Hub names (the dataset repo, the base model's repo) filled in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from huggingface_hub import DatasetCard, DatasetCardData, ModelCard, ModelCardData

# Papers linked from the cards (the Hub lists a repo under a paper linked from its card).
METHOD_PAPERS = {"deita": "2312.15685", "nuggets": "2312.10302", "ifd": "2308.12032", "superfilter": "2402.00530"}
TRAINING_PAPERS = {"dpo": "2305.18290", "orpo": "2403.07691"}
# Framework versions a model card lists, in this order, under the names people know them by.
FRAMEWORKS = (("deita", "deita"), ("trl", "TRL"), ("transformers", "Transformers"), ("torch", "PyTorch"),
              ("datasets", "Datasets"), ("peft", "PEFT"), ("accelerate", "Accelerate"), ("deepspeed", "DeepSpeed"),
              ("python", "Python"))


def card_text(data: Any, body: str) -> str:
    """A card's text: the YAML metadata between ``---`` lines, then the markdown body."""
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def markdown_table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table (``|`` in cells escaped)."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: Any) -> str:
    """A number in 4 significant digits (other values as they are)."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


SIZE_BUCKETS = ("1K", "10K", "100K", "1M", "10M", "100M", "1B", "10B", "100B", "1T")


def size_category(n_rows: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n_rows`` rows (n<1K, 1K<n<10K, ..., n>1T)."""
    digits = len(str(max(int(n_rows), 1))) - 1  # 10**digits <= n_rows < 10**(digits + 1)
    if digits < 3:
        return "n<1K"
    if digits >= 12:
        return "n>1T"
    return f"{SIZE_BUCKETS[digits - 3]}<n<{SIZE_BUCKETS[digits - 2]}"


def selection_tau(selection: dict) -> float | None:
    """The diversity threshold τ of a selection config, when the method has one and its filter is on."""
    if "tau" not in selection or not selection.get("diversity", True):
        return None
    return float(selection["tau"])


def score_summary(scores) -> list[list[str]]:
    """Per score column of the select stage's table: mean, min and max over the pool and the selection."""
    from deita.selection.report import numeric_columns

    chosen = scores[scores["selected"]]
    rows = []
    for column in numeric_columns(scores):
        pool, sel = scores[column].astype(float), chosen[column].astype(float)
        rows.append([column, *(fmt(float(getattr(s, f)())) for s in (pool, sel) for f in ("mean", "min", "max"))])
    return rows


def report_value(value: Any) -> str:
    """A method-report value in a card: numbers in 4 significant digits, dicts as ``k=v`` lists."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return json.dumps(value) if isinstance(value, list) else fmt(value)


def source_name(source: dict | str) -> str:
    """How a data source is named in a card: its file or folder name (local paths stay private) or its hub
    name. ``source`` is a path, or a source fingerprint (``{"file": ...}``, ``{"dir": ...}``, ``{"hub": ...}``)."""
    if isinstance(source, str):
        return Path(source).name if Path(source).exists() else source
    return source.get("file") or source.get("dir") or source.get("hub") or "?"


def paper_link(arxiv_id: str | None, label: str) -> str:
    return f"[{label}](https://huggingface.co/papers/{arxiv_id})" if arxiv_id else label


def dataset_card(*, repo_id: str, select_manifest: dict, scores, command: str, plots: list[str],
                 reports: list[str], license: str | None = None) -> DatasetCard:
    """The card of the selected dataset: how it was selected (method, budget, τ), from what (pool sources
    and their sizes), its scores (pool vs selected), the report's plots and the command that made it.

    ``plots`` and ``reports`` are paths inside the dataset repo (``plots/x.png``, ``report.html``).
    """
    selection = select_manifest["config"]["selection"]
    method, budget, tau = selection["method"], selection["budget"], selection_tau(selection)
    report = select_manifest.get("method_report") or {}
    n_selected, n_pool = select_manifest["selected_rows"], select_manifest["pool_rows"]
    data = DatasetCardData(
        pretty_name=repo_id.split("/")[-1], license=license, tags=list(dict.fromkeys(["deita", method])),
        task_categories=["text-generation"], size_categories=[size_category(n_selected)],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    )
    facts = [["method", paper_link(METHOD_PAPERS.get(method), f"`{method}`")],
             ["budget", "all accepted rows" if budget == -1 else f"{budget} rows"]]
    if tau is not None:
        facts.append(["τ (max cosine similarity to a kept row)", fmt(tau)])
    if "rejected_by_tau" in report:
        facts.append(["rows rejected by τ", report["rejected_by_tau"]])
    facts += [["pool rows", n_pool], ["selected rows", n_selected],
              ["malformed records skipped", select_manifest.get("skipped_records", 0)],
              ["selection fingerprint", f"`{select_manifest['fingerprint']}`"]]
    shown = ("tau", "rejected_by_tau", "pool_rows", "selected_rows")
    facts += [[key.replace("_", " "), report_value(value)] for key, value in sorted(report.items()) if key not in shown]
    entries = select_manifest["inputs"]["data"]
    sizes = list((select_manifest.get("rows_per_source") or {}).values())
    if len(sizes) != len(entries):  # (a file listed twice has one count): say nothing rather than misattribute
        sizes = ["?"] * len(entries)
    sources = [[source_name(entry), size, entry.get("limit") or "", f"`{entry.get('sha256', '')}`"]
               for entry, size in zip(entries, sizes)]
    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{n_selected} instruction rows selected by deita's `{method}` method "
        f"from a pool of {n_pool} rows, in selection order. Each row is a conversation in chat form "
        "(`messages`: a list of `{role, content}`), with its selection `rank` and the method's scores.",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'rows = load_dataset("{repo_id}", split="train")',
        "```",
        "",
        "## Selection",
        "",
        markdown_table(["", ""], facts),
        "",
        "```yaml",
        json_as_yaml(selection),
        "```",
        "",
        "## Pool sources",
        "",
        markdown_table(["source", "rows", "limit", "sha256"], sources),
        "",
        "## Scores",
        "",
        markdown_table(["column", "pool mean", "pool min", "pool max", "selected mean", "selected min", "selected max"],
                       score_summary(scores)),
    ]
    if plots or reports:
        body += ["", "## Report", ""]
        body += [f"- [{name}]({name})" for name in reports]
        body += [line for path in plots for line in ("", f"![{Path(path).stem}]({path})")]
    body += ["", "## Reproduce", "", "```bash", command, "```", "",
             f"Made with deita {select_manifest.get('versions', {}).get('deita', '')} "
             f"(selection finished {select_manifest.get('finished_at', '')})."]
    return DatasetCard(card_text(data, "\n".join(body)))


def json_as_yaml(obj: Any) -> str:
    """``obj`` as block YAML (for config excerpts in a card)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(obj)).rstrip()


def model_card(*, stage: str, record: dict, config: dict, versions: dict, repo_id: str | None = None,
               base_model_id: str | None = None, datasets: Iterable[str] = (),
               license: str | None = None) -> ModelCard:
    """The card of a model trained by stage ``stage``, from what the stage recorded.

    ``record`` is the stage's manifest (or, while the stage is still running, the dict it is about to
    return): ``trainer``, ``base_model``, ``hyperparameters`` (TRL's), ``metrics``, ``provenance`` and row
    counts. ``config`` is the resolved run config. ``repo_id``, ``base_model_id`` and ``datasets`` are the
    Hub names, known only when pushing (the metadata names no local path).
    """
    name = repo_id.split("/")[-1] if repo_id else f"{config.get('recipe_name', 'deita')}-{stage}"
    datasets = list(datasets)
    trainer = record.get("trainer", f"{stage.upper()}Trainer")
    data = ModelCardData(
        model_name=name, base_model=base_model_id, datasets=datasets or None, license=license,
        library_name="transformers", pipeline_tag="text-generation", tags=["deita", stage, "trl"],
    )
    base = f"[{base_model_id}](https://huggingface.co/{base_model_id})" if base_model_id else f"`{record.get('base_model')}`"
    on = ""
    if datasets:  # a model trained from an upstream stage's model inherits the selection through it
        link = f"[{datasets[0]}](https://huggingface.co/datasets/{datasets[0]})"
        on = f", which was trained on {link}" if record.get("base_stage") else f" on {link}"
    body = [
        f"# {name}",
        "",
        f"This model is a fine-tuned version of {base}{on}. It was trained with deita's `{stage}` stage using "
        f"[TRL](https://github.com/huggingface/trl)'s `{trainer}`"
        + (f", the method of {paper_link(TRAINING_PAPERS[stage], stage.upper())}" if stage in TRAINING_PAPERS else "")
        + ".",
    ]
    if repo_id:
        body += ["", "## Quick start", "", "```python", "from transformers import pipeline", "",
                 f'generator = pipeline("text-generation", model="{repo_id}")',
                 'messages = [{"role": "user", "content": "Give me three tips for writing clear code."}]',
                 'print(generator(messages, max_new_tokens=128, return_full_text=False)[0]["generated_text"])', "```"]
    counts = [[key.replace("_", " "), value] for key, value in sorted(record.items())
              if key.endswith(("_rows", "_pairs")) and isinstance(value, int)]
    provenance = record.get("provenance") or {}
    if provenance or counts:
        body += ["", "## Training data", "", markdown_table(["", ""], data_rows(provenance) + counts)]
    hyper = record.get("hyperparameters") or {}
    body += ["", "## Training procedure", "", "### Training hyperparameters", ""]
    body += [f"- {key}: {value}" for key, value in hyper.items()]
    if stage in config:
        body += ["", f"deita's `{stage}` config:", "", "```yaml", json_as_yaml(config[stage]), "```"]
    metrics = record.get("metrics") or {}
    body += ["", "### Training results", "", markdown_table(["metric", "value"], [[k, fmt(v)] for k, v in metrics.items()])]
    body += ["", "### Framework versions", ""]
    body += [f"- {label}: {versions[key]}" for key, label in FRAMEWORKS if key in versions]
    return ModelCard(card_text(data, "\n".join(body)))


def data_rows(provenance: dict) -> list[list[str]]:
    """Rows of the training-data table from a stage's ``provenance`` record."""
    rows = []
    for key, value in provenance.items():
        if isinstance(value, dict):  # a config excerpt: its scalar keys (the dataset card has the rest)
            value = ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, (dict, list)))
        elif isinstance(value, list):
            value = ", ".join(source_name(v) for v in value)
        rows.append([key.replace("_", " "), value])
    return rows
