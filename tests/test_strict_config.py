"""Strict configs: unknown '+' keys, out-of-range values and TRL argument typos fail at composition (exit 2,
the key named), before anything loads; the TRL table matches the installed TRL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deita.validate import ConfigError, validate_config
from tests.helpers import REPO_ROOT, compose_config, run_train

# (overrides, the start of the error line after "error: ")
CLI_CASES = [
    (["+sft.learning_rate=5"], "config key 'sft.learning_rate': no such key (added with '+', nothing would read it); "
                               "did you mean 'sft.args.learning_rate' (a TRL argument)?"),
    (["+foo=1"], "config key 'foo': no such key"),
    (["selection=deita", "+selection.tua=0.5"], "config key 'selection.tua': no such key (added with '+', nothing would "
                                                 "read it); did you mean 'selection.tau'?"),
    (["+sft.args.learnin_rate=1"], "config key 'sft.args.learnin_rate': SFTConfig has no argument 'learnin_rate'; "
                                   "did you mean 'sft.args.learning_rate'?"),
    (["sft.args.lr_scheduler_type=cosin"], "config key 'sft.args.lr_scheduler_type': 'cosin' is not one of"),
    (["selection=deita", "selection.tau=-1"], "config key 'selection.tau': must be in (0, 1], got -1"),
    (["selection=nuggets", "selection.dtype=bfloat16"], "config key 'selection.dtype': mode=faithful scores in float32"),
    # Hydra's own composition errors (deita/__main__.py makes them one line, exit 2; they were Hydra's text, exit 1)
    (["selection.budget=abc"], "config key 'selection.budget': Value 'abc' of type 'str' could not be converted to Integer"),
    (["sft.args.learnin_rate=1"], "config key 'sft.args.learnin_rate': no such key; did you mean 'sft.args.learning_rate'?"),
    (["data.pool.0.limt=5"], "config key 'data.pool[0].limt': no such key in DataSource; did you mean 'data.pool[0].limit'?"),
    (["selection.tau=0.5"], "config key 'selection.tau': no such key in RandomSelectionConfig; valid keys under 'selection'"),
    (["selection=nope"], "In 'config': Could not find 'selection/nope'; available: deita, ifd, length, nuggets, random,"),
    (["selection.budget=["], "override 'selection.budget=[': "),
    # TRL argument types, read from TRL's dataclass annotations (were a TypeError inside SFT, after selection)
    (["sft.args.logging_steps=abc"], "config key 'sft.args.logging_steps': expected a number, found 'abc'"),
    (["+dpo.args.max_steps=1.5"], "config key 'dpo.args.max_steps': expected an integer, found 1.5"),
    (["sft.args.max_steps=1.5"], "config key 'sft.args.max_steps': not set by this config, so Hydra needs '+' to add "
                                 "it: +sft.args.max_steps=..."),
    # a data source's format name (was a KeyError traceback from the format registry at preflight)
    (["data.pool=[{path: pool.jsonl, format: alpacca}]"], "config key 'data.pool[0].format': must be 'auto' or a format "
                                                         "of sft rows (alpaca, openai, self_instruct, sharegpt, sharegpt_deita), got 'alpacca'"),
]


def test_strict_config_cases_exit_2_through_train_py(tmp_path):
    """Each case as a real subprocess (two at a time): exit 2, one error line naming the key, no traceback, no
    run dir."""
    from concurrent.futures import ThreadPoolExecutor

    def check(case) -> str | None:
        n, (overrides, message) = case
        runs = tmp_path / f"runs{n}"
        proc = run_train(["recipe=tiny", f"paths.runs_dir={runs}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                         timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        left = [p for p in runs.rglob("*") if p.is_file()]
        if (proc.returncode != 2 or len(errors) != 1 or not errors[0].startswith(f"error: {message}")
                or "Traceback" in proc.stdout + proc.stderr or left):
            return f"{overrides}: rc {proc.returncode}, errors {errors}, left {left}, tail {proc.stderr[-500:]}"
        return None

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [failure for failure in pool.map(check, enumerate(CLI_CASES)) if failure]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("overrides, message", [
    (["+sft.peft.rank=8"], "config key 'sft.peft.rank': no such key"),
    (["+data.pool.0.limt=5"], "config key 'data.pool[0].limt': no such key (added with '+', nothing would read it); "
                              "did you mean 'data.pool[0].limit'?"),
    (["selection=deita", "selection.tau=0"], "config key 'selection.tau': must be in (0, 1], got 0"),
    (["selection=deita", "selection.tau=1.5"], "config key 'selection.tau': must be in (0, 1], got 1.5"),
    (["selection=deita", "selection.embedder.template=vicuna"], "config key 'selection.embedder.template': must be one of"),
    (["selection=nuggets", "selection.threshold=1.5"], "config key 'selection.threshold': must be in [0, 1] or null"),
    (["selection=nuggets", "selection.threshold=-0.1"], "config key 'selection.threshold': must be in [0, 1] or null"),
    (["selection=nuggets", "selection.threshold=null", "selection.top_fraction=1.5"],
     "config key 'selection.top_fraction': must be in (0, 1] or null, got 1.5"),
    (["selection=nuggets", "selection.threshold=null"], "config key 'selection.threshold': set exactly one of"),
    (["selection=nuggets", "selection.mode=clean", "selection.diversity=true", "selection.tau=0"],
     "config key 'selection.tau': must be in (0, 1]"),
    (["selection=nuggets", "selection.anchors.k=0"], "config key 'selection.anchors.k': must be in [1, inf)"),
    (["selection=nuggets", "selection.mode=sloppy"], "config key 'selection.mode': must be one of ['faithful', 'clean']"),
    (["selection=ifd", "selection.sample_rate=0"], "config key 'selection.sample_rate': must be in (0, 1] or null"),
    (["selection=superfilter", "selection.max_ifd=0"], "config key 'selection.max_ifd': must be in (0, inf)"),
    (["selection=length", "selection.unit=bytes"], "config key 'selection.unit': expected one of ['chars', 'words']"),
    (["sft.args.learning_rate=0"], "config key 'sft.args.learning_rate': must be in (0, inf), got 0"),
    (["dpo.args.learning_rate=-1e-6"], "config key 'dpo.args.learning_rate': must be in (0, inf)"),
    (["sft.args.warmup_steps=-0.1"], "config key 'sft.args.warmup_steps': must be in [0, inf)"),
    (["+sft.args.warmup_ratio=0.1"], "config key 'sft.args.warmup_ratio': SFTConfig has no argument 'warmup_ratio'; "
                                     "did you mean 'sft.args.warmup_steps'?"),
    (["+dpo.args.report_to=[wandb,tensorbord]"], "config key 'dpo.args.report_to': 'tensorbord' is not one of"),
    (["+sft.args.optim=adamw"], "config key 'sft.args.optim': 'adamw' is not one of"),
    (["+orpo.args.save_strategy=step"], "config key 'orpo.args.save_strategy': 'step' is not one of ['best', 'epoch', 'no', 'steps'] (did you mean 'steps'?)"),
    (["sft.peft.enabled=true", "sft.peft.dropout=1.0"], "config key 'sft.peft.dropout': must be in [0, 1)"),
    (["data.preference_sample=0"], "config key 'data.preference_sample': must be in (0, inf) or null"),
    (["model.dtype=fp8"], "config key 'model.dtype': must be one of"),
    (["launch.num_processes=0"], "config key 'launch.num_processes': must be in [1, inf)"),
    (["plan_options.mfu=1.5"], "config key 'plan_options.mfu': must be in (0, 1]"),
    (["eval.max_new_tokens=0"], "config key 'eval.max_new_tokens': must be in [1, inf)"),
    (["eval.temperature=-1"], "config key 'eval.temperature': must be in [0, inf)"),
    (["eval.limit=0"], "config key 'eval.limit': must be in [1, inf) or null"),
    (["sft.chat_template=chatmlx"], "config key 'sft.chat_template': must be one of ['alpaca', 'chatml', 'tokenizer', 'vicuna_v1.1', 'zephyr'], got 'chatmlx'"),
    (["selection.chunk_rows=0"], "config key 'selection.chunk_rows': must be in [1, inf)"),
    (["++sft.args.data_seed=abc"], "config key 'sft.args.data_seed': expected an integer or null, found 'abc'"),
    (["++dpo.args.bf16=1"], "config key 'dpo.args.bf16': expected true, false or null, found 1"),
    (["++orpo.args.seed=true"], "config key 'orpo.args.seed': expected an integer, found true"),
    (["sft.args.logging_steps=null"], "config key 'sft.args.logging_steps': expected a number, found null"),
    (["++dpo.args.report_to=[1]"], "config key 'dpo.args.report_to': expected a list of strings, a string or null, found [1]"),
    (["++sft.args.model_init_kwargs=5"], "config key 'sft.args.model_init_kwargs': expected a mapping, a string or null, "
                                        "found 5"),
    (["++sft.args.lr_scheduler_type=5"], "config key 'sft.args.lr_scheduler_type': expected a string, found 5"),
    # a TRL argument the stage sets from its own key (it would reach TRL's config class twice, a TypeError)
    (["++dpo.args.beta=0.2"], "config key 'dpo.args.beta': deita sets this DPOConfig argument from 'dpo.beta'; "
                              "set that instead"),
    (["++dpo.args.loss_type=ipo"], "config key 'dpo.args.loss_type': deita sets this DPOConfig argument from "
                                   "'dpo.loss_type'; set that instead"),
    (["++sft.args.packing=true"], "config key 'sft.args.packing': deita sets this SFTConfig argument from "
                                  "'sft.packing'; set that instead"),
    (["++orpo.args.max_length=64"], "config key 'orpo.args.max_length': deita sets this ORPOConfig argument from "
                                    "'orpo.max_length'; set that instead"),
    (["data.preference=[{path: p.jsonl, format: alpaca}]"], "config key 'data.preference[0].format': must be 'auto' or a "
                                                            "format of preference rows (hh, llamafactory_preference, preference), got 'alpaca'"),
    (["data.eval_prompts=[{path: p.jsonl, format: hh}]"], "config key 'data.eval_prompts[0].format': must be 'auto' or a "
                                                          "format of prompts rows"),
])
def test_bad_values_fail_validation_naming_the_key(overrides, message):
    cfg = compose_config(["recipe=tiny", *overrides])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("overrides", [
    ["++sft.args.lr_scheduler_type=cosine", "sft.args.warmup_steps=0.1", "+dpo.args.report_to=[wandb,tensorboard]"],
    ["selection=deita", "selection.tau=1"],
    ["selection=nuggets", "selection.threshold=null", "selection.top_fraction=1"],
    ["+orpo.args.save_strategy=no"],
    ["sft.args.logging_steps=0.1", "++sft.args.max_steps=3", "++dpo.args.eval_steps=null", "++sft.args.seed=7",
     "++sft.args.model_init_kwargs={dtype: float32}", "++dpo.args.bf16=false", "++sft.args.learning_rate=1"],
    # annotated str, but transformers also takes a list (its isinstance test)
    ["++sft.args.fsdp=[full_shard,auto_wrap]"],
    ["data.pool=[{path: a.json, format: sharegpt_deita}]", "data.eval_prompts=[{path: q.jsonl, format: mt_bench}]",
     "data.preference=[{path: p.json, format: llamafactory_preference}]"],
])
def test_valid_edge_values_pass(overrides):
    validate_config(compose_config(["recipe=tiny", *overrides]))


def test_every_recipe_and_method_validates():
    """No false alarm: each recipe with each selection method it composes with passes."""
    from hydra.errors import ConfigCompositionException

    from tests.helpers import RECIPES

    checked = 0
    for recipe in RECIPES:
        for method in (None, "deita", "nuggets", "ifd", "superfilter", "length", "random"):
            try:
                cfg = compose_config([f"recipe={recipe}"] + ([f"selection={method}"] if method else []))
            except ConfigCompositionException:  # a recipe that sets another method's keys
                continue
            validate_config(cfg)
            checked += 1
    assert checked >= len(RECIPES)


class _Converts:
    """A config class whose methods take more than its annotations say (as DPOConfig's ``loss_type``)."""

    names: list[str]
    mode: str | None

    def __post_init__(self):
        if isinstance(self.names, str):
            self.names = [self.names]

    def setup(self):
        if isinstance(self.mode, (str, list)) and not isinstance(self.other, SomeClass):  # noqa: F821
            pass


def test_trl_value_kinds_come_from_the_annotations():
    """The kinds a field takes are read from its annotation and default, plus the builtin types the class's
    methods test it for; every TRL default fits its own field's kinds (no false alarm on a value TRL itself
    would use)."""
    import dataclasses
    import importlib
    import typing
    import warnings

    from deita.trl_args import _kinds_of, class_schema, fits, stage_classes

    class Mode(__import__("enum").Enum):
        A = "a"

    assert _kinds_of(int) == {"int"} and _kinds_of(typing.Optional[float]) == {"float", "null"}
    assert _kinds_of(typing.Union[dict, str, None]) == {"dict", "str", "null"}
    assert _kinds_of(Mode | str) == {"str"} and _kinds_of(typing.Literal[False]) == {"bool"}
    assert _kinds_of(list[str] | None) == {"list[str]", "null"} and _kinds_of(object) == {"any"}
    assert fits(3, "float") and not fits(True, "int") and not fits(1.5, "int") and fits(["a"], "list[str]")
    from deita.trl_args import _tested_kinds

    assert _tested_kinds(_Converts) == {"names": {"str"}, "mode": {"str", "list[any]"}, "other": set()}
    assert "str" in class_schema("trl.DPOConfig")["kinds"]["loss_type"]  # DPOConfig turns one string into a list
    checked = 0
    for dotted in stage_classes():
        module, name = dotted.rsplit(".", 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls = getattr(importlib.import_module(module), name)
        kinds = class_schema(dotted)["kinds"]
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                continue
            default = default.value if isinstance(default, __import__("enum").Enum) else default
            assert any(fits(default, kind) for kind in kinds[field.name]), (dotted, field.name, default, kinds[field.name])
            checked += 1
    assert checked > 300


def test_validation_imports_neither_torch_nor_trl():
    """What keeps a typo's failure under two seconds: validation reads the TRL table, never TRL itself."""
    code = ("import sys; from tests.helpers import compose_config; from deita.validate import validate_config; "
            "validate_config(compose_config(['recipe=demo', 'selection=deita', '++sft.args.lr_scheduler_type=cosine'])); "
            "print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_trl_table_matches_the_installed_trl():
    """``deita/trl_args.json`` is what ``python -m deita.trl_args --write`` writes from the installed TRL
    (run it after upgrading TRL or transformers)."""
    import json

    from deita.trl_args import TABLE, build_table, stage_classes

    assert json.loads(TABLE.read_text()) == json.loads(json.dumps(build_table(stage_classes())))


def test_a_table_from_other_versions_is_not_trusted(monkeypatch):
    """With a TRL version the table was not written from, the check reads the class itself."""
    from deita import trl_args

    trl_args.class_schema.cache_clear()
    monkeypatch.setattr(trl_args, "installed_versions", lambda: {"trl": "0.0.1", "transformers": "0.0.1"})
    calls = []
    monkeypatch.setattr(trl_args, "describe_class", lambda dotted: calls.append(dotted) or {"fields": ["x"], "choices": {}})
    try:
        with pytest.raises(ConfigError, match="SFTConfig has no argument 'learning_rate'"):
            trl_args.check_args({"learning_rate": 1}, "trl.SFTConfig", "sft.args")
        assert calls == ["trl.SFTConfig"]
    finally:
        trl_args.class_schema.cache_clear()
