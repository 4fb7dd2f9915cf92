"""IFD (Cherry LLM, ``selection=ifd``) and Superfiltering (``selection=superfilter``) selection.

Both score IFD = s(A|Q) / s(A) with two forwards per row (see :mod:`deita.selection.perplexity` for the
exact tokens) and keep the highest IFD among rows with IFD below 1 (the instruction must help).
Reference differences, stated: rows with nothing to score get NaN and are never selected (the references
write 0 or skip them); ties are broken by pool index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector


@dataclass
class IfdSelectionConfig(SelectionConfig):
    """Cherry LLM IFD (tianyi-lab/Cherry_LLM, ``cherry_seletion/``)."""

    method: str = "ifd"
    """Registry name."""
    model: str = "huggyllama/llama-7b"
    """Scoring LM. Cherry uses a briefly trained 'pre-experienced' LLaMA-7B."""
    prompt: str = "alpaca"
    """Instruction template: 'alpaca' (Cherry) or 'none' (Superfiltering)."""
    max_length: int = 512
    """Token budget of the conditional text (Cherry: 512)."""
    direct: str = "cherry"
    """How the answer-alone text is built: 'cherry' ('### Response:' + output) or 'superfilter' (output)."""
    ratio: str = "ppl"
    """'ppl': ppl(A|Q)/ppl(A) (the stored ifd_ppl); 'loss': mean-loss ratio (Cherry's data_by_IFD.py)."""
    max_ifd: float = 1.0
    """Rows with IFD above this are dropped (Cherry drops > 1 and keeps == 1)."""
    sample_rate: Optional[float] = None
    """Keep int(#kept * sample_rate) rows (Cherry's --sample_rate); None uses ``budget``."""
    batch_size: int = 8
    """Sequences per forward (results do not depend on it)."""
    dtype: str = "float32"
    """Scoring dtype."""
    device: str = "auto"
    """'auto', 'cpu', 'cuda', ..."""
    trust_remote_code: bool = False
    """Passed to from_pretrained; never on by default."""


@dataclass
class SuperfilterSelectionConfig(IfdSelectionConfig):
    """Superfiltering (tianyi-lab/Superfiltering, ``code_ifd/``): IFD from a small model."""

    method: str = "superfilter"
    """Registry name."""
    model: str = "gpt2"
    """Small scoring LM (reference: GPT-2 124M; offline: packaged:smollm2 or tiny:llama)."""
    prompt: str = "none"
    """'none': "{instruction}\\n{input}\\n" or "{instruction}\\n"."""
    max_length: int = 1024
    """Token budget (reference: 1024)."""
    direct: str = "superfilter"
    """The answer alone, first token unscored."""
    ratio: str = "ppl"
    """ifd_ppl = ppl_A_condition / ppl_A_direct."""
    sample_rate: Optional[float] = 0.1
    """Keep int(pool size * sample_rate) rows (the reference hard-codes 52002 as the pool size)."""


def ifd_table(rows: list[dict], cfg, ctx) -> dict[str, list[float]]:
    """Per-row conditional and direct mean losses and IFD, sharded over processes and cached by content."""
    from deita.distributed import map_sharded
    from deita.fingerprint import model_identity
    from deita.models.loading import load_causal_lm
    from deita.selection import perplexity as P
    from deita.selection.nuggets.prompts import row_fields
    from deita.selection.nuggets.scoring import pad_id_of

    path = ctx.model_resolver(cfg.model)
    key = {"data": ctx.data_fingerprint, "model": model_identity(path), "prompt": cfg.prompt,
           "max_length": cfg.max_length, "direct": cfg.direct, "dtype": cfg.dtype}

    def compute():
        tok, model = load_causal_lm(path, cfg.dtype, cfg.device, cfg.trust_remote_code)

        def shard(part: list[int]) -> list[list[float]]:
            seqs = []
            for i in part:
                ins, inp, out = row_fields(rows[i], i)
                seqs.extend(P.ifd_sequences(tok, ins, inp, out, prompt=cfg.prompt, max_length=cfg.max_length,
                                            direct=cfg.direct))
            lps = P.token_logprobs(model, seqs, batch_size=cfg.batch_size, pad_id=pad_id_of(tok),
                                   progress=ctx.dist.is_main)
            return [[P.mean_nll(lps[2 * j]), P.mean_nll(lps[2 * j + 1])] for j in range(len(part))]

        losses = map_sharded(list(range(len(rows))), shard, ctx.dist)
        return {"loss_condition": [x[0] for x in losses], "loss_direct": [x[1] for x in losses]}

    table = ctx.cache.table("ifd_losses", key, compute)
    table["ifd"] = [P.ifd_score(c, d, cfg.ratio) for c, d in zip(table["loss_condition"], table["loss_direct"])]
    return table


@SELECTORS.register("ifd")
class IfdSelector(Selector):
    """Cherry IFD: drop IFD > max_ifd, keep the top share by descending IFD."""

    config_class = IfdSelectionConfig
    strict = False
    rate_base = "kept"

    def select(self, rows: list[dict], ctx: SelectionContext) -> SelectionResult:
        from deita.selection.perplexity import select_by_ifd

        table = ifd_table(rows, self.cfg, ctx)
        order = select_by_ifd(table["ifd"], max_ifd=self.cfg.max_ifd, strict=self.strict,
                              rate=self.cfg.sample_rate, rate_base=self.rate_base, budget=self.cfg.budget)
        if self.cfg.sample_rate is not None and self.cfg.budget >= 0:
            order = order[: self.cfg.budget]
        nan = sum(1 for v in table["ifd"] if v != v)
        return SelectionResult(table=table, order=order, report={"unscored_rows": nan})


@SELECTORS.register("superfilter")
class SuperfilterSelector(IfdSelector):
    """Superfiltering: keep IFD < max_ifd (strict), top int(pool * sample_rate) by descending IFD."""

    config_class = SuperfilterSelectionConfig
    strict = True
    rate_base = "pool"
