"""Revisions in fingerprints: a hub model or dataset updated upstream is a new fingerprint, offline."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from deita.config import DataSource
from deita.fingerprint import hub_revision, model_identity, snapshot_revision

OLD, NEW = "a" * 40, "b" * 40


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache; ``set_ref(kind, repo, ref, commit)`` writes what a download writes."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def set_ref(kind: str, repo: str, ref: str, commit: str):
        path = tmp_path / "hub" / f"{kind}s--{repo.replace('/', '--')}" / "refs" / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(commit)
        return path.parents[1]

    return set_ref


def test_a_hub_model_carries_the_commit_its_cache_resolves(hf_cache):
    from deita.pipeline import model_fingerprint

    assert model_identity("org/scorer") == {"name": "org/scorer"}  # not downloaded: the name alone
    assert model_fingerprint("org/scorer") == "org/scorer"
    hf_cache("model", "org/scorer", "main", OLD)
    before = model_identity("org/scorer")
    assert before == {"name": "org/scorer", "revision": OLD}
    assert model_fingerprint("org/scorer") == {"name": "org/scorer", "revision": OLD}
    hf_cache("model", "org/scorer", "main", NEW + "\n")  # updated upstream and downloaded again
    assert model_identity("org/scorer") == {"name": "org/scorer", "revision": NEW} != before
    assert model_fingerprint("tiny:llama") == "tiny:llama"


def test_a_given_revision_wins_and_resolves_through_the_cache(hf_cache):
    hf_cache("model", "org/m", "v1.0", OLD)
    assert hub_revision("org/m", "model", "v1.0") == OLD  # a tag, resolved offline
    assert hub_revision("org/m", "model", NEW) == NEW  # a commit is itself
    assert hub_revision("org/m", "model", "dev") == "dev"  # a branch not downloaded: as given
    assert hub_revision("org/m", "model") is None
    assert model_identity("org/m", revision="v1.0") == {"name": "org/m", "revision": OLD}


def test_a_local_snapshot_folder_carries_its_commit(hf_cache, tmp_path):
    repo = hf_cache("model", "org/m", "main", OLD)
    snap = repo / "snapshots" / OLD
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert snapshot_revision(snap) == OLD and snapshot_revision(snap / "sub") == OLD
    assert snapshot_revision(tmp_path) is None
    ident = model_identity(str(snap))
    assert ident["revision"] == OLD and "config.json" in ident
    other = tmp_path / "plain"
    other.mkdir()
    (other / "config.json").write_text("{}")
    assert "revision" not in model_identity(str(other))


def test_a_hub_dataset_fingerprint_follows_its_revision(hf_cache, tmp_path):
    from deita.pipeline import source_fingerprint

    def fp(**kw):
        return source_fingerprint(OmegaConf.structured(DataSource(path="org/pool", **kw)))

    assert "revision" not in fp()
    hf_cache("dataset", "org/pool", "main", OLD)
    first = fp()
    assert first["hub"] == "org/pool" and first["revision"] == OLD
    hf_cache("dataset", "org/pool", "main", NEW)
    assert fp()["revision"] == NEW
    assert fp(revision="v2")["revision"] == "v2"
    local = tmp_path / "pool.json"
    local.write_text("[]")
    assert "revision" not in source_fingerprint(OmegaConf.structured(DataSource(path=str(local), revision="v2")))


def test_the_data_revision_reaches_load_dataset(monkeypatch):
    import datasets

    from deita.data.sources import load_sources

    seen = {}

    class Rows:
        def to_list(self):
            return [{"instruction": "q", "output": "a"}]

    def fake_load_dataset(name, split, revision=None):
        seen.update(name=name, split=split, revision=revision)
        return Rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_sources([{"path": "org/pool", "revision": "v2"}], "sft").rows
    assert seen == {"name": "org/pool", "split": "train", "revision": "v2"} and len(rows) == 1
