"""Training stages on TRL 1.x: global batch held constant, LoRA merged on save, packing, assistant-only
loss, DPO from an SFT artifact, resume from the last checkpoint of an interrupted run, W&B run naming.

The stage tests run the real pipeline (``run_pipeline`` → ``run_sft_stage`` / ``run_dpo_stage``) in
process on the tiny random Llama, from a run directory whose ``select/`` holds a small ``selected.jsonl``
and a manifest, so no selection model runs. TRL's trainer classes are wrapped (never replaced) to keep a
handle on the trainer the stage built.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deita.training.common import gradient_accumulation_steps, trainer_arguments
from tests.helpers import compose_config

ALPACA = "instruct/llamafactory_alpaca_en_demo.json"
DPO_PAIRS = "preference/llamafactory_dpo_en_demo.json"


# ---------------------------------------------------------------------------------------------------
# 1. Global batch held constant across process counts
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 8])
@pytest.mark.parametrize("global_batch,per_device", [(512, 2), (128, 4), (32, 1), (8, 1)])
def test_accumulation_keeps_global_batch_exact(world, global_batch, per_device):
    accum = gradient_accumulation_steps(global_batch, per_device, world)
    assert isinstance(accum, int) and accum >= 1
    assert world * per_device * accum == global_batch


def test_accumulation_hand_values():
    assert [gradient_accumulation_steps(512, 2, w) for w in (1, 2, 8)] == [256, 128, 32]
    assert [gradient_accumulation_steps(32, 1, w) for w in (1, 2, 8)] == [32, 16, 4]


@pytest.mark.parametrize("global_batch,per_device,world", [(8, 4, 8), (10, 4, 1), (512, 3, 2), (6, 1, 4)])
def test_accumulation_that_cannot_divide_names_the_numbers(global_batch, per_device, world):
    with pytest.raises(ValueError) as err:
        gradient_accumulation_steps(global_batch, per_device, world)
    msg = str(err.value)
    for number in (global_batch, per_device, world, per_device * world):
        assert str(number) in msg
    assert "global_batch_size" in msg and "per_device_batch_size" in msg and "world_size" in msg


@pytest.fixture(scope="module")
def mistral_cfg():
    return compose_config(["recipe=mistral_deita"])


@pytest.mark.parametrize("world,accum", [(1, 256), (2, 128), (8, 32)])
def test_trainer_arguments_for_recipe_hold_global_batch(mistral_cfg, tmp_path, world, accum):
    node = mistral_cfg.sft
    assert (node.global_batch_size, node.per_device_batch_size) == (512, 2)
    kwargs = trainer_arguments(node, tmp_path, world_size=world, seed=42, report_to="none", run_name="r",
                               eval_enabled=False)
    assert kwargs["gradient_accumulation_steps"] == accum
    assert kwargs["per_device_train_batch_size"] == 2
    assert world * kwargs["per_device_train_batch_size"] * kwargs["gradient_accumulation_steps"] == 512
    # the recipe's own trainer args pass through
    assert kwargs["learning_rate"] == 2.0e-5 and kwargs["num_train_epochs"] == 6 and kwargs["save_steps"] == 20
    assert kwargs["output_dir"] == str(tmp_path / "checkpoints")
    dpo = trainer_arguments(mistral_cfg.dpo, tmp_path, world_size=world, seed=42, report_to="none", run_name="r",
                            eval_enabled=False)
    assert world * dpo["per_device_train_batch_size"] * dpo["gradient_accumulation_steps"] == 32


@pytest.mark.parametrize("cuda", [True, False])
def test_recipe_bf16_and_checkpointing_stay_on_only_with_cuda(mistral_cfg, tmp_path, monkeypatch, cuda):
    from deita.training import common

    assert mistral_cfg.sft.args.bf16 is True and mistral_cfg.sft.args.gradient_checkpointing is True
    monkeypatch.setattr(common, "has_accelerator", lambda: cuda)
    kwargs = trainer_arguments(mistral_cfg.sft, tmp_path, world_size=1, seed=42, report_to="none", run_name="r",
                               eval_enabled=False)
    assert kwargs["bf16"] is cuda and kwargs["gradient_checkpointing"] is cuda and not kwargs.get("fp16")
    assert kwargs.get("use_cpu", False) is not cuda


def test_trainer_arguments_build_a_real_sft_config(mistral_cfg, tmp_path):
    import torch
    from trl import SFTConfig

    # world size 1 here: a larger one makes TrainingArguments look for a live process group
    args = SFTConfig(**trainer_arguments(mistral_cfg.sft, tmp_path, world_size=1, seed=42, report_to="none",
                                         run_name="r", eval_enabled=False))
    assert args.gradient_accumulation_steps == 256 and args.per_device_train_batch_size == 2
    # the recipe asks for bf16 and gradient checkpointing: kept on a CUDA machine, turned off without one
    cuda = torch.cuda.is_available()
    assert args.bf16 is cuda and args.gradient_checkpointing is cuda and args.max_length == 2048


def test_trainer_arguments_reject_indivisible_world(mistral_cfg, tmp_path):
    with pytest.raises(ValueError, match="512.*2.*3"):
        trainer_arguments(mistral_cfg.sft, tmp_path, world_size=3, seed=42, report_to="none", run_name="r",
                          eval_enabled=False)


# ---------------------------------------------------------------------------------------------------
# Stage helpers
# ---------------------------------------------------------------------------------------------------

def _fake_select(run_dir: Path, shared_data: Path, n_rows: int) -> list[dict]:
    """A finished ``select/`` artifact: ``n_rows`` canonical rows of the Alpaca demo and a manifest."""
    from deita.data.loading import load_rows, write_jsonl

    rows = load_rows(str(shared_data / ALPACA), limit=n_rows).rows
    select = run_dir / "select"
    write_jsonl(rows, select / "selected.jsonl")
    manifest = {"stage": "select", "fingerprint": "test-select-fp", "status": "complete",
                "config": {"selection": {"method": "random", "budget": n_rows}},
                "inputs": {"data": [{"file": ALPACA}]}, "selected_rows": n_rows}
    (select / "manifest.json").write_text(json.dumps(manifest))
    return rows


def _cfg(tmp_path: Path, shared_data: Path, *overrides: str):
    logger = [] if any(o.startswith("logger=") for o in overrides) else ["logger=none"]
    return compose_config(["recipe=tiny", *logger, f"paths.runs_dir={tmp_path / 'runs'}",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.shared_data={shared_data}",
                           "sft.max_length=128", "dpo.max_length=128", *overrides])


@pytest.fixture
def trainers(monkeypatch):
    """Record every TRL trainer a stage builds (the real classes, subclassed only to keep a handle)."""
    import trl

    built: list = []
    for name in ("SFTTrainer", "DPOTrainer"):
        base = getattr(trl, name)

        def __init__(self, *args, _base=base, **kwargs):
            _base.__init__(self, *args, **kwargs)
            built.append(self)

        monkeypatch.setattr(trl, name, type(name, (base,), {"__init__": __init__}))
    return built


def _state_dict(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


# ---------------------------------------------------------------------------------------------------
# 2. SFT variants and DPO on the tiny model
# ---------------------------------------------------------------------------------------------------

def test_sft_lora_saves_a_merged_model_that_differs_from_base(tmp_path, shared_data, trainers):
    import torch
    from transformers import AutoModelForCausalLM

    from deita.models.resolve import resolve_model
    from deita.pipeline import run_pipeline

    run_dir = tmp_path / "run"
    _fake_select(run_dir, shared_data, 16)
    cfg = _cfg(tmp_path, shared_data, "stages=[sft]", "sft.peft.enabled=true", "sft.peft.r=4",
               "+sft.args.max_steps=2", "sft.args.warmup_steps=0")
    manifest = run_pipeline(cfg, run_dir)["sft"]

    (trainer,) = trainers
    assert type(trainer.model).__name__.startswith("Peft")  # TRL trained adapters, not all weights
    assert manifest["metrics"]["global_steps"] == 2 and math.isfinite(manifest["metrics"]["train_loss"])
    model_dir = run_dir / "sft" / "model"
    assert not (model_dir / "adapter_config.json").exists()
    merged = _state_dict(model_dir)
    assert not [k for k in merged if "lora" in k or "base_layer" in k]  # merged, plain checkpoint keys
    base = _state_dict(Path(resolve_model("tiny:llama", cfg.paths.cache_dir)))
    assert merged.keys() == base.keys()
    # all-linear LoRA: attention/MLP projections moved; embeddings, norms and the output head did not
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert not [k for k in changed if "embed_tokens" in k or "norm" in k or k.startswith("lm_head")]

    loaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(loaded.state_dict()[q], merged[q])
    assert "SFT" in (model_dir / "README.md").read_text()


def test_sft_packing_packs_rows_and_trains(tmp_path, shared_data, trainers):
    from deita.pipeline import run_pipeline

    run_dir = tmp_path / "run"
    _fake_select(run_dir, shared_data, 24)
    cfg = _cfg(tmp_path, shared_data, "stages=[sft]", "sft.packing=true", "sft.max_length=512",
               "+sft.args.max_steps=1")
    manifest = run_pipeline(cfg, run_dir)["sft"]
    (trainer,) = trainers
    assert trainer.args.packing is True
    ds = trainer.train_dataset
    lengths = [len(ids) for ids in ds["input_ids"]]
    assert len(ds) < 24 and max(lengths) == 512  # 24 conversations went into fewer, fuller sequences
    assert any(len(seqs) > 1 for seqs in ds["seq_lengths"])  # some sequence holds several conversations
    assert all(sum(seqs) == n for seqs, n in zip(ds["seq_lengths"], lengths))
    assert manifest["metrics"]["global_steps"] == 1 and math.isfinite(manifest["metrics"]["train_loss"])
    assert manifest["train_rows"] == 24


@pytest.mark.parametrize("assistant_only", [True, False])
def test_sft_assistant_only_loss_labels_and_finite_loss(tmp_path, shared_data, trainers, assistant_only):
    from deita.pipeline import run_pipeline

    run_dir = tmp_path / "run"
    rows = _fake_select(run_dir, shared_data, 8)
    cfg = _cfg(tmp_path, shared_data, "stages=[sft]", f"sft.assistant_only_loss={str(assistant_only).lower()}",
               "sft.global_batch_size=4", "+sft.args.max_steps=1")
    manifest = run_pipeline(cfg, run_dir)["sft"]
    assert math.isfinite(manifest["metrics"]["train_loss"])
    (trainer,) = trainers
    assert trainer.args.assistant_only_loss is assistant_only
    example = trainer.train_dataset[0]
    ids, labels = example["input_ids"], example["labels"]
    kept = [i for i, lab in zip(ids, labels) if lab != -100]
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))
    if not assistant_only:
        assert kept == ids
        return
    # loss only on the assistant's tokens: the prompt is masked, the answer is not
    assert 0 < len(kept) < len(ids) and labels[0] == -100
    text = trainer.processing_class.decode(kept)
    user, answer = rows[0]["messages"][-2]["content"], rows[0]["messages"][-1]["content"]
    assert answer[:20] in text and user[:20] not in text


def test_rows_kept_warns_when_trl_drops_rows(caplog):
    from types import SimpleNamespace

    from deita.training.common import rows_kept

    assert rows_kept(SimpleNamespace(train_dataset=[0] * 8), 8, "rows") == 8 and not caplog.records
    assert rows_kept(SimpleNamespace(train_dataset=[0] * 5), 8, "preference pairs") == 5
    assert "dropped 3 of 8 preference pairs" in caplog.text


def test_dpo_lora_from_sft_artifact(tmp_path, shared_data, trainers, caplog):
    import torch

    from deita.pipeline import run_pipeline

    run_dir = tmp_path / "run"
    _fake_select(run_dir, shared_data, 8)
    cfg = _cfg(tmp_path, shared_data, "stages=[sft,dpo]", "sft.global_batch_size=4", "+sft.args.max_steps=1",
               f"data.preference=[{{path: {shared_data / DPO_PAIRS}, limit: 8}}]",
               "dpo.peft.enabled=true", "dpo.peft.r=4", "dpo.global_batch_size=4", "dpo.per_device_batch_size=2",
               "+dpo.args.max_steps=2", "dpo.args.warmup_steps=0", "dpo.args.learning_rate=1e-3")
    manifests = run_pipeline(cfg, run_dir)
    sft_trainer, dpo_trainer = trainers
    assert type(dpo_trainer.model).__name__.startswith("Peft")
    assert dpo_trainer.ref_model is None  # with adapters, the reference is the SFT model with them disabled
    dpo = manifests["dpo"]
    assert dpo["inputs"]["upstream"]["sft"] == manifests["sft"]["fingerprint"]
    assert dpo["train_pairs"] == 8 and dpo["metrics"]["global_steps"] == 2
    # at max_length 128, TRL drops the pairs whose prompt alone fills it; the manifest and the log say so
    assert dpo["trained_pairs"] == len(dpo_trainer.train_dataset) < 8
    assert f"dropped {8 - dpo['trained_pairs']} of 8 preference pairs" in caplog.text
    assert manifests["sft"]["trained_rows"] == 8
    assert math.isfinite(dpo["metrics"]["train_loss"])
    assert dpo["gradient_accumulation_steps"] == 2

    sft_weights, dpo_weights = _state_dict(run_dir / "sft" / "model"), _state_dict(run_dir / "dpo" / "model")
    assert sft_weights.keys() == dpo_weights.keys()  # merged: no adapter keys
    changed = {k for k in sft_weights if not torch.equal(sft_weights[k], dpo_weights[k])}
    assert any("v_proj" in k for k in changed)
    assert not [k for k in changed if "embed_tokens" in k or k.startswith("lm_head")]
    card = (run_dir / "dpo" / "model" / "README.md").read_text()
    assert manifests["sft"]["fingerprint"] in card


# ---------------------------------------------------------------------------------------------------
# 3. Resume an interrupted stage from its last checkpoint
# ---------------------------------------------------------------------------------------------------

def _with_callback(monkeypatch, callback) -> None:
    """Make every SFTTrainer the stage builds carry ``callback``."""
    import trl

    base = trl.SFTTrainer

    def __init__(self, *args, **kwargs):
        base.__init__(self, *args, **kwargs)
        self.add_callback(callback)

    monkeypatch.setattr(trl, "SFTTrainer", type("SFTTrainer", (base,), {"__init__": __init__}))



def _crash_after_save(step: int):
    """A TrainerCallback class that raises KeyboardInterrupt right after checkpoint-``step`` is saved."""
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt(f"killed after checkpoint-{step}")

    return CrashAfterSave


def _step_recorder_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _StepRecorder(_step_recorder_base()):
    """Records the step training starts at and every step it ends."""

    def __init__(self):
        self.started_at, self.steps = None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started_at = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_interrupted_sft_resumes_from_last_checkpoint(tmp_path, shared_data, monkeypatch, caplog):
    from deita.pipeline import run_pipeline

    CrashAfterSave, Steps = _crash_after_save(2), _StepRecorder

    run_dir = tmp_path / "run"
    _fake_select(run_dir, shared_data, 16)
    # 16 rows, 4 per optimizer step: 4 steps, a checkpoint after each
    cfg = _cfg(tmp_path, shared_data, "stages=[sft]", "sft.global_batch_size=4", "+sft.args.max_steps=4",
               "+sft.args.save_steps=1", "sft.args.warmup_steps=0")

    with monkeypatch.context() as m:
        _with_callback(m, CrashAfterSave())
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, run_dir)
    (partial,) = run_dir.glob(".sft.partial-*")
    assert not (run_dir / "sft").exists()  # nothing that looks finished
    ckpts = sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-1", "checkpoint-2"]
    state = json.loads((partial / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2

    steps = Steps()
    caplog.set_level("INFO", logger="deita.training.common")
    _with_callback(monkeypatch, steps)
    manifest = run_pipeline(cfg, run_dir)["sft"]
    assert f"resuming from {partial / 'checkpoints' / 'checkpoint-2'}" in caplog.text
    assert steps.started_at == 2 and steps.steps == [3, 4]  # picked up at step 2, not 0
    assert manifest["metrics"]["global_steps"] == 4
    assert manifest["fingerprint"] == partial.name.split("partial-")[1]  # the same stage, finished
    assert not list(run_dir.glob(".sft.partial-*")) and not (run_dir / "sft" / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["truncate model.safetensors", "truncate trainer_state.json", "delete optimizer.pt"])
def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, shared_data, monkeypatch, caplog, damage):
    """Before: the newest checkpoint-N was taken as is and every retry crashed. Now the newest *complete*
    one is used, the broken one is named in the log and removed, and training still ends at step 4."""
    from deita.pipeline import run_pipeline

    CrashAfterSave, Steps = _crash_after_save(3), _StepRecorder

    run_dir = tmp_path / "run"
    _fake_select(run_dir, shared_data, 16)
    cfg = _cfg(tmp_path, shared_data, "stages=[sft]", "sft.global_batch_size=4", "+sft.args.max_steps=4",
               "+sft.args.save_steps=1", "sft.args.warmup_steps=0", "+sft.args.save_total_limit=3")
    with monkeypatch.context() as m:
        _with_callback(m, CrashAfterSave())
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(cfg, run_dir)
    (partial,) = run_dir.glob(".sft.partial-*")
    newest = partial / "checkpoints" / "checkpoint-3"
    action, name = damage.split()
    target = newest / name
    if action == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        target.unlink()

    steps = Steps()
    caplog.set_level("INFO", logger="deita.training")
    _with_callback(monkeypatch, steps)
    manifest = run_pipeline(cfg, run_dir)["sft"]
    assert f"checkpoint {newest} is incomplete ({name}" in caplog.text or \
        f"checkpoint {newest} is incomplete (optimizer state missing" in caplog.text
    assert f"resuming from {partial / 'checkpoints' / 'checkpoint-2'}" in caplog.text
    assert steps.started_at == 2 and steps.steps == [3, 4]
    assert manifest["metrics"]["global_steps"] == 4


# ---------------------------------------------------------------------------------------------------
# 4. W&B: one offline run per stage, named <recipe>/<overrides>/<stage>, grouped by recipe
# ---------------------------------------------------------------------------------------------------

def test_wandb_offline_run_name_group_and_config(tmp_path, shared_data, monkeypatch):
    from omegaconf import OmegaConf
    from transformers import TrainerCallback

    from deita.pipeline import run_pipeline

    class SeeRun(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            import wandb

            run = wandb.run
            self.name, self.group, self.job_type, self.mode = run.name, run.group, run.job_type, run.offline
            self.config = dict(run.config)

    monkeypatch.setenv("WANDB_MODE", "offline")
    seen = SeeRun()
    _with_callback(monkeypatch, seen)
    cfg = _cfg(tmp_path, shared_data, "logger=wandb", "stages=[sft]", "sft.global_batch_size=4",
               "+sft.args.max_steps=1", "seed=7")
    run_dir = Path(cfg.run_dir)
    assert run_dir.parent == tmp_path / "runs" / "tiny"
    _fake_select(run_dir, shared_data, 8)
    run_pipeline(cfg, run_dir)

    expected = f"tiny/{run_dir.name}/sft"  # <recipe>/<overrides>/<stage>
    assert "seed=7" in run_dir.name and "sft.global_batch_size=4" in run_dir.name
    assert (seen.name, seen.group, seen.job_type, seen.mode) == (expected, "tiny", "sft", True)
    # the whole resolved Hydra config is the run's config (HF adds its trainer arguments beside it)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert {k: seen.config[k] for k in resolved} == resolved
    assert seen.config["sft"]["global_batch_size"] == 4 and seen.config["recipe_name"] == "tiny"
    assert seen.config["gradient_accumulation_steps"] == 1  # HF's trainer arguments in the same run

    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    # wandb 0.31 writes no files/config.yaml offline; the run record in the .wandb log carries name and config
    (log_file,) = offline.glob("run-*.wandb")
    raw = log_file.read_bytes()
    assert expected.encode() in raw and b"selection_models" in raw and b"deita_complexity" in raw
