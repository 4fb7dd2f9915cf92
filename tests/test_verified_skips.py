"""A finished stage is skipped only when the files its manifest lists are still there and unchanged; a
missing or changed file re-runs it (and says which), and a damaged upstream read from disk is an error."""

from __future__ import annotations

import json
import logging
import os

import pytest

from deita import artifacts, pipeline
from tests.helpers import run_train, shared_paths
from tests.test_pipeline import _cfg, fake_stages  # noqa: F401  (fixture)


def test_listing_hashes_small_files_and_samples_large_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "FULL_HASH_MAX_BYTES", 1000)
    monkeypatch.setattr(artifacts, "SAMPLE_BYTES", 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "small.txt").write_text("abc")
    (tmp_path / "sub" / "big.bin").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "manifest.json").write_text("{}")
    listed = artifacts.list_artifacts(tmp_path, exclude=("manifest.json",))
    assert set(listed) == {"small.txt", "sub/big.bin"}
    assert set(listed["small.txt"]) == {"size", "sha256"} and set(listed["sub/big.bin"]) == {"size", "sample_sha256"}
    assert artifacts.artifact_problem(tmp_path, listed) is None

    os.utime(tmp_path / "sub" / "big.bin", (1, 1))  # a copy without -t: new mtimes, same bytes
    (tmp_path / "extra.md").write_text("notes added by hand")
    assert artifacts.artifact_problem(tmp_path, listed) is None

    (tmp_path / "small.txt").write_text("abd")  # same size, other bytes
    assert "small.txt changed (content differs" in artifacts.artifact_problem(tmp_path, listed)
    (tmp_path / "small.txt").write_text("abc")
    big = tmp_path / "sub" / "big.bin"
    data = bytearray(big.read_bytes())
    data[-1] ^= 1  # the last bytes of a large file
    big.write_bytes(bytes(data))
    assert "big.bin changed (first/last MiB differ" in artifacts.artifact_problem(tmp_path, listed)
    big.write_bytes(bytes(data[:100]))
    assert "big.bin changed (size 2560 -> 100 bytes)" in artifacts.artifact_problem(tmp_path, listed)
    big.unlink()
    assert artifacts.artifact_problem(tmp_path, listed) == f"{big} is missing"


def test_a_missing_or_changed_artifact_reruns_its_stage_only(fake_stages, tmp_path, caplog):  # noqa: F811
    calls, _ = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text("[1]")
    run_dir = tmp_path / "run"
    first = pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert first["select"]["artifacts"]["out.txt"]["size"] > 0

    calls.clear()
    (run_dir / "select" / "out.txt").unlink()
    caplog.set_level(logging.INFO, logger="deita.pipeline")
    second = pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert calls == ["select"]  # same fingerprint, so sft and dpo stay valid and are skipped
    assert f"stage select: unchanged inputs, but {run_dir / 'select' / 'out.txt'} is missing; running it again" in caplog.text
    assert second["select"]["fingerprint"] == first["select"]["fingerprint"]
    assert (run_dir / "select" / "out.txt").is_file()

    calls.clear()
    (run_dir / "sft" / "out.txt").write_text("edited")
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert calls == ["sft"]

    calls.clear()
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert calls == []


def test_a_damaged_upstream_read_from_disk_is_an_error_naming_the_file(fake_stages, tmp_path):  # noqa: F811
    pool = tmp_path / "pool.json"
    pool.write_text("[1]")
    run_dir = tmp_path / "run"
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    (run_dir / "sft" / "out.txt").unlink()
    with pytest.raises(pipeline.StageInputError, match=r"stage 'dpo' reads the output of stage 'sft' .*"
                       r"/out.txt is missing; add 'sft' to stages"):
        pipeline.run_pipeline(_cfg(tmp_path, pool, "stages=[dpo]", "dpo.beta=0.3"), run_dir)


def test_a_manifest_without_an_artifact_list_is_trusted(fake_stages, tmp_path):  # noqa: F811
    calls, _ = fake_stages
    pool = tmp_path / "pool.json"
    pool.write_text("[1]")
    run_dir = tmp_path / "run"
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    manifest = json.loads((run_dir / "select" / "manifest.json").read_text())
    del manifest["artifacts"]  # written before artifact lists existed
    (run_dir / "select" / "manifest.json").write_text(json.dumps(manifest))
    calls.clear()
    pipeline.run_pipeline(_cfg(tmp_path, pool), run_dir)
    assert calls == []


def test_a_deleted_selection_is_redone_by_train_py(tmp_path, shared_data):
    args = ["recipe=tiny", "logger=none", "stages=[select]", "selection.budget=16", *shared_paths(tmp_path, shared_data)]
    assert (first := run_train(args)).returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    selected = run_dir / "select" / "selected.jsonl"
    before = selected.read_bytes()
    selected.unlink()
    again = run_train(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"stage select: unchanged inputs, but {selected} is missing; running it again" in again.stdout + again.stderr
    assert selected.read_bytes() == before


@pytest.mark.slow  # four train.py runs through DPO: 40-80 s on 2 cores
def test_deleted_selection_and_sft_weights_are_redone_by_train_py(tmp_path, shared_data):
    """Before: the re-run said "unchanged" with rc 0 and DPO then failed forever."""
    pref = f"data.preference=[{{path: {shared_data}/preference/llamafactory_dpo_en_demo.json, limit: 16}}]"
    args = ["recipe=tiny", "logger=none", "stages=[select,sft,dpo]", "selection.budget=16", "sft.max_length=128",
            "dpo.max_length=128", pref, *shared_paths(tmp_path, shared_data)]
    assert (first := run_train(args)).returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    weights = run_dir / "sft" / "model" / "model.safetensors"
    before = weights.read_bytes()

    (run_dir / "select" / "selected.jsonl").unlink()
    again = run_train(args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"stage select: unchanged inputs, but {run_dir / 'select' / 'selected.jsonl'} is missing; running it again" in log
    assert "stage sft: unchanged" in log and "stage dpo: unchanged" in log
    assert (run_dir / "select" / "selected.jsonl").is_file()

    weights.unlink()
    only_dpo = run_train([*args, "stages=[dpo]"])  # reads the SFT model from disk
    assert only_dpo.returncode == 2 and "Traceback" not in only_dpo.stderr
    assert f"{weights} is missing; add 'sft' to stages" in only_dpo.stderr

    dpo_weights = run_dir / "dpo" / "model" / "model.safetensors"
    dpo_weights.unlink()
    redo = run_train(args)
    assert redo.returncode == 0, redo.stderr[-3000:]
    log = redo.stdout + redo.stderr
    assert f"stage sft: unchanged inputs, but {weights} is missing; running it again" in log
    assert weights.read_bytes() == before  # the same training, redone
    assert f"stage dpo: unchanged inputs, but {dpo_weights} is missing; running it again" in log
    assert "stage dpo: done" in log and dpo_weights.is_file()  # DPO trains from the redone SFT model
