"""IFD (Cherry LLM, ``selection=ifd``) and Superfiltering (``selection=superfilter``) selection.

Both score IFD = s(A|Q) / s(A) with two forwards per row (see :mod:`deita.selection.perplexity` for the
exact tokens) and keep the highest IFD among rows with IFD below 1 (the instruction must help).
Reference differences, stated: rows with nothing to score get NaN and are never selected (the references
write 0 or skip them); ties are broken by pool index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from deita.config import SelectionModels
from deita.selection.base import SELECTORS, SelectionConfig, SelectionContext, SelectionResult, Selector


@dataclass
class IfdSelectionConfig(SelectionConfig):
    """Cherry LLM IFD (tianyi-lab/Cherry_LLM, ``cherry_seletion/``)."""

    method: str = "ifd"
    """Registry name."""
    model: str = SelectionModels.ifd
    """Scoring LM. Cherry uses a briefly trained 'pre-experienced' LLaMA-7B, Superfiltering GPT-2 124M
    (offline: packaged:smollm2 or tiny:llama)."""
    prompt: str = "alpaca"
    """Instruction template: 'alpaca' (Cherry) or 'none' (Superfiltering: "{instruction}\\n{input}\\n" or
    "{instruction}\\n")."""
    max_length: int = 512
    """Token budget of the conditional text (Cherry: 512, Superfiltering: 1024)."""
    direct: str = "cherry"
    """How the answer-alone text is built: 'cherry' ('### Response:' + output) or 'superfilter' (the output
    alone, first token unscored)."""
    ratio: str = "ppl"
    """'ppl': ppl(A|Q)/ppl(A) (the stored ifd_ppl); 'loss': mean-loss ratio (Cherry's data_by_IFD.py)."""
    max_ifd: float = 1.0
    """Rows with IFD above this are dropped; ifd keeps IFD == max_ifd (as Cherry), superfilter drops it."""
    sample_rate: Optional[float] = None
    """Keep the top int(base * sample_rate) rows, base = the rows max_ifd keeps (ifd: Cherry's --sample_rate)
    or the whole pool (superfilter; its reference hard-codes 52002 as the pool size). null keeps every row
    max_ifd keeps."""
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
    """Superfiltering (tianyi-lab/Superfiltering, ``code_ifd/``): IFD from a small model (GPT-2), the
    answer alone as the direct text, 1024 tokens, the top 10% of the pool. Keys as for ``selection=ifd``."""

    method: str = "superfilter"
    model: str = SelectionModels.superfilter
    prompt: str = "none"
    max_length: int = 1024
    direct: str = "superfilter"
    sample_rate: Optional[float] = 0.1


def ifd_table(rows: list[dict], cfg, ctx) -> dict[str, list[float]]:
    """Per-row conditional and direct mean losses and IFD: a chunked store (:mod:`deita.store`), chunks
    shared out over processes, resumable, cached by content."""
    from deita.fingerprint import model_identity
    from deita.data.fields import row_fields
    from deita.models.forward import token_logprobs
    from deita.models.loading import load_causal_lm, pad_id_of
    from deita.selection import perplexity as P

    path = ctx.model_resolver(cfg.model)
    key = {"data": ctx.data_fingerprint, "model": model_identity(path), "prompt": cfg.prompt,
           "max_length": cfg.max_length, "direct": cfg.direct, "dtype": cfg.dtype}
    loaded: list = []

    def chunk(start: int, end: int) -> dict[str, list[float]]:
        if not loaded:  # load on the first chunk this rank computes (none when everything is cached)
            loaded.extend(load_causal_lm(path, cfg.dtype, cfg.device, cfg.trust_remote_code))
        tok, model = loaded
        seqs = []
        for i in range(start, end):
            ins, inp, out = row_fields(rows[i], i)
            pair = P.ifd_sequences(tok, ins, inp, out, prompt=cfg.prompt, max_length=cfg.max_length,
                                   direct=cfg.direct)
            seqs.extend(P.scored_suffix(ids, first) for ids, first in pair)
        lps = token_logprobs(model, seqs, batch_size=cfg.batch_size, pad_id=pad_id_of(tok), progress=False,
                             desc="ifd forwards")
        return {"loss_condition": [P.mean_nll(lps[2 * j]) for j in range(end - start)],
                "loss_direct": [P.mean_nll(lps[2 * j + 1]) for j in range(end - start)]}

    table = ctx.cache.rows_table("ifd_losses", key, len(rows), chunk, ctx.dist, desc="ifd losses")
    table["ifd"] = [P.ifd_score(c, d, cfg.ratio) for c, d in zip(table["loss_condition"], table["loss_direct"])]
    return table


def ifd_ranking(scores, *, max_ifd: float, strict: bool, rate: Optional[float], rate_base: str) -> list[int]:
    """Drop NaN and IFD above ``max_ifd`` (``strict``: also == max_ifd), rank the rest by descending IFD
    (ties by index), then keep the first ``int(base * rate)`` (base = ``pool`` size or ``kept`` count) when
    ``rate`` is set."""
    import numpy as np

    from deita.selection.ranking import score_order

    s = np.asarray(scores, dtype=np.float64)
    ok = (s < max_ifd) if strict else (s <= max_ifd)
    ranked = score_order(np.where(ok, s, np.nan)).tolist()
    if rate is None:
        return ranked
    return ranked[: int((len(s) if rate_base == "pool" else len(ranked)) * rate)]


@SELECTORS.register("ifd")
class IfdSelector(Selector):
    """Cherry IFD: drop IFD > max_ifd, rank the rest by descending IFD, keep the top share (sample_rate)."""

    config_class = IfdSelectionConfig

    @classmethod
    def check(cls, cfg) -> None:
        """Positive sizes and max_ifd, sample_rate in (0, 1], known prompt/direct/ratio/dtype."""
        from deita.models.loading import DTYPE_NAMES
        from deita.validate import require_choice, require_range

        require_range(cfg.max_ifd, "selection.max_ifd", gt=0)
        require_range(cfg.sample_rate, "selection.sample_rate", gt=0, le=1, allow_none=True)
        require_range(cfg.max_length, "selection.max_length", ge=1)
        require_range(cfg.batch_size, "selection.batch_size", ge=1)
        require_choice(cfg.prompt, "selection.prompt", ["alpaca", "none"])
        require_choice(cfg.direct, "selection.direct", ["cherry", "superfilter"])
        require_choice(cfg.ratio, "selection.ratio", ["ppl", "loss"])
        require_choice(cfg.dtype, "selection.dtype", list(DTYPE_NAMES))
    strict = False
    rate_base = "kept"

    def rank(self, rows: list[dict], ctx: SelectionContext, limit: Optional[int]) -> SelectionResult:
        """IFD for every row (cached), then :func:`ifd_ranking`."""
        cfg = self.cfg
        table = ifd_table(rows, cfg, ctx)
        ranking = ifd_ranking(table["ifd"], max_ifd=cfg.max_ifd, strict=self.strict, rate=cfg.sample_rate,
                              rate_base=self.rate_base)
        nan = sum(1 for v in table["ifd"] if v != v)
        below = ifd_ranking(table["ifd"], max_ifd=cfg.max_ifd, strict=self.strict, rate=None, rate_base="pool")
        shortfall = (f"{len(below)} of {len(rows)} rows have IFD {'<' if self.strict else '<='} {cfg.max_ifd} "
                     f"({nan} could not be scored); raise selection.max_ifd")
        if cfg.sample_rate is not None:
            shortfall += f", or sample_rate={cfg.sample_rate}, which keeps {len(ranking)} of them"
        return SelectionResult(table=table, ranking=ranking, shortfall=shortfall, report={"unscored_rows": nan},
                               score_column="ifd", labels={**COLUMN_LABELS, "ifd": IFD_LABEL[cfg.ratio]},
                               scatter=("loss_direct", "loss_condition"))


IFD_LABEL = {"ppl": "IFD (answer perplexity with / without the instruction, ratio)",
             "loss": "IFD (answer loss with / without the instruction, ratio)"}
"""Axis label of the ``ifd`` column for each ``selection.ratio``."""
COLUMN_LABELS = {
    "loss_condition": "answer loss given the instruction (nats/token)",
    "loss_direct": "answer loss alone (nats/token)",
}
"""Axis labels (with units) of the table columns, for the selection report."""


@SELECTORS.register("superfilter")
class SuperfilterSelector(IfdSelector):
    """Superfiltering: keep IFD < max_ifd (strict), top int(pool * sample_rate) by descending IFD."""

    config_class = SuperfilterSelectionConfig
    strict = True
    rate_base = "pool"
