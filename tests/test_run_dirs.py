"""Run directory names: today's names for short overrides, long values shortened deterministically, every
name under the filesystem's 255-byte limit on one path component."""

from __future__ import annotations

import hashlib

from deita.hydra_resolvers import ITEM_SEP, MAX_NAME_BYTES, override_dirname, short_value
from tests.helpers import compose_config, run_train

LONG = "/mnt/shared/checkpoints/team-alignment/experiments/2024-05-deita-reproduction"
THREE_MODELS = {
    "model.name_or_path": f"{LONG}/llama-2-7b-sft-deita-6k/checkpoint-3000",
    "selection_models.deita_complexity": f"{LONG}/scorers/deita-complexity-scorer-llama-7b",
    "selection_models.deita_quality": f"{LONG}/scorers/deita-quality-scorer-llama-7b",
}


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_short_overrides_keep_todays_names():
    assert override_dirname("") == "default"
    assert override_dirname("selection.budget=50") == "selection.budget=50"
    joined = ITEM_SEP.join(["model.name_or_path=/data/models/llama", "selection.budget=8"])
    assert override_dirname(joined) == "model.name_or_path=_data_models_llama,selection.budget=8"
    lists = ITEM_SEP.join(["data.pool=[{path: /d/a.json, limit: 3},{path: /d/b.json}]", "selection.budget=8"])
    assert override_dirname(lists) == "data.pool=[{path: _d_a.json, limit: 3},{path: _d_b.json}],selection.budget=8"


def test_composed_run_dirs_are_unchanged_for_short_values():
    assert compose_config(["recipe=tiny", "selection.budget=50"]).run_dir.endswith("/tiny/selection.budget=50")
    cfg = compose_config(["recipe=tiny", "sft.max_length=128", "selection.budget=8", "stages=[select]"])
    assert cfg.run_dir.endswith("/tiny/selection.budget=8,sft.max_length=128")
    assert compose_config(["recipe=tiny"]).run_dir.endswith("/tiny/default")


def test_a_long_value_keeps_its_ends_and_a_hash_of_the_whole():
    value = THREE_MODELS["model.name_or_path"]
    assert short_value(value) == f"/mnt/shared/..a-6k/checkpoint-3000~{_sha8(value)}"
    twin = value.replace("team-alignment", "team-safety")  # same ends, different path: different name
    assert short_value(twin) != short_value(value) and short_value(twin)[:-8] == short_value(value)[:-8]
    assert short_value("x" * 48) == "x" * 48 and len(short_value("x" * 49)) < 49


def test_three_long_paths_fit_and_stay_readable():
    items = [f"{k}={v}" for k, v in sorted(THREE_MODELS.items())]
    name = override_dirname(ITEM_SEP.join(items))
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name == ",".join(f"{k}={short_value(v)}".replace("/", "_") for k, v in sorted(THREE_MODELS.items()))
    assert all(end in name for end in ("_checkpoint-3000~", "xity-scorer-llama-7b~", "lity-scorer-llama-7b~"))


def test_many_overrides_are_cut_with_a_hash_of_all_of_them():
    items = [f"sft.args.key_{i:02d}=value_{'é' * 5}_{i}" for i in range(30)]  # multi-byte characters
    name = override_dirname(ITEM_SEP.join(items))
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.startswith("sft.args.key_00=value_ééééé_0,") and name.endswith("~" + _sha8(ITEM_SEP.join(items)))
    other = override_dirname(ITEM_SEP.join(items[:-1] + ["sft.args.key_29=changed"]))  # differs past the cut
    assert other != name and other[:-8] == name[:-8]


def test_three_long_model_paths_run_in_one_deterministic_folder(tmp_path, shared_data):
    """Before: ``OSError: File name too long``. Every rank and every re-run resolve the same folder: the
    name is a pure function of the overrides (a second process with another hash seed finds it)."""
    pool = shared_data / "instruct" / "llamafactory_alpaca_en_demo.json"
    args = ["recipe=tiny", "stages=[select]", "logger=none", "selection.budget=4", f"paths.runs_dir={tmp_path / 'runs'}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"data.pool=[{{path: '{pool}', limit: 12}}]",
            *(f"{k}={v}" for k, v in THREE_MODELS.items())]
    first = run_train(args, env={"PYTHONHASHSEED": "1"})
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert len(run_dir.name.encode()) < 255 and (run_dir / "select" / "manifest.json").is_file()
    assert "checkpoint-3000~" in run_dir.name and "selection.budget=4" in run_dir.name
    again = run_train(args, env={"PYTHONHASHSEED": "2"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage select: unchanged" in again.stdout + again.stderr
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == [run_dir.name]
