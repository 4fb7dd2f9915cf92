"""Preflight (deita/preflight.py): every data source and model of every chosen stage is checked before the
first stage runs; errors name the config key and the path; the check reads only the head of each file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deita import stages
from deita.stages import Stage
from deita.validate import ConfigError
from tests.helpers import compose_config, run_train


def _cfg(tmp_path, *extra):
    return compose_config(["recipe=tiny", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.runs_dir={tmp_path / 'runs'}",
                           *extra])


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _no_tokenizer_model(tmp_path) -> Path:
    folder = tmp_path / "llama-no-tok"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder


def _cli_cases(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    """(case, overrides, the error line's start) for each bad input train.py must stop on before any stage."""
    bad_pref = _write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "c"}])
    bad_prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"nothing": 1}])
    not_gz = tmp_path / "pool.jsonl.gz"
    not_gz.write_text('{"instruction": "a", "output": "b"}\n')
    no_tok = _no_tokenizer_model(tmp_path)
    return [
        ("bad preference file, stages select+sft+dpo", [f"data.preference=[{{path: {bad_pref}}}]"],
         f"data.preference[0].path: {bad_pref}: record 0 (line 1): field 'rejected'"),
        ("missing model folder", ["model.name_or_path=/no/such/llama"], "model.name_or_path: /no/such/llama: no such folder"),
        ("model folder without tokenizer", [f"model.name_or_path={no_tok}"],
         f"model.name_or_path: {no_tok}: has config.json but no tokenizer files"),
        ("hub scorer name while offline", ["selection=deita", "selection_models.deita_quality=no-org/no-such-scorer"],
         "selection.scorer.quality_model: no-org/no-such-scorer: no such local folder; as a hub name it cannot be "
         "downloaded (HF_HUB_OFFLINE is on)"),
        ("missing pool file", [f"data.pool=[{{path: {tmp_path / 'nope.jsonl'}}}]"],
         f"data.pool[0].path: {tmp_path / 'nope.jsonl'}: no such file or folder"),
        ("pool .gz that is not gzip", [f"data.pool=[{{path: {not_gz}}}]"],
         f"data.pool[0].path: {not_gz}: expected gzip data"),
        ("bad eval prompts, stages select+sft+eval", ["stages=[select,sft,eval]", f"data.eval_prompts=[{{path: {bad_prompts}}}]"],
         f"data.eval_prompts[0].path: {bad_prompts}: record 0 (line 1)"),
        ("dpo alone without a finished sft", ["stages=[dpo]"], "stage 'dpo' needs the output of stage 'sft', which is neither in stages"),
    ]


def test_bad_inputs_stop_train_py_before_any_stage(tmp_path, shared_data):
    """Each case as a real train.py subprocess: exit 2, one error line naming key and path, no traceback,
    no stage started (nothing scored, no stage directory), and no run directory left behind."""
    failures = []
    for n, (case, overrides, message) in enumerate(_cli_cases(tmp_path)):
        runs = tmp_path / "runs" / f"case{n}"
        proc = run_train(["recipe=tiny", f"paths.runs_dir={runs}", f"paths.cache_dir={tmp_path / 'cache'}",
                          f"paths.shared_data={shared_data}", *overrides])
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        stage_dirs = [p for p in runs.rglob("*") if p.is_dir() and p.name.lstrip(".").split(".")[0] in stages.names()]
        output = proc.stdout + proc.stderr
        if (proc.returncode != 2 or len(errors) != 1 or not errors[0].startswith(f"error: {message}")
                or "Traceback" in output or "stage select: running" in output or stage_dirs
                or (runs / "tiny").exists() and any((runs / "tiny").iterdir())):
            failures.append(f"{case}: rc {proc.returncode}, errors {errors}, stage dirs {stage_dirs}, tail {output[-600:]}")
    assert not failures, "\n".join(failures)


def test_plan_mode_stops_on_a_bad_data_source_as_a_run_would(tmp_path, shared_data):
    """``plan=true`` streams each local source it counts with the source's own ``on_error``: a typo'd path or
    a bad record (even past preflight's head) is the error a run gives, named by key as preflight names it,
    exit 2, no traceback, no plan printed, no run dir left (real train.py runs)."""
    late_bad = _write_jsonl(tmp_path / "late.jsonl", [{"instruction": "q", "output": "a"}] * 100 + [{"instruction": "q"}])
    cases = [
        ([f"data.pool=[{{path: {tmp_path / 'pool.jsonl'}}}]"], f"data.pool[0].path: {tmp_path / 'pool.jsonl'}: no such file or folder"),
        ([f"data.pool=[{{path: {late_bad}}}]"], f"data.pool[0].path: {late_bad}: record 100 (line 101): field 'output'"),
    ]
    failures = []
    for n, (overrides, message) in enumerate(cases):
        runs = tmp_path / f"runs{n}"
        proc = run_train(["recipe=tiny", "plan=true", f"paths.runs_dir={runs}", f"paths.shared_data={shared_data}", *overrides])
        output = proc.stdout + proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        if (proc.returncode != 2 or len(errors) != 1 or not errors[0].startswith(f"error: {message}")
                or "Traceback" in output or "Plan for" in output or any(runs.rglob("*"))):
            failures.append(f"{overrides}: rc {proc.returncode}, errors {errors}, tail {output[-600:]}")
    assert not failures, "\n".join(failures)


