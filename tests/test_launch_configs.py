"""launch/: accelerate configs parse with accelerate's own loader, DeepSpeed JSONs validate, cpu.yaml really
gives 2 ranks, and the SLURM script builds the right ``accelerate launch`` line on every node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = REPO_ROOT / "launch"
SBATCH = LAUNCH / "slurm_multinode.sbatch"

EXPECTED_TYPE = {
    "multi_gpu.yaml": "MULTI_GPU",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
    "deepspeed_zero3_offload.yaml": "DEEPSPEED",
    "fsdp.yaml": "FSDP",
    "cpu.yaml": "MULTI_GPU",  # deliberately: MULTI_CPU starts one process (see the file's comment)
}
DS_STAGE = {"deepspeed_zero2.yaml": 2, "deepspeed_zero3.yaml": 3, "deepspeed_zero3_offload.yaml": 3}
#: Keys accelerate rejects next to a deepspeed_config_file (accelerate DeepSpeedPlugin._deepspeed_config_checks).
DS_FILE_CONFLICTS = {"gradient_accumulation_steps", "gradient_clipping", "zero_stage", "offload_optimizer_device",
                     "offload_param_device", "offload_param_nvme_path", "offload_optimizer_nvme_path",
                     "zero3_save_16bit_model"}


def test_every_yaml_is_listed():
    assert sorted(p.name for p in LAUNCH.glob("*.yaml")) == sorted(EXPECTED_TYPE)


@pytest.mark.parametrize("name", sorted(EXPECTED_TYPE))
def test_yaml_parses_with_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(LAUNCH / name))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == EXPECTED_TYPE[name]
    assert cfg.num_machines == 1 and cfg.machine_rank == 0
    assert cfg.num_processes == (2 if name == "cpu.yaml" else 8)
    raw = yaml.safe_load((LAUNCH / name).read_text())
    if name in DS_STAGE:
        ds = cfg.deepspeed_config
        path = REPO_ROOT / ds["deepspeed_config_file"]  # relative to the repo root, where we launch from
        assert path.is_file(), f"{name}: {ds['deepspeed_config_file']} does not exist from the repo root"
        assert not (DS_FILE_CONFLICTS & set(ds)) and "mixed_precision" not in raw, name
        assert ds["zero3_init_flag"] is (DS_STAGE[name] == 3)
        assert json.loads(path.read_text())["zero_optimization"]["stage"] == DS_STAGE[name]
    if name == "fsdp.yaml":
        assert cfg.fsdp_config["fsdp_version"] == 2


@pytest.mark.parametrize("name", ["ds_zero2.json", "ds_zero3.json", "ds_zero3_offload.json"])
def test_deepspeed_json_fields(name):
    cfg = json.loads((LAUNCH / name).read_text())
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert cfg[key] == "auto", f"{name}: {key} must be 'auto' so the trainer fills it"
    assert cfg["bf16"]["enabled"] == "auto" and cfg["fp16"]["enabled"] == "auto"
    zero = cfg["zero_optimization"]
    offload = name.endswith("offload.json")
    assert zero["offload_optimizer"]["device"] == ("cpu" if offload else "none")
    if zero["stage"] == 3:
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert zero["offload_param"]["device"] == ("cpu" if offload else "none")
    # The trainer's own "auto" resolution (accelerate + transformers) accepts the file.
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    hf = HfTrainerDeepSpeedConfig(str(LAUNCH / name))
    assert hf.get_value("zero_optimization.stage") == zero["stage"]
    assert hf.is_offload() is offload


@pytest.mark.parametrize("name", ["ds_zero2.json", "ds_zero3.json", "ds_zero3_offload.json"])
def test_deepspeed_json_validates_with_deepspeed(name):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    zero = json.loads((LAUNCH / name).read_text())["zero_optimization"]
    # "auto" values are replaced by the trainer before DeepSpeed sees them; give them numbers here.
    resolved = {k: (1000 if v == "auto" else v) for k, v in zero.items()}
    parsed = DeepSpeedZeroConfig(**resolved)
    assert int(parsed.stage) == zero["stage"]


def test_cpu_yaml_gives_two_gloo_ranks(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import json, os, sys
        from accelerate import Accelerator
        acc = Accelerator()
        out = {"rank": acc.process_index, "world": acc.num_processes, "type": str(acc.distributed_type),
               "backend": acc.state.backend}
        open(os.path.join(sys.argv[1], f"rank{acc.process_index}.json"), "w").write(json.dumps(out))
    """))
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    env = dict(os.environ, ACCELERATE_USE_CPU="1")
    proc = subprocess.run([accelerate, "launch", "--config_file", "launch/cpu.yaml", str(probe), str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks == [{"rank": r, "world": 2, "type": "DistributedType.MULTI_CPU", "backend": "gloo"}
                     for r in range(2)]


# ----------------------------------------------------------------------------------------------- SLURM

STUBS = {
    # srun: run the command once per node, like one task per node, with that task's SLURM_PROCID.
    "srun": """#!/bin/bash
        while [[ "$1" == -* ]]; do shift; done
        for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
    """,
    "scontrol": """#!/bin/bash
        [[ "$1 $2" == "show hostnames" ]] || exit 3
        [[ "$3" == "gpu-[07-08]" ]] || { echo "unexpected nodelist $3" >&2; exit 4; }
        printf 'gpu-07\\ngpu-08\\n'
    """,
    # accelerate: record argv, one argument per line, in a file per machine rank.
    "accelerate": """#!/bin/bash
        rank=""; prev=""
        for a in "$@"; do [[ "$prev" == "--machine_rank" ]] && rank=$a; prev=$a; done
        printf '%s\\n' "$@" > "$STUB_OUT/accelerate.$rank"
    """,
}


@pytest.fixture
def slurm_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(textwrap.dedent(body))
        (bin_dir / name).chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", STUB_OUT=str(out), SLURM_JOB_NODELIST="gpu-[07-08]",
               SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4", SLURM_JOB_ID="1234", SLURM_PROCID="0",
               SLURM_SUBMIT_DIR=str(REPO_ROOT))
    return env, out


def test_sbatch_syntax():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_sbatch_builds_accelerate_command(slurm_env, tmp_path):
    env, out = slurm_env
    overrides = ["sft.args.learning_rate=1e-5", "data.name='two words'", "+tag=a;b"]
    proc = subprocess.run(["bash", str(SBATCH), "mistral_deita", *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for rank in (0, 1):
        argv = (out / f"accelerate.{rank}").read_text().splitlines()
        assert argv == [
            "launch", "--config_file", "launch/deepspeed_zero2.yaml", "--num_machines", "2",
            "--num_processes", "8", "--main_process_ip", "gpu-07", "--main_process_port", "29500",
            "--machine_rank", str(rank), "train.py", "recipe=mistral_deita", *overrides,
        ]


def test_sbatch_env_overrides_and_errors(slurm_env, tmp_path):
    env, out = slurm_env
    env.update(ACCELERATE_CONFIG="launch/deepspeed_zero3.yaml", GPUS_PER_NODE="2", MAIN_PROCESS_PORT="6000")
    proc = subprocess.run(["bash", str(SBATCH), "tiny"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = (out / "accelerate.1").read_text().splitlines()
    assert argv[argv.index("--config_file") + 1] == "launch/deepspeed_zero3.yaml"
    assert argv[argv.index("--num_processes") + 1] == "4"
    assert argv[argv.index("--main_process_port") + 1] == "6000"

    no_recipe = subprocess.run(["bash", str(SBATCH)], env=env, capture_output=True, text=True)
    assert no_recipe.returncode == 2 and "usage" in no_recipe.stderr
    env["ACCELERATE_CONFIG"] = "launch/nope.yaml"
    missing = subprocess.run(["bash", str(SBATCH), "tiny"], env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr
    del env["SLURM_JOB_NODELIST"]
    outside = subprocess.run(["bash", str(SBATCH), "tiny"], env=env, capture_output=True, text=True)
    assert outside.returncode != 0 and "SLURM_JOB_NODELIST" in outside.stderr


@pytest.mark.parametrize("var", ["GPUS_PER_NODE", "MAIN_PROCESS_PORT", "SLURM_NNODES"])
def test_sbatch_numbers_from_the_environment_are_checked_before_arithmetic(slurm_env, tmp_path, var):
    """``$(( ))`` evaluates its operands: an unchecked 'a[$(cmd)]' would run cmd."""
    env, out = slurm_env
    marker = tmp_path / "injected"
    env[var] = f"a[$(touch {marker})]"
    proc = subprocess.run(["bash", str(SBATCH), "tiny"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"{var} must be a positive integer" in proc.stderr
    assert not marker.exists() and not list(out.iterdir())
