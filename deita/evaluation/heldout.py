"""Held-out loss: the final model's mean loss on assistant tokens of pool rows the selection left out.

Held-out rows are the canonical SFT rows of the pool whose id the select stage did not select
(``select/scores.parquet``: ``id``, ``selected``). At most ``cap`` of them are used, drawn with
``random.Random(HELDOUT_SEED).sample`` and kept in pool order. Each row is rendered with the tokenizer's
chat template; the loss counts only assistant tokens (the template's ``{% generation %}`` spans, via
``return_assistant_tokens_mask``), truncated to ``max_length`` tokens as SFT truncates. The reported
loss is token-weighted: the sum of every counted token's cross-entropy over the number of such tokens.
"""

from __future__ import annotations

import random

from deita.distributed import DistInfo, map_sharded

HELDOUT_SEED = 0
"""Seed of the draw of held-out rows when there are more than the cap."""
HELDOUT_MAX_ROWS = 256
"""Held-out rows used when ``eval.limit`` is null (with a limit, ``eval.limit`` rows are used)."""
LOSS_BATCH_SIZE = 8
"""Rows per forward pass."""
IGNORE = -100


def pick_heldout(pool_rows: list[dict], selected: dict[str, bool], cap: int, seed: int = HELDOUT_SEED) -> list[dict]:
    """Pool rows whose id was not selected, at most ``cap`` of them (seeded draw), in pool order.

    Every pool id must appear in ``selected`` (id → selected flag from the select stage's table).
    """
    from deita.data.pool_file import row_ids

    ids = row_ids(pool_rows)  # a lazy pool's ids come from their column, no row is built
    missing = [i for i in ids if i not in selected]
    if missing:
        raise ValueError(
            f"{len(missing)} pool row id(s) are not in select/scores.parquet (first: {missing[0]!r}); "
            "the pool changed since the select stage ran: re-run it"
        )
    held = [k for k, i in enumerate(ids) if not selected[i]]
    if len(held) > cap:
        held = sorted(random.Random(seed).sample(held, cap))
    return [pool_rows[i] for i in held]


def encode_row(tok, messages: list[dict], max_length: int | None, where: str = "row",
               **variables) -> tuple[list[int], list[int]]:
    """Token ids of a chat-templated conversation and labels that keep only assistant tokens.

    Needs ``{% generation %}`` markers in the chat template (what SFT's assistant-only loss reads).
    ``variables``: extra template variables, as SFT passes them (:func:`deita.data.templates.template_kwargs`).
    """
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
                                  **variables)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    if len(ids) != len(mask):
        raise RuntimeError(f"{where}: {len(ids)} tokens but an assistant mask of {len(mask)}")
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return ids, [t if m else IGNORE for t, m in zip(ids, mask)]


def heldout_loss(model, tok, rows: list[dict], *, max_length: int | None, dist: DistInfo | None = None,
                 batch_size: int = LOSS_BATCH_SIZE) -> dict:
    """Token-weighted mean assistant-token loss of ``model`` on ``rows`` and each row's own figures.

    Returns ``{"loss", "rows", "tokens", "per_row": [{"id", "tokens", "loss"}]}`` (a row's ``loss`` is
    its own token mean, None when truncation left it no assistant token). Rows are batched in fixed
    length-sorted groups before sharding, so any world size gives the same numbers.
    """
    from tqdm.auto import tqdm

    from deita.data.templates import template_kwargs
    from deita.models.batching import fixed_groups
    from deita.models.forward import token_logprobs
    from deita.models.loading import pad_id_of

    dist = dist or DistInfo()
    encoded = [encode_row(tok, r["messages"], max_length, where=f"held-out row {r['id']!r}", **template_kwargs(r))
               for r in rows]
    scored = [(ids, [t for t in range(1, len(ids)) if labels[t] != IGNORE]) for ids, labels in encoded]
    groups = fixed_groups([len(ids) for ids, _ in encoded], batch_size)
    pad = pad_id_of(tok)

    def work(items: list[list[int]]) -> list[list[tuple[float, int]]]:
        done = []
        for idxs in tqdm(items, desc="eval: held-out loss", unit="batch", disable=not dist.is_main):
            lps = token_logprobs(model, [scored[i] for i in idxs], batch_size=len(idxs), pad_id=pad)
            done.append([(float(-lp.sum()), len(lp)) for lp in lps])
        return done

    per_group = map_sharded(groups, work, dist)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for idxs, vals in zip(groups, per_group):
        for i, v in zip(idxs, vals):
            results[i] = v
    total = sum(s for s, _ in results)
    tokens = sum(c for _, c in results)
    per_row = [{"id": r["id"], "tokens": c, "loss": (s / c if c else None)} for r, (s, c) in zip(rows, results)]
    return {"loss": (total / tokens if tokens else None), "rows": len(rows), "tokens": tokens, "per_row": per_row}
