"""A packed decoder pass for readers of one position per sequence (the DEITA scorers): the final hidden
state at each sequence's last token, computed over real tokens only.

The same arithmetic as the Hugging Face Llama/Mistral forward, arranged for a CPU:

- **Packed tokens.** The sequences of a batch are concatenated ``[N, H]`` (no padding) for everything that
  acts on one token at a time (norms, projections, MLP); only the attention sees them as rows: one by one
  with oneDNN (below), else right padded into ``[B, T]`` where a shared causal mask hides every pad from
  every real token.
- **Fused projections.** Q, K and V are one GEMM and gate/up are one GEMM: the weights are concatenated
  along the output dimension (each output keeps its own dot product) and the model's ``q/k/v_proj`` and
  ``gate/up_proj`` weights become views of the fused tensors, so fusing copies no weight (oneDNN's
  prepacked layout, below, is a second copy, made only when it fits).
- **The last layer at the last token only.** Its keys and values are needed at every token, its query,
  ``o_proj``, MLP and the final norm only where the result is read.
- **A shared prefix** (:class:`deita.models.forward.SharedPrefix`): its keys/values lead every row's keys.
- **oneDNN's fp32 GEMM on a CPU** (``torch.ops.mkldnn._linear_pointwise``, the kernel behind inductor's
  CPU linears): IEEE fp32 like MKL's sgemm, another summation order. On this project's AMD EPYC
  (AVX-512) it measured ~255 GFLOP/s single-threaded against ~115 for MKL, whose sgemm runs its AVX2 code
  there (what ``F.linear`` and the Hugging Face forward call). Used only when a probe product agrees
  with ``F.linear``, and by default only for hidden sizes of at least :data:`ONEDNN_MIN_HIDDEN` (oneDNN
  builds a kernel per new shape, ~0.2-2.5 ms, which tiny models never earn back); the residual adds are
  fused into the o_proj/down products. With oneDNN the attention is GEMMs as well (every layer but the
  last, :mod:`deita.models.row_attention`: ~2x the CPU flash SDPA kernel on SmolLM2's quality prompts),
  and the weights are prepacked into oneDNN's layout once when the copy fits in memory
  (:meth:`PackedDecoder._prepack`).

:func:`packed_decoder` says whether a model can take this path (the Llama and Mistral layers of
transformers, plain bias-free linear projections, SiLU, a static RoPE, no sliding window shorter than the
sequences); the callers run other models through the Hugging Face forward.
"""

from __future__ import annotations

import logging
from typing import Sequence

from deita.models.row_attention import causal_mask, causal_row_attention

log = logging.getLogger(__name__)

ATTENTION_CLASSES = ("LlamaAttention", "MistralAttention")
MLP_CLASSES = ("LlamaMLP", "MistralMLP")
NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm")
ONEDNN_MIN_HIDDEN = 256
"""Smallest hidden size that takes oneDNN's GEMM by default: the 64-wide tiny test models ran slower with
it (per-shape kernel creation), SmolLM2's 576 ran 1.7-1.9x faster."""
GEMM_ATTENTION_MIN_TOKENS = 64
"""Fewest own tokens per row, on average over a batch, for which the packed decoder runs the GEMM row
attention: shorter rows pay more in per-row calls than they save (SmolLM2 complexity prompts, ~23 own
tokens: 0.93x of SDPA; quality, ~200: 1.12x)."""
PREPACK_MAX_SHARE = 0.25
"""With ``prepack=None``, the largest share of the available memory that :class:`PackedDecoder` may spend
on oneDNN's prepacked copy of the projection weights (it doubles the decoder's weights)."""
PROJECTIONS = ("qkv", "o", "gate_up", "down")
"""The per-layer weights the packed decoder multiplies by (fused Q/K/V, o_proj, fused gate/up, down_proj)."""
STATIC_ROPE = ("default", "linear", "llama3")
"""RoPE types whose cos/sin depend on the position alone (dynamic types rescale with the batch length)."""


