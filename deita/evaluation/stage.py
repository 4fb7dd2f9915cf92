"""The eval stage: answer the benchmark prompt sets with the final model, write the judges' files, and
measure the held-out loss.

Reads top to bottom: pick the model → load the prompt sets → answer → write → held-out loss. Writes, into
the stage directory, one folder per prompt set named after its source file stem:

* ``<stem>/model_answer/<model_id>.jsonl``: FastChat answers, for sets in MT-Bench format (``mt_bench``);
* ``<stem>/alpaca_eval.json``: AlpacaEval outputs, for every set (an MT-Bench set contributes its
  first turns, which AlpacaEval-style judges can rate as single-turn answers);
* ``heldout_loss.jsonl``: each held-out row's id, assistant-token count and mean loss.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deita.data.loading import write_jsonl
from deita.data.sources import load_sources, source_options
from deita.evaluation import formats
from deita.evaluation.generate import answer_prompts, load_policy
from deita.evaluation.heldout import HELDOUT_MAX_ROWS, heldout_loss, pick_heldout
from deita.io import write_json_atomic

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
SAMPLING_SEED = 0
"""Base seed of sampled generation (``eval.temperature > 0``); each prompt group adds its index."""


def final_model_dir(upstream: dict[str, Path], choice: str | None = None) -> tuple[str, Path]:
    """The stage whose model is evaluated and its model folder: ``choice`` when set, else the last stage in
    pipeline order (:mod:`deita.stages`) that produces a model and is upstream (e.g. DPO when it finished,
    else SFT)."""
    from deita.stages import model_stages

    found = [name for name in model_stages() if name in upstream]
    if choice is not None and choice not in found:
        raise RuntimeError(f"eval: eval.model_stage={choice!r} is neither in stages nor finished; found {found}")
    if not found:
        raise RuntimeError(f"eval: needs a finished model stage ({model_stages()}) upstream, found {sorted(upstream)}")
    name = choice or found[-1]
    path = Path(upstream[name]) / MODEL_SUBDIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"eval: expected the {name} stage's model in {path}, found no config.json")
    return name, path


def load_prompt_sets(sources, limit: int | None) -> list[dict]:
    """Each source's prompt rows (first ``limit`` when set), with its stem and detected format."""
    stems: dict[str, str] = {}
    for src in sources:
        path = source_options(src)["path"]
        stem = formats.source_stem(path)
        if stem in stems:
            raise ValueError(f"eval prompt sets {stems[stem]!r} and {path!r} share the name {stem!r}; "
                             "their output folders would collide: rename one file")
        stems[stem] = path
    return [{"stem": formats.source_stem(result.source), "source": result.source, "format": result.format,
             "rows": result.rows[:limit] if limit is not None else result.rows}
            for result in load_sources(sources, "prompts").results]


def write_answers(work_dir: Path, pset: dict, answers: list[list[str]], model_id: str) -> list[str]:
    """Write one prompt set's answer files; returns their paths relative to ``work_dir``."""
    out_dir = work_dir / pset["stem"]
    written = []
    if "mt_bench" in pset["format"].split("+"):
        path = out_dir / "model_answer" / f"{model_id}.jsonl"
        write_jsonl(formats.fastchat_answers(pset["rows"], answers, model_id), path)
        written.append(path)
    path = out_dir / "alpaca_eval.json"
    write_json_atomic(path, formats.alpaca_eval_outputs(pset["rows"], answers, model_id, pset["stem"]))
    written.append(path)
    return [str(p.relative_to(work_dir)) for p in written]