def test_plan_mode_names_each_source_list_by_its_key(tmp_path, shared_data, monkeypatch):
    """The same in process for the other lists plan mode reads and for relative paths: the preference file
    (``data.preference``), the second pool source (index 1), a path relative to the working directory, and
    one without a data suffix (a hub name without the hints plan mode counts it by)."""
    from deita.plan import build_plan

    bad_pref = _write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "p", "chosen": "c"}])
    monkeypatch.chdir(tmp_path)
    pool = f"{shared_data}/instruct/llamafactory_alpaca_en_demo.json"
    cases = [
        ([f"data.preference=[{{path: {bad_pref}}}]"], rf"data.preference\[0\].path: {bad_pref}: record 0 \(line 1\): field 'rejected'"),
        ([f"data.pool=[{{path: {pool}, limit: 5}}, {{path: instruct/pool.jsonl}}]"],
         rf"data.pool\[1\].path: instruct/pool.jsonl: no such file or folder \(relative to the working directory {tmp_path}\)"),
        # no data suffix: a hub name to the reader, which plan mode can count only from its hints (was: 0 rows)
        (["data.pool=[{path: instruct/my_pool}]"], r"data.pool\[0\].path: instruct/my_pool: no such local file or folder; "
         r"as a hub dataset plan mode does not read it: set data.pool\[0\].approx_rows and data.pool\[0\].approx_tokens_per_row"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=f"^{message}"):
            build_plan(_cfg(tmp_path, f"paths.shared_data={shared_data}", *overrides))


def test_preflight_reads_only_the_head_of_a_jsonl_pool(tmp_path):
    """A pool whose record 200 is bad passes preflight (it reads 64 records) and fails the full load: the
    head check is a head check, and the stage's full read still names the record."""
    from deita.data.errors import DataError
    from deita.data.loading import load_rows
    from deita.preflight import HEAD_RECORDS, check_source

    good = {"instruction": "q", "output": "a"}
    pool = _write_jsonl(tmp_path / "pool.jsonl", [good] * 200 + [{"instruction": "q"}] + [good] * 10)
    check_source({"path": str(pool)}, "sft", "data.pool[0].path")
    with pytest.raises(DataError, match="record 200"):
        load_rows(str(pool), kind="sft")
    bad_early = _write_jsonl(tmp_path / "early.jsonl", [good] * (HEAD_RECORDS - 1) + [{"instruction": "q"}])
    with pytest.raises(ConfigError, match=rf"^data.pool\[0\].path: {bad_early}: record {HEAD_RECORDS - 1} \(line {HEAD_RECORDS}\)"):
        check_source({"path": str(bad_early)}, "sft", "data.pool[0].path")


def test_with_on_error_skip_a_head_of_bad_records_reads_on_to_the_first_usable_one(tmp_path, caplog):
    """``on_error: skip`` promises bad records are dropped: a file whose first 70 records are bad passes
    preflight (which reads on, silently: the stage warns with the full count); a file with no usable
    record at all still fails preflight, with the whole count."""
    import logging

    from deita.preflight import HEAD_RECORDS, check_source

    good, bad = {"instruction": "q", "output": "a"}, {"instruction": "q"}
    late = _write_jsonl(tmp_path / "late.jsonl", [bad] * (HEAD_RECORDS + 6) + [good] * 3)
    with caplog.at_level(logging.WARNING):
        check_source({"path": str(late), "on_error": "skip"}, "sft", "data.pool[0].path")
    assert "skipped" not in caplog.text
    with pytest.raises(ConfigError, match=r"record 0 \(line 1\): expected the keys of a known sft format"):  # raise: the head fails at once
        check_source({"path": str(late)}, "sft", "data.pool[0].path")
    all_bad = _write_jsonl(tmp_path / "all_bad.jsonl", [bad] * 5000)
    with pytest.raises(ConfigError, match=r"holds no usable records \(5000 skipped; the first: .*record 0"):
        check_source({"path": str(all_bad), "on_error": "skip"}, "sft", "data.pool[0].path")


def test_train_py_runs_a_pool_whose_first_records_are_bad_with_on_error_skip(tmp_path, shared_data):
    """Through train.py: preflight lets it through, the select stage skips the 70 bad records and says so once."""
    lines = ["{bad json"] * 70 + [json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(20)]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(lines) + "\n")
    proc = run_train(["recipe=tiny", "logger=none", "stages=[select]", "selection.budget=5", f"paths.runs_dir={tmp_path / 'runs'}",
                      f"paths.cache_dir={tmp_path / 'cache'}", f"data.pool=[{{path: {pool}, on_error: skip}}]"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert output.count("skipped 70 bad record(s)") == 1 and "skipped 64" not in output


@pytest.mark.parametrize("suffix", [".json", ".json.gz", ".parquet"])
def test_head_of_large_files_equals_the_first_rows_of_the_full_read(tmp_path, suffix, monkeypatch):
    """The prefix reader of a large .json list (and parquet's first batch) gives exactly the first rows of
    the full parse (the oracle), for a file larger than the prefix."""
    import gzip

    from deita.data import loading, readers

    monkeypatch.setattr(readers, "HEAD_JSON_BYTES", 4096)  # so a small test file counts as large
    records = [{"instruction": f"q{i} é", "output": "a" * (i % 50), "input": ""} for i in range(500)]
    path = tmp_path / f"pool{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=100)
    else:
        text = json.dumps(records, ensure_ascii=False, indent=1)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    head = loading.load_rows(str(path), kind="sft", head=10)
    full = loading.load_rows(str(path), kind="sft")
    assert len(head.rows) == 10 and head.rows == full.rows[:10]


def test_a_json_list_cut_inside_a_record_falls_back_to_the_whole_parse(tmp_path, monkeypatch):
    """When the prefix ends inside the first record, the file is parsed whole (same rows)."""
    from deita.data import loading, readers

    monkeypatch.setattr(readers, "HEAD_JSON_BYTES", 64)
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"instruction": "q" * 200, "output": "a"}] * 3))
    assert loading.load_rows(str(path), kind="sft", head=2).rows == loading.load_rows(str(path), kind="sft").rows[:2]


