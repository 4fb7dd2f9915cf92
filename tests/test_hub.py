"""Hub push: repo names, cards (YAML metadata parsed back), the upload plan, the start-up check.

Everything up to the upload is real; the upload itself is replaced (``deita.hub.upload``) or never
reached (``hub.dry_run=true``). Nothing here touches the network.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from deita.hub import cards, plan as hub_plan, remote
from deita.validate import ConfigError
from tests.helpers import compose_config, free_port, run_train, shared_paths

PREFIX = "me/x"


def front_matter(text: str) -> dict:
    """The YAML metadata of a card, parsed independently of huggingface_hub."""
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


# ---------------------------------------------------------------- repo names and the command


def test_repo_names_plain_and_per_sweep_point():
    from huggingface_hub.utils import validate_repo_id

    assert hub_plan.repo_id(PREFIX, "data") == "me/x-data"
    assert hub_plan.repo_id(PREFIX, "dpo") == "me/x-dpo"
    assert hub_plan.repo_id(PREFIX, "sft", "selection.budget=16,sft.max_length=128") == "me/x-budget-16-max_length-128-sft"
    assert hub_plan.repo_id(PREFIX, "data", "data.pool=[{path: _tmp_a.jsonl}]") == "me/x-pool-path-_tmp_a.jsonl-data"
    long_a = ",".join(f"sft.args.key_{i}=value_{i}" for i in range(20))
    long_b = long_a.replace("value_19", "value_20")
    ids = {hub_plan.repo_id(PREFIX, "data", d) for d in (long_a, long_b)}
    assert len(ids) == 2  # cut to the Hub's 96 characters, still distinct
    for rid in ids:
        assert len(rid.split("/")[1]) <= hub_plan.MAX_NAME and rid.endswith("-data")
        validate_repo_id(rid)


@pytest.mark.parametrize("prefix", [None, "", "x", "a/b/c", "me/-x", "me/x--y", "me/x y", "me/x."])
def test_bad_repo_prefix_is_refused(prefix):
    with pytest.raises(ValueError):
        hub_plan.check_repo_prefix(prefix)


def test_reproduce_command_keeps_the_overrides_that_shape_the_run():
    overrides = ["selection.budget=16", "hub.push=true", "hub.repo_prefix=me/x", "hydra.run.dir=/r",
                 "data.pool=[{path: my file.jsonl}]", "+hub.extra=1"]
    command = hub_plan.reproduce_command("demo", overrides)
    assert command.startswith("python train.py recipe=demo ")
    assert shlex.split(command)[2:] == ["recipe=demo", "selection.budget=16", "data.pool=[{path: my file.jsonl}]"]
    assert hub_plan.reproduce_command("demo", ["recipe=tiny"]) == "python train.py recipe=tiny"


def test_hub_keys_do_not_move_the_run_dir():
    from deita.config import HubConfig

    plain = compose_config(["recipe=tiny"])
    keys = [f"hub.{name}" for name in HubConfig.__dataclass_fields__]
    values = {"push": "true", "repo_prefix": "me/x", "private": "false", "dry_run": "true", "license": "mit", "timeout": "3"}
    pushed = compose_config(["recipe=tiny", *(f"{k}={values[k.split('.')[1]]}" for k in keys)])
    assert pushed.run_dir == plain.run_dir and Path(pushed.run_dir).name == "default"
    assert pushed.hub.push and pushed.hub.repo_prefix == "me/x"


# ---------------------------------------------------------------- cards


def _select_manifest() -> dict:
    return {
        "fingerprint": "abc123", "finished_at": "2026-01-01T00:00:00+0000", "pool_rows": 6, "selected_rows": 3,
        "skipped_records": 1, "versions": {"deita": "0.1.0"},
        "rows_per_source": {"/data/a.json": 4, "/data/b.json": 2},
        "method_report": {"tau": 0.9, "rejected_by_tau": 2, "scanned": 5, "pool_rows": 6, "timings": {"score_s": 1.23456}},
        "config": {"selection": {"method": "deita", "budget": 3, "tau": 0.9, "diversity": True}},
        "inputs": {"data": [{"file": "a.json", "sha256": "1111", "limit": None}, {"hub": "org/b", "limit": 2}],
                   "upstream": {}},
    }


def _scores() -> pd.DataFrame:
    return pd.DataFrame({"id": list("abcdef"), "evol_score": [5.0, 1.0, 3.0, np.nan, 2.0, 4.0],
                         "n_turns": [1] * 6, "selected": [True, False, True, False, False, True],
                         "rank": [0, -1, 2, -1, -1, 1]})


def _table(body: str, heading: str) -> dict[str, list[str]]:
    section = body.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_dataset_card_says_how_what_and_from_where():
    card = cards.dataset_card(repo_id="me/x-data", select_manifest=_select_manifest(), scores=_scores(),
                              command="python train.py recipe=demo", plots=["plots/hist_evol_score.png"],
                              reports=["report.html"], license="cc-by-nc-4.0")
    text = str(card)
    meta = front_matter(text)
    assert meta["license"] == "cc-by-nc-4.0" and meta["tags"] == ["deita"]  # the method is deita: once
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["text-generation"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    facts = _table(text, "Selection")
    assert facts["budget"] == ["3 rows"] and facts["τ (max cosine similarity to a kept row)"] == ["0.9"]
    assert facts["rows rejected by τ"] == ["2"] and facts["pool rows"] == ["6"] and facts["selected rows"] == ["3"]
    assert facts["scanned"] == ["5"] and facts["timings"] == ["score_s=1.235"] and text.count("| pool rows |") == 1
    sources = _table(text, "Pool sources")
    assert sources["a.json"][0] == "4" and sources["org/b"][0] == "2"  # file names only, never local paths
    assert "/data/a.json" not in text
    scores = _table(text, "Scores")
    chosen = [5.0, 3.0, 4.0]  # the selected rows' evol scores
    assert scores["evol_score"] == ["3", "1", "5", f"{np.mean(chosen):.4g}", "3", "5"]  # NaN left out of the pool mean
    assert "![hist_evol_score](plots/hist_evol_score.png)" in text and "[report.html](report.html)" in text
    assert "```bash\npython train.py recipe=demo\n```" in text


def test_dataset_rows_keep_the_alpaca_split_when_the_first_selected_row_has_none(tmp_path):
    """A mixed pool (ShareGPT first, Alpaca after): the parquet has instruction/input columns, null where a
    row has no split (Dataset.from_list would keep only the first row's keys)."""
    from datasets import Dataset

    from deita.data.loading import write_jsonl

    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    write_jsonl([{"id": "a", "messages": msgs}, {"id": "c", "messages": msgs, "instruction": "q", "input": ""}],
                tmp_path / "selected.jsonl")
    table = Dataset.from_list(hub_plan.dataset_rows(tmp_path, _scores())).to_list()
    assert [(r["id"], r["instruction"], r["input"], r["rank"]) for r in table] == [("a", None, None, 0), ("c", "q", "", 2)]


def test_dataset_card_has_no_tau_for_a_method_without_one():
    manifest = _select_manifest()
    manifest["config"]["selection"] = {"method": "random", "budget": 3}
    manifest["method_report"] = {}
    text = str(cards.dataset_card(repo_id="me/x-data", select_manifest=manifest, scores=_scores(), command="c",
                                  plots=[], reports=[]))
    assert "τ" not in text and "license" not in front_matter(text)
    assert cards.selection_tau({"method": "deita", "tau": 0.8, "diversity": False}) is None


def _record() -> dict:
    return {"trainer": "DPOTrainer", "base_model": "/runs/x/sft/model", "base_stage": "sft",
            "hyperparameters": {"learning_rate": 5e-07, "train_batch_size": 2, "total_train_batch_size": 8},
            "metrics": {"train_loss": 0.6931, "global_steps": 2},
            "provenance": {"preference_sources": ["org/prefs"], "pairs": 16,
                           "selection_method": {"method": "deita", "budget": 3, "scorer": {"max_length": 512}}},
            "train_pairs": 16, "trained_pairs": 15}


def test_model_card_metadata_for_the_hub():
    config = {"recipe_name": "demo", "dpo": {"beta": 0.1, "max_length": 384}}
    versions = {"trl": "1.16.0", "transformers": "5.23.0", "torch": "2.13.0", "deita": "0.1.0"}
    card = cards.model_card(stage="dpo", record=_record(), config=config, versions=versions, repo_id="me/x-dpo",
                            base_model_id="me/x-sft", datasets=["me/x-data"], license="apache-2.0")
    text = str(card)
    meta = front_matter(text)
    assert meta == {"base_model": "me/x-sft", "datasets": ["me/x-data"], "library_name": "transformers",
                    "license": "apache-2.0", "model_name": "x-dpo", "pipeline_tag": "text-generation",
                    "tags": ["deita", "dpo", "trl"]}
    assert "- learning_rate: 5e-07" in text and "- total_train_batch_size: 8" in text
    assert "beta: 0.1" in text and "| train_loss | 0.6931 |" in text
    assert "- TRL: 1.16.0" in text and "- Transformers: 5.23.0" in text and "- PyTorch: 2.13.0" in text
    assert 'pipeline("text-generation", model="me/x-dpo")' in text and "`DPOTrainer`" in text
    assert "fine-tuned version of [me/x-sft](https://huggingface.co/me/x-sft), which was trained on [me/x-data]" in text
    data = _table(text, "Training data")
    assert data["preference sources"] == ["org/prefs"] and data["trained pairs"] == ["15"]
    assert data["selection method"] == ["method=deita, budget=3"]


def test_local_model_card_names_no_local_path_in_its_metadata():
    card = cards.model_card(stage="dpo", record=_record(), config={"recipe_name": "demo"}, versions={})
    meta = front_matter(str(card))
    assert "base_model" not in meta and "datasets" not in meta and meta["model_name"] == "demo-dpo"
    assert "`/runs/x/sft/model`" in str(card)  # the body says where it started from


def test_packaged_and_local_models_map_to_their_hub_ids(tmp_path):
    from deita.models.resolve import hub_model_id

    assert hub_model_id("packaged:smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id("mistralai/Mistral-7B-v0.1") == "mistralai/Mistral-7B-v0.1"
    assert hub_model_id("tiny:llama") is None and hub_model_id(str(tmp_path)) is None
    assert hub_model_id("runs/demo/default/sft/model") is None  # a folder that is not here is no hub id


# ---------------------------------------------------------------- what a push covers


def _fake_stage(run_dir: Path, name: str, fingerprint: str, upstream: dict[str, str]) -> None:
    (run_dir / name).mkdir(parents=True)
    (run_dir / name / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint, "inputs": {"upstream": upstream}}))


