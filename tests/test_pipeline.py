"""The stage runner: skip when unchanged, re-run (and everything downstream) when an input changes,
atomic finalize (a crash leaves no finished-looking artifact), manifests that record what they should."""

from __future__ import annotations

import json

import pytest

from deita import pipeline, stages
from deita.registry import Registry
from deita.stages import Stage
from tests.helpers import compose_config


def use_stages(monkeypatch, *fakes: Stage) -> None:
    """Make ``fakes`` the whole stage registry for this test (the config schema keeps the real stages' nodes)."""
    import train  # noqa: F401  (registers the real config schema before the registry is swapped)

    stages.STAGES.names()  # the real modules are imported (and registered) first, never into the fake registry
    registry = Registry("stage")
    for stage in fakes:
        registry.register(stage.name)(stage)
    monkeypatch.setattr(stages, "STAGES", registry)


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """Replace the real stages with cheap ones that log their calls and write a file."""
    calls: list[str] = []
    crash = {"stage": None}

    def make(name):
        def run(cfg, ctx):
            calls.append(name)
            if crash["stage"] == name:
                (ctx.work_dir / "half.txt").write_text("half")
                raise RuntimeError(f"{name} crashed")
            if crash["stage"] == f"{name} at once":
                (ctx.work_dir / "checkpoints").mkdir()  # a folder, but no file to resume from
                raise RuntimeError(f"{name} crashed before writing")
            upstream = {k: (v / "out.txt").read_text() for k, v in ctx.upstream.items()}
            (ctx.work_dir / "out.txt").write_text(json.dumps({"name": name, "upstream": upstream}))
            return {"rows": 3}
        return run

    use_stages(monkeypatch,
               Stage("select", make("select"), "", config_keys=("selection",), data_keys=("data.pool",)),
               Stage("sft", make("sft"), "", requires=("select",), config_keys=("sft",), produces_model=True),
               Stage("dpo", make("dpo"), "", requires=("sft",), config_keys=("dpo",), produces_model=True),
               Stage("eval", make("eval"), "", optional=("select",), reads_model=True, config_keys=("eval",)))
    return calls, crash


def _cfg(tmp_path, pool_file, *extra):
    return compose_config(["recipe=tiny", f"paths.cache_dir={tmp_path / 'cache'}",
                           f"data.pool=[{{path: {pool_file}}}]", *extra])


def test_skip_rerun_and_downstream(fake_stages, tmp_path):
    calls, _ = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text('[{"instruction": "a", "output": "b"}]')
    run_dir = tmp_path / "run"
    cfg = _cfg(tmp_path, pool)

    first = pipeline.run_pipeline(cfg, run_dir)
    assert calls == ["select", "sft", "dpo"]
    assert {m["status"] for m in first.values()} == {"complete"}

    calls.clear()
    second = pipeline.run_pipeline(cfg, run_dir)
    assert calls == []  # nothing changed: every stage skipped
    assert {k: m["fingerprint"] for k, m in second.items()} == {k: m["fingerprint"] for k, m in first.items()}

    calls.clear()
    pool.write_text('[{"instruction": "a", "output": "changed"}]')  # an input changes
    third = pipeline.run_pipeline(cfg, run_dir)
    assert calls == ["select", "sft", "dpo"]  # it and everything downstream re-run
    assert third["select"]["fingerprint"] != first["select"]["fingerprint"]
    assert third["dpo"]["inputs"]["upstream"]["sft"] == third["sft"]["fingerprint"]

    calls.clear()
    cfg_dpo = _cfg(tmp_path, pool, "dpo.beta=0.2")  # only a downstream config changes
    pipeline.run_pipeline(cfg_dpo, run_dir)
    assert calls == ["dpo"]


def test_manifest_records_config_inputs_versions_timing(fake_stages, tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    manifests = pipeline.run_pipeline(_cfg(tmp_path, pool), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "select" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifests["select"], default=str))
    assert on_disk["inputs"]["data"][0]["file"] == "pool.json" and len(on_disk["inputs"]["data"][0]["sha256"]) == 16
    assert on_disk["config"]["selection"]["method"] == "random"
    assert {"torch", "transformers", "trl", "python"} <= set(on_disk["versions"])
    assert on_disk["world_size"] == 1 and on_disk["wall_seconds"] >= 0 and on_disk["rows"] == 3


def _finished_run(tmp_path):
    """(pool file, run dir) of a finished run of every fake stage."""
    pool = tmp_path / "pool.json"
    pool.write_text("[1]")
    run_dir = tmp_path / "run"
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    return pool, run_dir


def _rerun_crashing_in(stage, crash, tmp_path, pool, run_dir) -> None:
    """Change the pool and run again; ``stage`` crashes (after writing a file) and the error propagates."""
    crash["stage"] = stage
    pool.write_text("[2]")
    with pytest.raises(RuntimeError, match=f"{stage} crashed"):
        pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)


