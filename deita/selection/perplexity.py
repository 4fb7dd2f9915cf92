"""IFD (Cherry LLM) and Superfiltering: instruction-following difficulty from answer perplexities.

IFD(Q, A) = s(A | Q) / s(A), with s the perplexity exp(mean token cross-entropy) of the answer tokens
(``ratio="ppl"``, the ``ifd_ppl`` the references store) or the mean cross-entropy itself
(``ratio="loss"``: Cherry's ``data_by_IFD.py`` ranks by ``mean_2 / mean_1``).

Which tokens are scored (each from the logits of the position before it, as HF ``labels`` do):

* conditional: ``ids = tok.encode(prompt + output, truncation=True, max_length=L)`` (with special tokens);
  scored = ``ids[start:]`` with ``start = len(tok.encode(text[:text.rfind(output)]))``;
* direct, Superfiltering: ``ids = tok.encode(output, max_length=L - len(tok.encode(prompt)) + 1)``, every
  token but the first scored (GPT-2 adds no BOS, so the first output token is unscored; LLaMA scores all
  output tokens after its BOS);
* direct, Cherry: ``"### Response:" + output`` truncated to ``L - len(tok.encode(prompt)) - 2`` tokens,
  scored from ``len(tok.encode("### Response:"))``.

Prompts: Cherry uses the Alpaca training template (``prompt="alpaca"``), Superfiltering ``"none"``:
``"{instruction}\\n{input}\\n"`` or ``"{instruction}\\n"``, the with-input one iff ``input != ""`` (fields as
given, not stripped, as both references). Rows map to the fields with :func:`deita.data.fields.row_fields`:
rows read from Alpaca-style sources keep their instruction/input split, so the references' with-input
prompts are built byte for byte; rows without a split (ShareGPT, messages) use their first user turn as
the instruction and the no-input prompt. A row with nothing to score gets NaN (never selected); the
references write 0 or skip it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

PROMPTS = {
    "alpaca": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:",
    ),
    "none": ("{instruction}\n{input}\n", "{instruction}\n"),
}
CHERRY_DIRECT_PREFIX = "### Response:"


def render_prompt(instruction: str, input: str, prompt: str) -> str:
    """The instruction part in template ``prompt`` (alpaca | none); fields are used as given."""
    if prompt not in PROMPTS:
        raise ValueError(f"IFD prompt must be one of {sorted(PROMPTS)}, got {prompt!r}")
    with_input, no_input = PROMPTS[prompt]
    return with_input.format(instruction=instruction, input=input) if input != "" else no_input.format(
        instruction=instruction)


def mean_nll(logprobs: Sequence[float]) -> float:
    """Mean negative log-likelihood of scored tokens; NaN when there are none."""
    lp = np.asarray(logprobs, dtype=np.float64)
    return float(-lp.mean()) if lp.size else math.nan


def ifd_score(loss_condition: float, loss_direct: float, ratio: str = "ppl") -> float:
    """IFD from the two mean losses: exp(lc)/exp(ld) (``ppl``) or lc/ld (``loss``); NaN if undefined."""
    if math.isnan(loss_condition) or math.isnan(loss_direct):
        return math.nan
    if ratio == "ppl":
        return math.exp(loss_condition) / math.exp(loss_direct)
    if ratio == "loss":
        return loss_condition / loss_direct if loss_direct != 0 else math.nan
    raise ValueError(f"IFD ratio must be 'ppl' or 'loss', got {ratio!r}")


def ifd_sequences(tok, instruction: str, input: str, output: str, *, prompt: str, max_length: int,
                  direct: str) -> tuple[tuple[list[int], int], tuple[list[int], int]]:
    """``((cond_ids, cond_start), (direct_ids, direct_start))`` for one row (see the module doc).
    ``direct`` is ``superfilter`` or ``cherry``. An empty span means nothing is scored."""
    instr = render_prompt(instruction, input, prompt)
    whole = instr + output
    cond = tok.encode(whole, truncation=True, max_length=max_length)
    cond_start = len(tok.encode(whole[: whole.rfind(output)])) if output else len(cond)
    instr_len = len(tok.encode(instr, truncation=True, max_length=max_length))
    if direct == "superfilter":
        room = max_length - instr_len + 1
        d_ids = tok.encode(output, truncation=True, max_length=room) if output and room > 0 else []
        return (cond, cond_start), (d_ids, 1 if d_ids else 0)
    if direct != "cherry":
        raise ValueError(f"direct must be 'superfilter' or 'cherry', got {direct!r}")
    room = max_length - instr_len - 2
    text = CHERRY_DIRECT_PREFIX + output
    if room <= 4 or not output:
        return (cond, cond_start), ([], 0)
    d_ids = tok.encode(text, truncation=True, max_length=room)
    d_start = len(tok.encode(text[: text.rfind(output)]))
    if instr_len + (len(d_ids) - d_start) > max_length:  # Cherry skips these rows
        return (cond, cond_start), ([], 0)
    return (cond, cond_start), (d_ids, d_start)


def scored_suffix(ids: Sequence[int], start: int) -> tuple[list[int], range]:
    """``(ids, positions)`` for :func:`deita.models.forward.token_logprobs`: every token from ``start`` on is
    scored (none when ``start`` < 1, i.e. nothing precedes the first token)."""
    return list(ids), (range(start, len(ids)) if start >= 1 else range(0))
