"""Nuggets (Li et al., 2023): the one-shot "golden score" of an instruction-tuning candidate.

For a candidate ``c`` and a set of anchors (predefined tasks) ``A_1..A_M`` drawn from the same pool:

* zero-shot score ``z_i`` = sum of log-probs of anchor ``A_i``'s answer tokens with the anchor alone;
* one-shot score ``s_i(c)`` = the same sum with ``c``'s full text placed before the anchor (no separator);
* golden score ``GS(c)`` = fraction of anchors with ``s_i(c) > z_i`` (strict: ties are losses).

Text format (``prompts.py``, verbatim from the reference ``tasks/alpaca.py``):
``"Instruction:\\n{instruction}\\nInput:\\n{input}\\nResponse:\\n"`` (or without the Input part), then the
output; fields stripped; no EOS, no separator between demonstration and anchor. Rows map to the fields with
:func:`deita.data.fields.row_fields`: rows read from Alpaca-style sources keep their instruction/input split,
so a row with an input gets its ``Input:`` block exactly as in the reference; rows without a split
(ShareGPT, messages) use their first user turn as the instruction, with no ``Input:`` block.

Two modes (``mode=`` in :class:`deita.selection.methods.nuggets.NuggetsSelectionConfig`):

``faithful`` (reproduces pldlgb/nuggets @ c7e429f token for token):
  * the scoring tokenizer gets a new ``[PAD]`` special token and the model's embeddings are resized, the new
    input and output rows set to the mean of the old ones (``smart_tokenizer_and_embedding_resize``). The
    extra output row adds one logit to every softmax, exactly as in the reference;
  * the demonstration is tokenized with the tokenizer's special tokens (LLaMA: a BOS) and never truncated;
  * the anchor is tokenized without special tokens and right-truncated to 200 tokens; only answer tokens
    inside those 200 are scored; an anchor whose query alone is >= 200 tokens scores 0 in both passes and
    so always loses;
  * the zero-shot pass has NO BOS (the anchor starts the sequence), the one-shot pass starts with the
    demonstration's BOS: the reference's asymmetry;
  * fp32.

``clean`` (the same method without the quirks):
  * no ``[PAD]`` resize (padding is masked, so any id serves);
  * BOS (when the tokenizer has one) starts both passes: ``[BOS] anchor`` and ``[BOS] demo anchor``;
  * ``anchor_max_length`` is configurable (``None``: no truncation) and so is the dtype.

Early decision (default; ``selection.exact_scores=true`` turns it off): a candidate stops running anchors
once the threshold or top-k rule has rejected it for certain; every row the rule may accept still runs
every anchor, so the selection and its order equal the full computation's (``early``).

Modules: ``prompts`` (text), ``golden`` (pure math), ``early`` (deciding candidates early), ``tokens`` (token ids as the reference sees them),
``scoring`` (the fast model pass), ``oracle`` (naive oracle and the reference loop), ``anchors`` (anchor sets,
the nearest-row rule, the reference embedding), ``kmeans`` (the reference's scikit-learn k-means, faiss).
"""