def test_crash_leaves_no_finished_artifact_and_keeps_the_old_one(fake_stages, tmp_path):
    calls, crash = fake_stages
    pool, run_dir = _finished_run(tmp_path)
    old_sft = (run_dir / "sft" / "out.txt").read_text()

    _rerun_crashing_in("sft", crash, tmp_path, pool, run_dir)
    assert (run_dir / "sft" / "out.txt").read_text() == old_sft  # the finished artifact is untouched
    assert not (run_dir / "sft" / "half.txt").exists()
    partial = list(run_dir.glob(".sft.partial-*"))
    assert len(partial) == 1 and (partial[0] / "half.txt").exists()  # kept for resume, not finished-looking
    assert not (partial[0] / pipeline.MANIFEST).exists()

    crash["stage"] = None
    calls.clear()
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert calls == ["sft", "dpo"]  # select finished before the crash and is reused
    assert not list(run_dir.glob(".sft.partial-*"))


def test_a_stage_that_fails_before_writing_a_file_leaves_no_partial_dir(fake_stages, tmp_path):
    _, crash = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text("[1]")
    run_dir = tmp_path / "run"
    crash["stage"] = "sft at once"
    with pytest.raises(RuntimeError, match="before writing"):
        pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["logs", "select"]  # no .sft.partial-* left


def test_stage_without_its_upstream_is_an_error(fake_stages, tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    with pytest.raises(RuntimeError, match="stage 'sft' needs the output of stage 'select'"):
        pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[sft]"), tmp_path / "run")


def test_select_fingerprint_follows_a_local_scorer_models_content(tmp_path):
    model_dir = tmp_path / "my-scorer"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"hidden_size": 8}')
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    cfg = _cfg(tmp_path, pool, "selection=deita", f"selection_models.deita_complexity={model_dir}")
    stage = stages.get("select")
    before = pipeline.stage_inputs(cfg, stage, {})
    assert before["models"][str(model_dir)]["config.json"] and before["models"]["tiny:llama"] == "tiny:llama"
    (model_dir / "config.json").write_text('{"hidden_size": 16}')  # retrained in place, same path
    after = pipeline.stage_inputs(cfg, stage, {})
    assert pipeline.hash_json(after) != pipeline.hash_json(before)


def _upstream_seen(run_dir, stage: str) -> list[str]:
    return sorted(json.loads((run_dir / stage / "out.txt").read_text())["upstream"])


def test_optional_upstreams_are_read_when_present_and_join_the_fingerprint(fake_stages, tmp_path):
    calls, _ = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    run_dir = tmp_path / "run"
    first = pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[select,sft,eval]"), run_dir)
    assert calls == ["select", "sft", "eval"]
    assert _upstream_seen(run_dir, "eval") == ["select", "sft"]  # no dpo yet: read without it
    assert set(first["eval"]["inputs"]["upstream"]) == {"select", "sft"}

    calls.clear()
    second = pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[dpo,eval]"), run_dir)
    assert calls == ["dpo", "eval"]  # a new optional upstream changes eval's fingerprint: it re-runs
    assert _upstream_seen(run_dir, "eval") == ["dpo", "select", "sft"]  # finished select/sft are read from disk
    assert second["eval"]["inputs"]["upstream"]["dpo"] == second["dpo"]["fingerprint"]

    calls.clear()
    pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[eval]"), run_dir)
    assert calls == []  # the same upstreams, finished: skipped


def test_a_stage_that_reads_a_model_needs_one(fake_stages, tmp_path):
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    with pytest.raises(RuntimeError, match=r"stage 'eval' needs a model from one of the stages \['sft', 'dpo'\]"):
        pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[select,eval]"), tmp_path / "run")


def test_pipeline_order_follows_the_declared_upstreams():
    order = stages.names()
    assert [n for n in order if n in ("select", "sft", "dpo", "eval")] == ["select", "sft", "dpo", "eval"]
    for stage in stages.pipeline_order():
        required, optional = stages.upstream_of(stage)
        assert all(order.index(up) < order.index(stage.name) for up in required + optional), stage.name
    assert stages.model_stages()[:2] == ["sft", "dpo"] and "eval" not in stages.model_stages()
    eval_required, eval_optional = stages.upstream_of(stages.get("eval"))
    assert eval_required == [] and eval_optional == ["select", *stages.model_stages()]


def test_stages_run_in_pipeline_order_whatever_order_they_are_listed(fake_stages, tmp_path):
    calls, _ = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text("[]")
    pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[dpo,select,sft]"), tmp_path / "run")
    assert calls == ["select", "sft", "dpo"]


@pytest.mark.parametrize("declared, message", [
    ({"a": ("zzz",)}, r"stage 'a' declares unknown upstream stage\(s\) \['zzz'\]"),
    ({"a": ("b",), "b": ("a",)}, r"stage upstreams form a cycle among \['a', 'b'\]"),
])
def test_registry_rejects_unknown_upstreams_and_cycles(monkeypatch, declared, message):
    use_stages(monkeypatch, *[Stage(name, lambda cfg, ctx: {}, "", requires=up) for name, up in declared.items()])
    with pytest.raises(ValueError, match=message):
        stages.pipeline_order()


def test_each_rank_logs_to_its_own_file_in_the_run_dir(fake_stages, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO)  # what train.py's logging config sets
    _, crash = fake_stages
    pool, run_dir = _finished_run(tmp_path)
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "[rank 0]" in log and "rank 0 of 1" in log and "stage dpo: done" in log
    _rerun_crashing_in("dpo", crash, tmp_path, pool, run_dir)
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert "stage dpo: done" in log and "stage dpo stopped on rank 0: RuntimeError: dpo crashed" in log  # appended
    assert not any(type(h).__name__ == "RankFileHandler" for h in logging.getLogger().handlers)  # detached