def test_preflight_is_driven_by_the_stage_registry(tmp_path, monkeypatch):
    """A new stage is preflighted by declaring its inputs: its data key (with its kind) and its model refs."""
    from tests.test_pipeline import use_stages

    from deita.preflight import preflight

    pref = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    cfg = _cfg(tmp_path, f"data.preference=[{{path: {pref}}}]")

    def noop(cfg, ctx):
        return {}

    use_stages(monkeypatch, Stage("kto", noop, "", data_keys=("data.preference",), data_kind="preference",
                                  model_refs=lambda c: {"kto.ref_model": str(tmp_path / "missing-ref")}))
    cfg.stages = ["kto"]
    with pytest.raises(ConfigError, match=rf"^kto.ref_model: {tmp_path / 'missing-ref'}: no such folder$"):
        preflight(cfg)
    use_stages(monkeypatch, Stage("kto", noop, "", data_keys=("data.preference",), data_kind="sft"))
    with pytest.raises(ConfigError, match=r"^data.preference\[0\].path: .*pairs.jsonl: record 0 \(line 1\): expected the keys of a known sft format"):
        preflight(cfg)


def test_model_folder_checks(tmp_path, tiny_llama):
    """What a model folder needs: config.json that parses, tokenizer files; tiny/packaged names by name."""
    from deita.models.resolve import check_model_ref

    check_model_ref(str(tiny_llama), "model.name_or_path")
    check_model_ref("tiny:llama", "model.name_or_path")
    check_model_ref("packaged:minilm", "selection.embedder.model")
    with pytest.raises(ConfigError, match=r"^model.name_or_path: tiny:gpt5: tiny arch must be one of"):
        check_model_ref("tiny:gpt5", "model.name_or_path")
    with pytest.raises(ConfigError, match=r"^model.name_or_path: packaged:gpt5: packaged models are"):
        check_model_ref("packaged:gpt5", "model.name_or_path")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^model.name_or_path: {broken}: its config.json is not valid JSON"):
        check_model_ref(str(broken), "model.name_or_path")
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match=rf"^model.name_or_path: {broken}: is a folder without config.json"):
        check_model_ref(str(broken), "model.name_or_path")
    with pytest.raises(ConfigError, match=rf"is a file, expected a model folder"):
        check_model_ref(str(tiny_llama / "config.json"), "model.name_or_path")