def test_push_covers_current_stages_upstream_first_and_leaves_stale_ones_out(tmp_path):
    _fake_stage(tmp_path, "dpo", "d1", {"sft": "s1"})
    _fake_stage(tmp_path, "sft", "s1", {"select": "a2"})
    _fake_stage(tmp_path, "select", "a2", {})
    _fake_stage(tmp_path, "eval", "e1", {"sft": "s1", "dpo": "d1"})
    assert list(hub_plan.current_stages(tmp_path)) == ["select", "sft", "dpo", "eval"]
    (tmp_path / "select" / "manifest.json").write_text(json.dumps({"fingerprint": "a3", "inputs": {"upstream": {}}}))
    assert list(hub_plan.current_stages(tmp_path)) == ["select"]  # select re-ran: the old models are not its own


# ---------------------------------------------------------------- the start-up check (no network)


def _no_token(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)


def test_check_refuses_offline_mode_first(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1 .*; set HF_HUB_OFFLINE=0"):
        remote.check_access(PREFIX, timeout=1)


def test_check_refuses_a_missing_token(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    _no_token(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="needs a Hugging Face token; export HF_TOKEN"):
        remote.check_access(PREFIX, timeout=1)


def _with_account(monkeypatch, fn):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(remote, "whoami", fn)


def test_check_gives_up_on_a_hung_hub_within_the_timeout(monkeypatch):
    _with_account(monkeypatch, lambda: time.sleep(30))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot reach .* \(no answer within 0.3 s\)"):
        remote.check_access(PREFIX, timeout=0.3)
    assert time.monotonic() - started < 5


def test_check_reports_a_refused_token(monkeypatch):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    def rejected():
        raise HfHubHTTPError("401", response=httpx2.Response(401, request=httpx2.Request("GET", "https://hub/api")))

    _with_account(monkeypatch, rejected)
    with pytest.raises(ConfigError, match=r"refused the token \(HTTP 401\)"):
        remote.check_access(PREFIX, timeout=5)


@pytest.mark.parametrize("account, message", [
    ({"name": "me", "orgs": [], "auth": {"accessToken": {"role": "read"}}}, "read-only"),
    ({"name": "you", "orgs": [{"name": "lab"}], "auth": {"accessToken": {"role": "write"}}}, "cannot create repos under 'me'"),
])
def test_check_reports_tokens_that_cannot_write_there(monkeypatch, account, message):
    _with_account(monkeypatch, lambda: account)
    with pytest.raises(ConfigError, match=message):
        remote.check_access(PREFIX, timeout=5)


def test_check_passes_for_a_writer_of_the_namespace(monkeypatch):
    _with_account(monkeypatch, lambda: {"name": "you", "orgs": [{"name": "me"}], "auth": {"accessToken": {"role": "write"}}})
    assert remote.check_access(PREFIX, timeout=5) == "you"


def test_preflight_config_rules(monkeypatch):
    from deita import hub

    cfg = OmegaConf.create({"hub": {"push": False, "dry_run": True, "repo_prefix": None, "timeout": 1, "license": None},
                            "stages": ["select"], "run_dir": "runs/tiny/default"})
    with pytest.raises(ConfigError, match="hub.dry_run.*needs hub.push=true"):
        hub.preflight(cfg)
    cfg.hub.push = True
    with pytest.raises(ConfigError, match="hub.repo_prefix.*ORG/NAME"):
        hub.preflight(cfg)
    cfg.hub.repo_prefix = PREFIX
    hub.preflight(cfg)  # dry run: no network, no token needed
    monkeypatch.setattr(hub, "_hydra_multirun", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="launch.num_processes=N"):
        hub.preflight(cfg)


def test_upload_validates_every_card_then_creates_private_repos_and_commits_the_files(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# card\n")
    (tmp_path / "w.bin").write_bytes(b"12")
    uploads = [hub_plan.RepoUpload(f"me/x-{k}", t, True, {"README.md": str(tmp_path / "README.md"), "m/w.bin": str(tmp_path / "w.bin")}, "msg")
               for k, t in (("data", "dataset"), ("sft", "model"))]

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs))

        def create_commit(self, repo_id, operations, **kwargs):
            calls.append(("commit", repo_id, sorted((op.path_in_repo, op.path_or_fileobj) for op in operations)))
            return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="msg",
                                              commit_description="", oid="1")

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub.RepoCard, "validate", lambda self, repo_type=None: calls.append(("validate", repo_type)))
    urls = remote.upload(uploads)
    assert [c[0] for c in calls] == ["validate", "validate", "create", "commit", "create", "commit"]
    assert calls[2] == ("create", "me/x-data", {"repo_type": "dataset", "private": True, "exist_ok": True})
    assert calls[3][2] == sorted(uploads[0].files.items())
    assert urls == ["https://huggingface.co/me/x-data/commit/1", "https://huggingface.co/me/x-sft/commit/1"]


