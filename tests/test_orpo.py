"""The ORPO stage (deita/stages/orpo.py + conf/orpo/default.yaml): from the SFT model through train.py, from
the base model in process, and how the rest of deita picks it up from the stage registry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers import compose_config, run_train, shared_paths

PAIRS = "preference/llamafactory_dpo_en_demo.json"
SMALL_ORPO = ["orpo.max_length=128", "orpo.global_batch_size=4", "orpo.per_device_batch_size=2",
              "orpo.args.warmup_steps=0", "orpo.args.learning_rate=1e-3"]


def _pairs(shared_data: Path, limit: int = 8) -> str:
    return f"data.preference=[{{path: {shared_data / PAIRS}, limit: {limit}}}]"


def _state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _changed(before: dict, after: dict) -> set[str]:
    import torch

    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_orpo_from_the_sft_model_through_train_py(tmp_path, shared_data):
    args = ["recipe=tiny", "logger=none", "stages=[select,sft,orpo]", *shared_paths(tmp_path, shared_data),
            "selection.budget=8", "sft.max_length=128", "sft.global_batch_size=4", "+sft.args.max_steps=1",
            _pairs(shared_data), *SMALL_ORPO, "+orpo.args.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]  # (the override dirname is too long)
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = tmp_path / "run"
    sft = json.loads((run_dir / "sft" / "manifest.json").read_text())
    orpo = json.loads((run_dir / "orpo" / "manifest.json").read_text())

    assert orpo["status"] == "complete" and orpo["stage"] == "orpo"
    assert orpo["inputs"]["upstream"] == {"sft": sft["fingerprint"]}  # read through its optional upstream
    assert (orpo["base_stage"], orpo["base_model"]) == ("sft", str(run_dir / "sft" / "model"))
    assert orpo["trainer"] == "ORPOTrainer" and orpo["provenance"]["sft_fingerprint"] == sft["fingerprint"]
    assert orpo["train_pairs"] == 8 and orpo["trained_pairs"] == 8  # ORPO truncates long pairs, drops none
    assert orpo["metrics"]["global_steps"] == 2 and math.isfinite(orpo["metrics"]["train_loss"])
    assert orpo["config"]["orpo"]["beta"] == 0.1 and orpo["config"]["orpo"]["args"]["lr_scheduler_type"] == "linear"
    assert [d["file"] for d in orpo["inputs"]["data"]] == [Path(PAIRS).name]

    model_dir = run_dir / "orpo" / "model"
    assert (model_dir / "config.json").is_file() and not (run_dir / "orpo" / "checkpoints").exists()
    changed = _changed(_state_dict(run_dir / "sft" / "model"), _state_dict(model_dir))
    assert any("q_proj" in k for k in changed)  # trained from the SFT weights, and moved them
    card = (model_dir / "README.md").read_text()
    assert "# tiny-orpo" in card and "`ORPOTrainer`" in card and sft["fingerprint"] in card

    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(model_dir)).__name__ == "LlamaForCausalLM"


def test_orpo_from_the_base_model_with_lora(tmp_path, shared_data, monkeypatch):
    import trl.experimental.orpo as orpo_module

    from deita.models.resolve import resolve_model
    from deita.pipeline import run_pipeline

    built = []
    base_cls = orpo_module.ORPOTrainer

    def __init__(self, *args, **kwargs):
        base_cls.__init__(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(orpo_module, "ORPOTrainer", type("ORPOTrainer", (base_cls,), {"__init__": __init__}))
    cfg = compose_config(["recipe=tiny", "logger=none", "stages=[orpo]", *shared_paths(tmp_path, shared_data),
                          _pairs(shared_data, 4), *SMALL_ORPO, "orpo.peft.enabled=true", "orpo.peft.r=4",
                          "+orpo.args.max_steps=1"])
    run_dir = tmp_path / "run"
    manifest = run_pipeline(cfg, run_dir)["orpo"]

    (trainer,) = built
    assert type(trainer.model).__name__.startswith("Peft") and trainer.beta == 0.1
    assert (manifest["base_stage"], manifest["base_model"]) == (None, "tiny:llama")
    assert manifest["inputs"]["upstream"] == {}
    assert manifest["inputs"]["models"] == {"tiny:llama": "tiny:llama"}
    assert manifest["metrics"]["global_steps"] == 1 and math.isfinite(manifest["metrics"]["train_loss"])
    base = _state_dict(Path(resolve_model("tiny:llama", cfg.paths.cache_dir)))
    merged = _state_dict(run_dir / "orpo" / "model")
    assert not [k for k in merged if "lora" in k]  # adapters merged on save
    assert any("v_proj" in k for k in _changed(base, merged))
    assert "fine-tuned version of `tiny:llama`" in (run_dir / "orpo" / "model" / "README.md").read_text()


def test_the_registry_brings_orpo_to_config_validation_plan_and_eval(tmp_path, shared_data):
    from deita import stages
    from deita.evaluation.stage import final_model_dir
    from deita.plan import build_plan
    from deita.validate import ConfigError, validate_config

    assert "orpo" in stages.model_stages() and stages.upstream_of(stages.get("orpo")) == ([], ["sft"])
    cfg = compose_config(["recipe=tiny", "stages=[select,sft,orpo]", f"paths.shared_data={shared_data}",
                          "orpo.max_length=256"])  # as the tiny recipe's dpo.max_length
    assert cfg.orpo.args.learning_rate == 1.0e-6 and cfg.orpo.beta == 0.1  # conf/orpo/default.yaml
    validate_config(cfg)
    with pytest.raises(ConfigError, match="config key 'orpo.beta': must be positive"):
        validate_config(compose_config(["recipe=tiny", "orpo.beta=0"]))
    with pytest.raises(ConfigError, match="config key 'data.preference': the orpo stage needs at least one source"):
        validate_config(compose_config(["recipe=tiny", "stages=[orpo]", "data.preference=[]"]))

    plan = {e["stage"]: e for e in build_plan(cfg)}
    assert list(plan) == ["select", "sft", "orpo"]
    dpo_like = build_plan(compose_config(["recipe=tiny", "stages=[dpo]", f"paths.shared_data={shared_data}"]))[0]
    assert plan["orpo"]["rows"] == dpo_like["rows"] == 48  # the tiny recipe's preference limit
    assert plan["orpo"]["flops"] == pytest.approx(dpo_like["flops"] * 6 / 8)  # no reference-model forward

    for name in ("sft", "orpo"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text("{}")
    assert final_model_dir({"sft": tmp_path / "sft", "orpo": tmp_path / "orpo"})[0] == "orpo"