def unsupported_reason(model, max_length: int) -> str | None:
    """Why :class:`PackedDecoder` cannot run ``model`` for sequences up to ``max_length`` tokens (None: it can)."""
    import torch

    from deita.models.forward import base_model

    cfg = model.config
    try:
        base = base_model(model)
    except TypeError as exc:
        return str(exc)
    layers = getattr(base, "layers", None)
    if layers is None or not hasattr(base, "rotary_emb") or not hasattr(base, "embed_tokens"):
        return f"{type(base).__name__} is not a Llama-style decoder"
    if type(getattr(base, "norm", None)).__name__ not in NORM_CLASSES:
        return f"final norm {type(getattr(base, 'norm', None)).__name__} is not an RMSNorm of Llama/Mistral"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if type(attn).__name__ not in ATTENTION_CLASSES or type(mlp).__name__ not in MLP_CLASSES:
            return f"layer {type(layer).__name__} is not a Llama/Mistral layer"
        if any(type(getattr(layer, n, None)).__name__ not in NORM_CLASSES
               for n in ("input_layernorm", "post_attention_layernorm")):
            return "layer norms are not Llama/Mistral RMSNorms"
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        odd = [type(lin).__name__ for lin in linears if type(lin) is not torch.nn.Linear]
        if odd:  # adapters (LoRA), quantised layers: their forward is more than weight @ x
            return f"projections are {odd[0]}, not plain torch.nn.Linear"
        if any(lin.bias is not None for lin in linears):
            return "projections have biases"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} is not 'silu'"
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} is not one of {STATIC_ROPE}"
    window = getattr(cfg, "sliding_window", None)
    if window is not None and window < max_length:
        return f"sliding window {window} is shorter than max_length {max_length}"
    devices = {p.device for p in model.parameters()}
    if len(devices) != 1:
        return f"parameters sit on {len(devices)} devices"
    return None


def packed_decoder(model, max_length: int) -> "PackedDecoder | None":
    """A :class:`PackedDecoder` over ``model``, or None (logged) when the model does not fit the path."""
    reason = unsupported_reason(model, max_length)
    if reason is not None:
        log.info("packed decoder not used for %s: %s; running the Hugging Face forward",
                 type(model).__name__, reason)
        return None
    return PackedDecoder(model)


def _fuse_rows(linears) -> "object":
    """One weight ``[sum(out), in]`` for ``linears`` (concatenated along the output dimension); each linear's
    weight becomes a view of its rows, so the model computes as before and nothing is stored twice."""
    import torch

    fused = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    at = 0
    for lin in linears:
        n = lin.weight.shape[0]
        lin.weight = torch.nn.Parameter(fused[at : at + n], requires_grad=False)
        at += n
    return fused


def onednn_linear_works() -> bool:
    """Whether this torch has oneDNN's fp32 linear (plain and with a fused add) and it agrees with
    ``F.linear`` on a probe product (to fp32 rounding)."""
    import torch
    import torch.nn.functional as F

    try:
        g = torch.Generator().manual_seed(0)
        x, w, r = torch.randn(5, 24, generator=g), torch.randn(7, 24, generator=g), torch.randn(5, 7, generator=g)
        plain = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
        added = torch.ops.mkldnn._linear_pointwise.binary(x, r, w, None, "add")
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):  # absent, or another signature
        return False
    want = F.linear(x, w)
    return bool(torch.allclose(plain, want, atol=1e-4) and torch.allclose(added, want + r, atol=1e-4))


def onednn_prepack_works() -> bool:
    """Whether oneDNN's linear takes a prepacked weight (``mkldnn._reorder_linear_weight``) and gives the
    same product as with the plain weight, plain and with a fused add."""
    import torch

    try:
        g = torch.Generator().manual_seed(1)
        x, w, r = torch.randn(5, 24, generator=g), torch.randn(7, 24, generator=g), torch.randn(5, 7, generator=g)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 5)
        pairs = [(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
                  torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")),
                 (torch.ops.mkldnn._linear_pointwise.binary(x, r, packed, None, "add"),
                  torch.ops.mkldnn._linear_pointwise.binary(x, r, w, None, "add"))]
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):
        return False
    return all(torch.allclose(a, b, atol=1e-5) for a, b in pairs)


def _rope(x, cos, sin_signed):
    """``x * cos + rotate_half(x) * sin`` over the last axis (the Llama rotary embedding), where
    ``rotate_half(x) = cat(-x2, x1)``: computed as ``cat(x2, x1) * sin_signed + x * cos`` with
    ``sin_signed = cat(-sin1, sin2)`` (:func:`_signed_sin`), in place on the one copy that swaps the
    halves: three passes over ``x`` instead of five."""
    import torch

    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1).mul_(sin_signed).addcmul_(x, cos)


