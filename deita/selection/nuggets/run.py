"""Golden scores of a pool: anchors, token ids, zero-shot once, sharded one-shot pass, content cache.

Called by :class:`deita.selection.methods.nuggets.NuggetsSelector`; kept apart so the method module
stays import-light. Every rank runs the same code; the anchor embeddings and the one-shot log-prob sums
are chunked stores (:mod:`deita.store`): chunks of candidates shared out among the ranks, each written
when done, so world sizes 1 and 2 give identical scores and a killed run resumes from its chunks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def accumulation(cfg) -> str:
    """How answer log-probs are summed: as the reference (float32, its order) in faithful mode, else float64."""
    return "float32" if cfg.mode == "faithful" else "float64"


def _scoring_key(cfg) -> dict:
    return {"mode": cfg.mode, "anchor_max_length": cfg.anchor_max_length, "dtype": cfg.dtype,
            "accumulate": accumulation(cfg)}


def early_decision(cfg, n_rows: int) -> dict | None:
    """The early-decision settings (:mod:`deita.selection.nuggets.early`) for this config, or None when
    ``exact_scores`` asks for every pair: ``{"threshold": t}`` or ``{"k": k}`` (top_fraction: k = int(n *
    fraction), as the selection) plus the seed of the anchor-batch order. They join the one-shot store key,
    since they decide which pairs an entry holds."""
    if cfg.exact_scores:
        return None
    rule = {"threshold": float(cfg.threshold)} if cfg.threshold is not None else {
        "k": int(cfg.top_k) if cfg.top_k is not None else int(n_rows * cfg.top_fraction)}
    return {**rule, "seed": int(cfg.seed)}


def load_scoring_model(path: str, cfg):
    """Tokenizer and model in eval mode on the configured device; faithful mode adds the reference ``[PAD]``."""

    from deita.models.loading import load_causal_lm
    from deita.selection.nuggets.tokens import add_reference_pad

    tok, model = load_causal_lm(path, cfg.dtype, cfg.device, cfg.trust_remote_code)
    if cfg.mode == "faithful":
        add_reference_pad(model, tok)
    model.requires_grad_(False)  # no autograd graph, without switching gradients off for the whole process
    return tok, model


def anchor_indices(rows: list[dict], texts: list[tuple[str, str]], cfg, ctx, model_path: str) -> list[int]:
    """Pool indices of the anchors for ``anchors.method`` kmeans or random."""
    from deita.fingerprint import model_identity
    from deita.selection.nuggets import anchors as A

    a = cfg.anchors
    if a.method == "random":
        return A.random_anchor_indices(len(rows), a.k, a.seed)
    if a.method != "kmeans":
        raise ValueError(f"anchors.method must be kmeans, random or file, got {a.method!r}")
    fulls = [full for _, full in texts]
    emb_path = ctx.model_resolver(a.embedder_model) if a.embedder_model else model_path
    key = {"data": ctx.data_fingerprint, "embedder": a.embedder, "model": model_identity(emb_path),
           "max_length": a.embed_max_length, "text": "nuggets_full"}

    loaded: list = []

    def chunk(start: int, end: int):
        if a.embedder == "reference":
            return A.reference_embeddings(emb_path, fulls[start:end], max_length=a.embed_max_length,
                                          batch_size=a.embed_batch_size, progress=False)
        if not loaded:
            from deita.selection.embedders import EMBEDDERS

            loaded.append(EMBEDDERS.get(a.embedder)(emb_path, max_length=a.embed_max_length, show_progress=False))
        return loaded[0].embed_texts(fulls[start:end])

    emb = ctx.cache.rows_array("nuggets_anchor_embeddings", key, len(rows), chunk, ctx.dist,
                               desc="nuggets anchor embeddings")
    return A.kmeans_anchor_indices(np.asarray(emb), a.k, a.seed, kmeans=a.kmeans, unique=cfg.mode == "clean")


def golden_table(rows: list[dict], cfg, ctx) -> dict[str, Any]:
    """Score every pool row. Returns ``golden_score [N]`` (NaN where early decision left only bounds),
    ``golden_score_low``/``golden_score_high``/``exact``/``wins`` [N], ``zero [M]``, ``one [N, M]`` (NaN: pair
    not run), the anchor descriptions, for pool anchors their pool indices, and ``early`` (anchor passes
    run and skipped). Early decision (:mod:`deita.selection.nuggets.early`, off with ``exact_scores``) works
    inside each store chunk of candidates, so a chunk's pairs depend on its rows alone and resume as before;
    its settings join the store key, and an exact entry is never mixed with an early one."""
    from deita.data.sources import load_sources
    from deita.fingerprint import hash_json, model_identity
    from deita.models.loading import pad_id_of
    from deita.selection.nuggets import scoring
    from deita.selection.nuggets.early import bounds, make_rule
    from deita.selection.nuggets.golden import golden_scores
    from deita.selection.nuggets.prompts import row_texts
    from deita.selection.nuggets.tokens import encode_anchor, encode_demo, zero_shot_prefix

    texts = [row_texts(r, i) for i, r in enumerate(rows)]
    model_path = ctx.model_resolver(cfg.model)
    ident = model_identity(model_path)
    if cfg.anchors.method == "file":
        if not cfg.anchors.path:
            raise ValueError("anchors.method=file needs anchors.path (any file the data layer loads)")
        anchor_rows = load_sources([cfg.anchors.path], "sft").rows
        a_texts, a_idx = [row_texts(r, i) for i, r in enumerate(anchor_rows)], None
    else:
        a_idx = anchor_indices(rows, texts, cfg, ctx, model_path)
        a_texts = [texts[i] for i in a_idx]
    tok, model = load_scoring_model(model_path, cfg)
    anchors = [encode_anchor(tok, q, f, cfg.anchor_max_length) for q, f in a_texts]
    pad = pad_id_of(tok)
    key = {"data": ctx.data_fingerprint, "model": ident, **_scoring_key(cfg),
           "anchors": hash_json([list(a.body) + [a.start, a.end] for a in anchors])}
    zero = ctx.cache.array("nuggets_zero_shot", key, lambda: scoring.zero_shot_sums(
        model, anchors, zero_shot_prefix(tok, cfg.mode), batch_size=cfg.zero_shot_batch_size, pad_id=pad,
        accumulate=accumulation(cfg)))

    early = early_decision(cfg, len(rows))
    if early is not None:
        key = {**key, "early": early}

    def chunk(start: int, end: int) -> np.ndarray:
        demos = [encode_demo(tok, texts[i][1], cfg.mode) for i in range(start, end)]
        rule = None if early is None else make_rule(zero, threshold=early.get("threshold"), k=early.get("k"))
        sums = scoring.one_shot_sums(model, demos, anchors, anchor_batch_size=cfg.anchor_batch_size,
                                     candidate_batch_size=cfg.candidate_batch_size, pad_id=pad,
                                     progress=False, accumulate=accumulation(cfg), rule=rule, first_index=start,
                                     seed=early["seed"] if early else 0)
        return np.asarray(sums).reshape(end - start, len(anchors))

    one = np.asarray(ctx.cache.rows_array("nuggets_one_shot", key, len(rows), chunk, ctx.dist,
                                          desc="nuggets one-shot")).reshape(len(rows), len(anchors))
    b = bounds(zero, one)
    if early is None:
        b["golden_score"] = golden_scores(zero, one)
    active = sum(a.n_scored > 0 for a in anchors)
    skipped = int(np.isnan(one).sum())
    return {"golden_score": b["golden_score"], "golden_score_low": b["low"], "golden_score_high": b["high"],
            "exact": b["exact"], "wins": b["wins"], "zero": zero, "one": one, "anchor_index": a_idx,
            "anchor_scored_tokens": [a.n_scored for a in anchors],
            "early": {"on": early is not None, "anchor_passes": len(rows) * active, "skipped": skipped,
                      "skipped_fraction": skipped / (len(rows) * active) if rows and active else 0.0,
                      "exact_rows": int(b["exact"].sum())}}
