"""Hub models pinned to a revision: ``org/name@revision`` loads that snapshot and fingerprints its commit, offline."""

from __future__ import annotations

import shutil

import pytest

from deita.models.resolve import check_model_ref, resolve_model, split_revision
from deita.validate import ConfigError

V1, V2 = "1" * 40, "2" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_llama):
    """A local Hugging Face cache holding ``org/scorer`` (the tiny Llama) at two commits (tags v1, v2;
    main = v2), offline."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = cache / "models--org--scorer"
    for commit, refs in ((V1, ["v1"]), (V2, ["v2", "main"])):
        snap = repo / "snapshots" / commit
        shutil.copytree(tiny_llama, snap)
        for ref in refs:
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / ref).write_text(commit)
    return repo


@pytest.mark.parametrize("ref, expected", [
    ("org/scorer@v1", ("org/scorer", "v1")),
    (f"org/scorer@{V1}", ("org/scorer", V1)),
    ("org/scorer", ("org/scorer", None)),
    ("tiny:llama", ("tiny:llama", None)),
    ("/models/ckpt@step100", ("/models/ckpt@step100", None)),  # a path, not a hub name
    ("org/scorer@", ("org/scorer@", None)),
])
def test_split_revision(ref, expected):
    assert split_revision(ref) == expected


def test_a_local_folder_with_an_at_sign_stays_a_folder(tmp_path):
    folder = tmp_path / "org" / "run@v1"
    folder.mkdir(parents=True)
    assert split_revision(str(folder)) == (str(folder), None)


@pytest.mark.parametrize("revision, commit", [("v1", V1), ("v2", V2), (V1, V1), ("main", V2)])
def test_a_pinned_reference_resolves_to_its_snapshot(hub_cache, tmp_path, revision, commit):
    path = resolve_model(f"org/scorer@{revision}", tmp_path / "cache")
    assert path == str(hub_cache / "snapshots" / commit)
    check_model_ref(f"org/scorer@{revision}", "selection.scorer.complexity_model")  # preflight accepts it


def test_an_unknown_revision_fails_preflight_naming_key_model_and_revision(hub_cache):
    with pytest.raises(ConfigError) as err:
        check_model_ref("org/scorer@v3", "selection.scorer.complexity_model")
    text = str(err.value)
    assert text.startswith("selection.scorer.complexity_model: org/scorer@v3: revision 'v3' of org/scorer is not in the local hub cache")
    assert "--revision v3" in text


def test_fingerprints_follow_the_pinned_commit(hub_cache):
    from deita.fingerprint import model_identity
    from deita.pipeline import model_fingerprint

    assert model_fingerprint("org/scorer@v1") == {"name": "org/scorer", "revision": V1}
    assert model_fingerprint("org/scorer@v2") == model_fingerprint("org/scorer") == {"name": "org/scorer", "revision": V2}
    assert model_identity(str(hub_cache / "snapshots" / V1))["revision"] == V1


def test_train_py_scores_with_the_pinned_snapshot(hub_cache, tmp_path, shared_data):
    """Through train.py: the select stage runs the v1 snapshot and records its commit; a revision the cache
    lacks stops the run at preflight (exit 2, one line)."""
    import json

    from tests.helpers import run_train, shared_paths

    env = {"HF_HUB_CACHE": str(hub_cache.parent), "HF_HUB_OFFLINE": "1"}
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection=ifd", "selection_models.ifd=org/scorer@v1",
            "data.pool=[{path: ${paths.shared_data}/instruct/llamafactory_alpaca_en_demo.json, limit: 12}]",
            "selection.budget=4", "selection.max_ifd=1000", *shared_paths(tmp_path, shared_data)]
    result = run_train(args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    manifest = json.loads((run_dir / "select" / "manifest.json").read_text())
    assert manifest["inputs"]["models"]["org/scorer@v1"] == {"name": "org/scorer", "revision": V1}
    bad = run_train(["recipe=tiny", "logger=none", "stages=[select]", "selection=ifd", "selection_models.ifd=org/scorer@v9",
                     *shared_paths(tmp_path, shared_data)], env=env)
    assert bad.returncode == 2 and "revision 'v9' of org/scorer is not in the local hub cache" in bad.stderr
    assert "Traceback" not in bad.stderr
