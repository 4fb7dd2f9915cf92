"""Row embedders for the diversity filter. ``EMBEDDERS`` maps a config name to a loader.

* ``clm_last``: reference DEITA embedding, last real token's final hidden state of a causal LM;
* ``clm_mean``: the same model, mean-pooled over real tokens;
* ``sentence_transformers``: a sentence-transformers model (e.g. ``packaged:minilm``).

Each loader takes ``(path, **options)`` and returns an object with ``embed_texts(texts) -> float32
[N, D]`` (L2-normalised rows). Rows become text with :func:`.render.render_rows`.
"""

from __future__ import annotations

from functools import partial

from deita.registry import Registry
from deita.selection.embedders.clm import ClmEmbedder
from deita.selection.embedders.render import RENDERERS, render_rows, render_vicuna_dialogue
from deita.selection.embedders.sentence import SentenceEmbedder

EMBEDDERS: Registry = Registry("embedder")
"""Embedder kind → ``loader(path, **options)``."""

EMBEDDERS.register("clm_last")(partial(ClmEmbedder, pooling="last"))
EMBEDDERS.register("clm_mean")(partial(ClmEmbedder, pooling="mean"))
EMBEDDERS.register("sentence_transformers")(SentenceEmbedder)

__all__ = ["EMBEDDERS", "RENDERERS", "ClmEmbedder", "SentenceEmbedder", "render_rows", "render_vicuna_dialogue"]
