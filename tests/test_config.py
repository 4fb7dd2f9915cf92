"""Composition: every recipe composes and plans; bad keys and values fail naming the key."""

from __future__ import annotations

import json
import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import RECIPES, REPO_ROOT, compose_config, run_train

HEAVY_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "sentence_transformers",
                  "datasets", "safetensors", "matplotlib")

# Runs train.py in this interpreter and, at exit, prints which heavy packages got imported.
IMPORTS_AT_EXIT = """
import atexit, json, runpy, sys
heavy = {heavy!r}
atexit.register(lambda: print("IMPORTED=" + json.dumps(sorted(
    {{m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy}}))))
sys.argv = [{script!r}, *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_recipes_exist():
    assert {"tiny"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes(recipe):
    cfg = compose_config([f"recipe={recipe}"])
    assert cfg.recipe_name == recipe
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    from deita.validate import validate_config

    validate_config(cfg)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_plans_without_loading_models(recipe, shared_data):
    cfg = compose_config([f"recipe={recipe}", f"paths.shared_data={shared_data}"])
    from deita.plan import build_plan, format_plan

    from deita import stages

    plan = build_plan(cfg)
    assert [e["stage"] for e in plan] == [s for s in stages.names() if s in cfg.stages and s != "eval"]
    assert "GPU-hours" in format_plan(cfg, plan)


def plan_imports(recipe: str, shared_data) -> tuple[list[str], str]:
    """Run ``train.py recipe=RECIPE plan=true`` in a fresh interpreter; the heavy packages it imported, its output."""
    import subprocess

    code = IMPORTS_AT_EXIT.format(heavy=HEAVY_PACKAGES, script=str(REPO_ROOT / "train.py"))
    result = subprocess.run([sys.executable, "-c", code, f"recipe={recipe}", "plan=true",
                             f"paths.shared_data={shared_data}"], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    marker = [ln for ln in result.stdout.splitlines() if ln.startswith("IMPORTED=")]
    assert len(marker) == 1, result.stdout[-2000:]
    return json.loads(marker[0].split("=", 1)[1]), result.stdout


@pytest.mark.parametrize("recipe", RECIPES)
def test_plan_mode_imports_no_model_code(recipe, shared_data):
    # without torch or transformers in the process, no model can have been loaded
    imported, out = plan_imports(recipe, shared_data)
    assert imported == [], f"plan mode imported {imported}"
    assert "total ≈" in out and "GPU-hours" in out


def test_the_plan_mode_import_check_can_fail(shared_data, tmp_path, monkeypatch):
    # the same check, with a sitecustomize that makes every process import torch: it must see it
    (tmp_path / "sitecustomize.py").write_text("import torch\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{REPO_ROOT}")
    imported, _ = plan_imports("tiny", shared_data)
    assert "torch" in imported


def test_print_config_of_hub_recipe_loads_nothing():
    hub = [r for r in RECIPES if r.startswith("mistral")] or ["tiny"]
    result = run_train([f"recipe={hub[0]}", "--cfg", "job"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "selection:" in result.stdout and "sft:" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.budgett=5", "config key 'selection.budgett': no such key in RandomSelectionConfig; "
                                "did you mean 'selection.budget'?"),
        ("selection.budget=abc", "config key 'selection.budget': Value 'abc' of type 'str' could not be converted to Integer"),
        ("sft.learning_rate=1", "config key 'sft.learning_rate': no such key in SFTStageConfig; "
                                "did you mean 'sft.args.learning_rate' (a TRL argument)?"),
        ("model.dtype=[1]", "config key 'model.dtype': Cannot convert 'list' to string"),
    ],
)
def test_bad_keys_fail_at_composition_naming_the_key(override, message):
    """Hydra's composition errors, as one line and exit 2 (deita/__main__.py)."""
    result = run_train(["recipe=tiny", override, "--cfg", "job"], timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.budget=0", "config key 'selection.budget': must be a positive row count or -1"),
        ("stages=[select,train]", "config key 'stages': unknown stage 'train'"),
        ("sft.global_batch_size=6", "config key 'sft.global_batch_size': 6 is not a multiple of per_device_batch_size 4"),
        ("logger.backend=tensorboard", "config key 'logger.backend': must be 'none' or 'wandb'"),
    ],
)
def test_bad_values_fail_before_anything_loads(override, message):
    from deita.validate import ConfigError, validate_config

    cfg = compose_config(["recipe=tiny", override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(message)


def test_run_dir_is_deterministic_recipe_plus_overrides():
    cfg = compose_config(["recipe=tiny", "selection.budget=50", "stages=[select]"])
    assert cfg.run_dir == "runs/tiny/selection.budget=50"
    cfg = compose_config(["recipe=tiny"])
    assert cfg.run_dir == "runs/tiny/default"


def test_recipes_symlink_is_the_recipe_group():
    assert (REPO_ROOT / "conf" / "recipe").resolve() == (REPO_ROOT / "recipes").resolve()


def test_each_stage_node_takes_its_config_group_default():
    # conf/config.yaml names no stage group: the root schema's defaults list picks conf/<stage>/default.yaml
    assert "sft:" not in (REPO_ROOT / "conf" / "config.yaml").read_text()
    cfg = compose_config(["recipe=tiny"])
    assert cfg.sft.args.lr_scheduler_type == "cosine" and cfg.dpo.args.lr_scheduler_type == "linear"  # default.yaml
    assert cfg.sft.args.learning_rate == 1.0e-3  # the recipe still overrides it
    assert cfg.eval.max_new_tokens == 16 and cfg.eval.model_stage is None  # eval has no YAML: schema defaults
    result = run_train(["recipe=tiny", "sft.no_such_key=1", "--cfg", "job"], timeout=120)
    assert result.returncode == 2 and "error: config key 'sft.no_such_key': no such key" in result.stderr