def test_selection_models_are_keyed_by_what_the_method_loads(tmp_path):
    """DEITA's embedder is preflighted only with diversity on, and only the scorers sort_key needs."""
    from deita.stages.select import selection_model_refs

    cfg = _cfg(tmp_path, "selection=deita")
    assert set(selection_model_refs(cfg)) == {"selection.scorer.complexity_model", "selection.scorer.quality_model",
                                              "selection.embedder.model"}
    cfg = _cfg(tmp_path, "selection=deita", "selection.diversity=false", "selection.sort_key=quality")
    assert selection_model_refs(cfg) == {"selection.scorer.quality_model": "tiny:llama"}
    cfg = _cfg(tmp_path, "selection=nuggets", "selection.anchors.embedder_model=tiny:mistral")
    assert selection_model_refs(cfg) == {"selection.model": "tiny:llama", "selection.anchors.embedder_model": "tiny:mistral"}


def test_a_nuggets_anchor_file_is_preflighted(tmp_path, shared_data):
    """A data file named by one key (Nuggets' anchors.path) is checked too, as sft rows, naming the key."""
    from deita.preflight import preflight

    missing = tmp_path / "anchors.jsonl"
    cfg = _cfg(tmp_path, "selection=nuggets", "selection.anchors.method=file", f"selection.anchors.path={missing}",
               "stages=[select]")
    with pytest.raises(ConfigError, match=rf"^selection.anchors.path: {missing}: no such file or folder"):
        preflight(cfg)
    _write_jsonl(missing, [{"prompt": "p", "chosen": "c", "rejected": "r"}])
    with pytest.raises(ConfigError, match=r"^selection.anchors.path: .*record 0 \(line 1\): expected the keys of a known sft format"):
        preflight(cfg)
    _write_jsonl(missing, [{"instruction": "q", "output": "a"}])
    preflight(cfg)


def _finished(run_dir: Path, *names: str) -> Path:
    """``run_dir`` with each stage in ``names`` looking finished (a manifest: all preflight reads of it)."""
    for name in names:
        (run_dir / name).mkdir(parents=True, exist_ok=True)
        (run_dir / name / "manifest.json").write_text(json.dumps({"stage": name, "fingerprint": "an earlier run"}))
    return run_dir


def test_eval_alone_after_select_stops_on_a_bad_pool_before_any_stage(tmp_path, shared_data):
    """``stages=[eval]`` in a run dir where select finished reads ``data.pool`` for its held-out loss: a pool
    file gone since stops train.py in preflight (exit 2, one line naming key and path, no traceback, the eval
    stage never started, nothing written), not after the answers were generated."""
    run_dir = _finished(tmp_path / "run", "select", "sft")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    missing = tmp_path / "moved-away.jsonl"
    proc = run_train(["recipe=tiny", "logger=none", "stages=[eval]", f"paths.cache_dir={tmp_path / 'cache'}",
                      f"paths.shared_data={shared_data}", f"data.pool=[{{path: {missing}}}]", f"hydra.run.dir={run_dir}"])
    output = proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, output[-2000:]
    assert errors == [f"error: data.pool[0].path: {missing}: no such file or folder"], output[-2000:]
    assert "Traceback" not in output and "stage eval" not in output
    after = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.parts[len(run_dir.parts)] not in (".hydra", "logs")
                   and p.suffix != ".log")
    assert after == before


def test_eval_preflights_the_pool_only_when_its_held_out_loss_reads_it(tmp_path, monkeypatch):
    """Without a select stage upstream the held-out loss is skipped, so a bad pool is no error for eval alone;
    with select finished it is, named by its key; with select in ``stages`` too, each source is checked once."""
    from deita import preflight as pf

    bad = _write_jsonl(tmp_path / "pool.jsonl", [{"instruction": "q"}])
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"question_id": 1, "category": "writing", "turns": ["Hi?"]}])
    cfg = _cfg(tmp_path, "stages=[eval]", f"data.pool=[{{path: {bad}}}]", f"data.eval_prompts=[{{path: {prompts}}}]")
    _finished(Path(cfg.run_dir), "sft")
    pf.preflight(cfg)
    _finished(Path(cfg.run_dir), "select")
    with pytest.raises(ConfigError, match=rf"^data.pool\[0\].path: {bad}: record 0 \(line 1\): expected the keys"):
        pf.preflight(cfg)
    checked = []
    monkeypatch.setattr(pf, "check_source", lambda source, kind, key: checked.append((key, kind)))
    cfg.stages = ["select", "sft", "eval"]
    pf.preflight(cfg)
    assert sorted(checked) == sorted([("data.pool[0].path", "sft"), ("data.eval_prompts[0].path", "prompts")])