def _signed_sin(sin):
    """``cat(-sin1, sin2)`` over the last axis: the factor :func:`_rope` multiplies the swapped halves by."""
    import torch

    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class PackedDecoder:
    """The decoder of a Llama/Mistral causal LM as a packed forward (see module doc); build it with
    :func:`packed_decoder`, which checks the model first. ``onednn``: run the projections through oneDNN
    on a CPU in fp32 (None: when the hidden size is at least :data:`ONEDNN_MIN_HIDDEN`); then the attention
    too (:mod:`deita.models.row_attention`), and ``prepack`` gives oneDNN its own copy of the weights
    (None: when it fits, see :meth:`_prepack`)."""

    def __init__(self, model, onednn: bool | None = None, prepack: bool | None = None):
        import torch

        from deita.models.forward import base_model

        base = base_model(model)
        weight = base.embed_tokens.weight
        if onednn is None:  # by default: models wide enough to earn back oneDNN's per-shape kernel creation
            onednn = model.config.hidden_size >= ONEDNN_MIN_HIDDEN
        self.onednn = (onednn and weight.device.type == "cpu" and weight.dtype == torch.float32
                       and onednn_linear_works())
        """Whether the projections run through oneDNN's fp32 GEMM (else ``F.linear`` / ``addmm``)."""
        self.embed, self.rotary, self.norm = base.embed_tokens, base.rotary_emb, base.norm
        first = base.layers[0].self_attn
        self.head_dim = first.head_dim
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(dict(
                ln1=layer.input_layernorm, ln2=layer.post_attention_layernorm, scaling=attn.scaling,
                qkv=_fuse_rows([attn.q_proj, attn.k_proj, attn.v_proj]), o=attn.o_proj.weight,
                gate_up=_fuse_rows([mlp.gate_proj, mlp.up_proj]), down=mlp.down_proj.weight,
                inter=mlp.gate_proj.weight.shape[0]))
        self.gemm_attention = self.onednn
        """Whether every layer but the last runs :func:`deita.models.row_attention.causal_row_attention` in
        batches whose rows average at least :data:`GEMM_ATTENTION_MIN_TOKENS` tokens (with oneDNN; else, and
        when False: SDPA over right-padded rows; ``benchmarks/bench_packed_steps.py`` flips it to measure the
        step)."""
        self.prepacked = self.onednn and self._prepack(prepack)
        """Whether the projections read oneDNN's prepacked copies of the weights (:meth:`_prepack`)."""

    def _prepack(self, prepack: bool | None) -> bool:
        """Give oneDNN the projection weights in its own blocked layout once, instead of at every product
        (~5% faster GEMMs on SmolLM2's shapes; IEEE fp32 as before, but oneDNN may pick another blocking for
        a batch, so SmolLM2 quality scores moved by up to 3e-6). The copies double the decoder's
        weights in memory, so with ``prepack=None`` only when they take at most :data:`PREPACK_MAX_SHARE`
        of the memory available now."""
        import psutil
        import torch

        from deita.models.batching import CPU_MAX_TOKENS_PER_BATCH

        need = sum(w[k].numel() * w[k].element_size() for w in self.layers for k in PROJECTIONS)
        if prepack is None:
            prepack = need <= PREPACK_MAX_SHARE * psutil.virtual_memory().available
            if not prepack:
                log.info("projection weights not prepacked for oneDNN: the copy (%.1f GB) would exceed %.0f%% of "
                         "the available memory", need / 1e9, 100 * PREPACK_MAX_SHARE)
        if not prepack or not onednn_prepack_works():
            return False
        for w in self.layers:
            for key in PROJECTIONS:
                w[key] = torch.ops.mkldnn._reorder_linear_weight(w[key], CPU_MAX_TOKENS_PER_BATCH)
        return True

    def _linear(self, x, weight):
        """``x @ weight.T``."""
        import torch
        import torch.nn.functional as F

        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return F.linear(x, weight)

    def _linear_add(self, x, weight, residual):
        """``residual + x @ weight.T``, the add inside the GEMM."""
        import torch

        if self.onednn:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, None, "add")
        return torch.addmm(residual, x, weight.t())

    def last_hidden(self, seqs: Sequence[Sequence[int]], prefix=None):
        """Final (post-norm) hidden states ``[B, H]`` at the last token of each sequence in ``seqs``.

        With ``prefix`` (a :class:`deita.models.forward.SharedPrefix`), ``seqs`` are the tokens after it:
        every row attends to the prefix's keys/values first and its positions continue after the prefix.
        """
        import torch
        import torch.nn.functional as F

        device = self.embed.weight.device
        lens = [len(s) for s in seqs]
        if min(lens) < 1:
            raise ValueError("cannot run an empty token sequence")
        rows, width, n = len(lens), max(lens), sum(lens)
        skip = len(prefix) if prefix is not None else 0
        lens_t = torch.tensor(lens, device=device)
        col = torch.arange(width, device=device)
        row_of, col_of = (col[None, :] < lens_t[:, None]).nonzero(as_tuple=True)  # packed order, row-major
        dense = n == rows * width  # rows of one length: the packed tokens are the [B, T] layout already
        last = lens_t.cumsum(0) - 1  # packed index of each row's last token
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)

        x = self.embed(ids)
        cos, sin = self.rotary(x, (col_of + skip)[None])
        cos, sin = cos[0][:, None], _signed_sin(sin[0][:, None])  # [N, 1, d]
        keys = skip + width
        causal = None
        if skip:  # query i (after the prefix) sees keys 0..skip+i: the same mask for every row
            causal = torch.ones(width, keys, dtype=torch.bool, device=device).tril(skip)
        last_mask = (torch.arange(keys, device=device)[None, :] < (lens_t + skip)[:, None])[:, None, None]
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        gqa = {"enable_gqa": True} if nq != nkv else {}
        row_mask = None
        gemm = self.gemm_attention and n >= GEMM_ATTENTION_MIN_TOKENS * rows  # short rows: SDPA's one call is cheaper
        for li, w in enumerate(self.layers):
            final = li == len(self.layers) - 1
            qkv = self._linear(w["ln1"](x), w["qkv"])
            v = qkv[:, (nq + nkv) * hd :].view(n, nkv, hd)
            if final:  # only the last token's output is read: one query per row
                k = _rope(qkv[:, nq * hd : (nq + nkv) * hd].view(n, nkv, hd), cos, sin)
                q = _rope(qkv[last, : nq * hd].view(rows, nq, hd), cos[last], sin[last])
            else:
                qk = _rope(qkv[:, : (nq + nkv) * hd].view(n, nq + nkv, hd), cos, sin)  # q and k in one pass
                q, k = qk[:, :nq], qk[:, nq:]
            if gemm and not final:  # GEMM attention per row: see deita.models.row_attention
                pkv = (prefix.kv[li][0][0], prefix.kv[li][1][0]) if skip else None
                if row_mask is None:
                    row_mask = causal_mask(width, nq // nkv, skip, device)
                attn = causal_row_attention(q, k, v, lens, w["scaling"], self._linear, self._linear_add, pkv,
                                            row_mask)
            else:  # SDPA over right-padded rows
                if dense and not skip:
                    k_all, v_all = (t.view(rows, width, nkv, hd).transpose(1, 2) for t in (k, v))
                else:  # right padded [B, kv, skip + T, d] after the prefix's keys/values; zero pads
                    kv = x.new_zeros(rows, keys, 2, nkv, hd)
                    if skip:
                        pk, pv = prefix.kv[li]
                        kv[:, :skip, 0] = pk[0].transpose(0, 1)
                        kv[:, :skip, 1] = pv[0].transpose(0, 1)
                    kv[row_of, col_of + skip, 0] = k
                    kv[row_of, col_of + skip, 1] = v
                    k_all, v_all = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
                if final:
                    out = F.scaled_dot_product_attention(q[:, :, None], k_all, v_all, attn_mask=last_mask,
                                                         scale=w["scaling"], **gqa)
                    attn = out.reshape(rows, nq * hd)
                    x = x[last]
                else:
                    if dense:
                        qpad = q.reshape(rows, width, nq, hd)
                    else:
                        qpad = x.new_zeros(rows, width, nq, hd)
                        qpad[row_of, col_of] = q
                    mask = {"attn_mask": causal} if skip else {"is_causal": True}
                    out = F.scaled_dot_product_attention(qpad.transpose(1, 2), k_all, v_all, scale=w["scaling"],
                                                         **mask, **gqa).transpose(1, 2)
                    attn = (out.reshape(n, nq * hd) if dense else out[row_of, col_of].reshape(n, nq * hd))
            x = self._linear_add(attn, w["o"], x)
            gate_up = self._linear(w["ln2"](x), w["gate_up"])
            act = F.silu(gate_up[:, : w["inter"]]).mul_(gate_up[:, w["inter"] :])
            x = self._linear_add(act, w["down"], x)
        return self.norm(x)