def load_heldout_rows(cfg: DictConfig, select_dir: Path | None, cap: int) -> tuple[list[dict], str | None]:
    """The held-out SFT rows (see :mod:`deita.evaluation.heldout`) given the select stage's directory, or
    ``([], reason)`` when there are none."""
    import pandas as pd

    if select_dir is None:
        return [], "no select artifact upstream (select is neither in stages nor finished)"
    table_path = Path(select_dir) / "scores.parquet"
    if not table_path.is_file():
        return [], f"no select artifact at {table_path}"
    pool_sources = OmegaConf.select(cfg, "data.pool", default=None) or []
    if not pool_sources:
        return [], "data.pool is empty"
    table = pd.read_parquet(table_path, columns=["id", "selected"])
    selected = dict(zip(table["id"].astype(str), table["selected"].astype(bool)))
    from deita.data.pool_file import load_pool
    from deita.distributed import env_dist

    cache_dir = OmegaConf.select(cfg, "paths.cache_dir", default=None)  # absent only in hand-built configs
    store = OmegaConf.select(cfg, "data.pool_store", default="arrow") if cache_dir else "memory"
    pool = load_pool(pool_sources, store, cache_dir, is_main=env_dist().is_main)
    rows = pick_heldout(pool.rows, selected, cap)
    return rows, (None if rows else "every pool row was selected")


def run_eval_stage(cfg: DictConfig, ctx) -> dict:
    """Answer ``cfg.data.eval_prompts`` with the final model, write the judges' files and the held-out loss."""
    from deita.data.templates import has_generation_markers

    node = cfg.eval
    model_id = formats.check_model_id(str(node.model_id))
    dist, work_dir = ctx.dist, Path(ctx.work_dir)

    # 1. The final model.
    stage_name, model_dir = final_model_dir(ctx.upstream, OmegaConf.select(cfg, "eval.model_stage", default=None))
    model, tok = load_policy(model_dir, OmegaConf.select(cfg, "model", default=None))
    if dist.is_main:
        log.info("eval: evaluating the %s model in %s as %r", stage_name, model_dir, model_id)

    # 2. Prompt sets → answers → files.
    counts: dict = {"model_stage": stage_name, "model_dir": str(model_dir), "model_id": model_id, "prompt_sets": {}}
    started = time.time()
    for pset in load_prompt_sets(cfg.data.eval_prompts, node.limit):
        answers = answer_prompts(model, tok, pset["rows"], max_new_tokens=int(node.max_new_tokens),
                                 temperature=float(node.temperature), dist=dist, seed=SAMPLING_SEED,
                                 desc=f"eval: {pset['stem']}")
        files = write_answers(work_dir, pset, answers, model_id) if dist.is_main else []
        counts["prompt_sets"][pset["stem"]] = {
            "source": pset["source"], "format": pset["format"], "prompts": len(pset["rows"]),
            "turns": sum(len(a) for a in answers), "files": files}
    counts["generation_seconds"] = round(time.time() - started, 3)

    # 3. Held-out loss on pool rows the selection left out.
    cap = int(node.limit) if node.limit is not None else HELDOUT_MAX_ROWS
    rows, note = load_heldout_rows(cfg, ctx.upstream.get("select"), cap)
    if rows and not has_generation_markers(tok.chat_template):
        rows, note = [], f"the chat template of {model_dir} has no {{% generation %}} markers to find assistant tokens"
    counts.update(heldout_loss=None, heldout_rows=0, heldout_tokens=0)
    if rows:
        result = heldout_loss(model, tok, rows, max_length=OmegaConf.select(cfg, "sft.max_length", default=None),
                              dist=dist)
        counts.update(heldout_loss=result["loss"], heldout_rows=result["rows"], heldout_tokens=result["tokens"])
        if dist.is_main:
            write_jsonl(result["per_row"], work_dir / "heldout_loss.jsonl")
            log.info("eval: held-out loss %.4f over %d rows (%d assistant tokens)",
                     result["loss"] if result["loss"] is not None else float("nan"), result["rows"], result["tokens"])
    else:
        counts["heldout_note"] = f"held-out loss skipped: {note}"
        if dist.is_main:
            log.warning("eval: %s", counts["heldout_note"])
    return counts