# ---------------------------------------------------------------- train.py end to end


def _small_tiny(tmp_path: Path, shared_data: Path) -> list[str]:
    return ["recipe=tiny", "logger=none", *shared_paths(tmp_path, shared_data), "selection.budget=16",
            "sft.max_length=128", "dpo.max_length=128",
            f"data.preference=[{{path: {shared_data}/preference/llamafactory_dpo_en_demo.json, limit: 8}}]"]


@pytest.fixture(scope="module")
def dry_run(tiny_run):
    """``hub.push=true hub.dry_run=true hub.repo_prefix=me/x`` added to the session's finished tiny run
    (conftest.py: select, sft, dpo, eval; budget 32), run once for this module: the hub keys keep its run dir,
    every stage is unchanged, and the push is staged in ``<run dir>/hub``."""
    tiny_args, _, run_dir = tiny_run
    args = [*tiny_args, "hub.push=true", "hub.dry_run=true", f"hub.repo_prefix={PREFIX}"]
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert all(f"stage {s}: unchanged" in log for s in ("select", "sft", "dpo", "eval")), log[-3000:]
    return run_dir, json.loads((run_dir / "hub" / "plan.json").read_text()), args


def test_dry_run_stages_the_dataset_and_both_models(dry_run):
    run_dir, plan, args = dry_run
    repos = {r["repo_id"]: r for r in plan["repos"]}
    assert [(r["repo_id"], r["repo_type"], r["private"]) for r in plan["repos"]] == [
        ("me/x-data", "dataset", True), ("me/x-sft", "model", True), ("me/x-dpo", "model", True)]
    assert plan["command"] == "python train.py " + " ".join(map(shlex.quote, [a for a in args if not a.startswith("hub.")]))
    for repo in plan["repos"]:
        assert all(Path(local).is_file() for local in repo["files"].values())
    data = repos["me/x-data"]["files"]
    assert {"README.md", "data/train-00000-of-00001.parquet", "report.md"} <= set(data)
    assert [p for p in data if p.startswith("plots/")] == [f"plots/{p.name}" for p in sorted((run_dir / "select" / "plots").glob("*.png"))]
    table = pd.read_parquet(data["data/train-00000-of-00001.parquet"])
    selected = [json.loads(line) for line in (run_dir / "select" / "selected.jsonl").read_text().splitlines()]
    assert list(table["id"]) == [r["id"] for r in selected] and list(table["rank"]) == list(range(32))
    assert [list(m) for m in table["messages"]] == [r["messages"] for r in selected]
    data_meta = front_matter(Path(data["README.md"]).read_text())
    assert data_meta["tags"] == ["deita", "random"]
    for stage in ("sft", "dpo"):
        files = repos[f"me/x-{stage}"]["files"]
        model_files = {str(p.relative_to(run_dir / stage / "model")) for p in (run_dir / stage / "model").rglob("*") if p.is_file()}
        assert set(files) == model_files and files["README.md"].startswith(str(run_dir / "hub"))
        meta = front_matter(Path(files["README.md"]).read_text())
        assert meta["datasets"] == ["me/x-data"] and meta["tags"] == ["deita", stage, "trl"]
        assert meta["library_name"] == "transformers" and "license" not in meta
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["hyperparameters"]["learning_rate"] == manifest["config"][stage]["args"]["learning_rate"]
        assert f"- learning_rate: {manifest['hyperparameters']['learning_rate']}" in Path(files["README.md"]).read_text()
    assert "base_model" not in front_matter(Path(repos["me/x-sft"]["files"]["README.md"]).read_text())  # tiny:llama
    assert front_matter(Path(repos["me/x-dpo"]["files"]["README.md"]).read_text())["base_model"] == "me/x-sft"
    local = front_matter((run_dir / "sft" / "model" / "README.md").read_text())  # training's own card
    assert "datasets" not in local and local["tags"] == ["deita", "sft", "trl"]


def test_push_hands_the_same_plan_to_the_uploader(dry_run, monkeypatch):
    """The real push (no dry run) after the fact: every stage is current, and ``upload`` gets the plan."""
    from deita import hub

    run_dir, plan, args = dry_run
    cfg = compose_config([a for a in args if a != "hub.dry_run=true"])
    assert Path(cfg.run_dir) == run_dir  # hub keys do not move the run directory
    uploaded = []
    monkeypatch.setattr(hub, "upload", lambda p: uploaded.extend(p))
    hub.push(cfg)
    assert [(r.repo_id, r.repo_type, sorted(r.files)) for r in uploaded] == [
        (r["repo_id"], r["repo_type"], sorted(r["files"])) for r in plan["repos"]]


def test_push_failure_is_one_line_after_the_stages(dry_run, monkeypatch):
    from deita import hub

    _, _, args = dry_run
    cfg = compose_config([a for a in args if a != "hub.dry_run=true"])

    def refuse(plan):
        raise OSError("connection reset\nby peer")

    monkeypatch.setattr(hub, "upload", refuse)
    with pytest.raises(hub.HubError, match="^hub push failed: connection reset by peer; the artifacts are in .* again"):
        hub.push(cfg)


@pytest.mark.parametrize("env, message", [
    ({"HF_HUB_OFFLINE": "1"}, "pushing needs the network, but HF_HUB_OFFLINE=1"),
    ({"HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_not_a_real_token"}, "cannot reach http://127.0.0.1:"),
])
def test_push_without_network_stops_before_any_stage(tmp_path, shared_data, env, message):
    env = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens: refused at once
    started = time.monotonic()
    result = run_train([*_small_tiny(tmp_path, shared_data), "hub.push=true", f"hub.repo_prefix={PREFIX}"], env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-4000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: config key 'hub.push': ") and message in lines[0], lines
    assert "hf_not_a_real_token" not in result.stdout + result.stderr
    stage_dirs = [p for p in (tmp_path / "runs").rglob("*") if p.name.split(".partial")[0].lstrip(".") in ("select", "sft")]
    assert not stage_dirs and "stage select" not in result.stdout + result.stderr
    print(f"failed after {elapsed:.1f} s (interpreter and config start-up included)")


def test_each_sweep_point_pushes_its_own_repos(select_sweep):
    _, sweep = select_sweep  # -m selection.budget=50,100 hub.push=true hub.dry_run=true hub.repo_prefix=me/x
    for budget in (50, 100):
        plan = json.loads((sweep / f"selection.budget={budget}" / "hub" / "plan.json").read_text())
        assert [r["repo_id"] for r in plan["repos"]] == [f"me/x-budget-{budget}-data"]
        assert f"selection.budget={budget}" in shlex.split(plan["command"])
