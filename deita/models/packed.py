"""A packed decoder pass for readers of one position per sequence (the DEITA scorers): the final hidden
state at each sequence's last token, computed over real tokens only.

The same arithmetic as the Hugging Face Llama/Mistral forward, arranged for a CPU:

- **Packed tokens.** The sequences of a batch are concatenated ``[N, H]`` (no padding) for everything that
  acts on one token at a time (norms, projections, MLP); only the attention sees them as rows, right padded
  into ``[B, T]`` where a shared causal mask hides every pad from every real token.
- **Fused projections.** Q, K and V are one GEMM and gate/up are one GEMM: the weights are concatenated
  along the output dimension (each output keeps its own dot product) and the model's ``q/k/v_proj`` and
  ``gate/up_proj`` weights become views of the fused tensors, so no weight is held twice.
- **The last layer at the last token only.** Its keys and values are needed at every token, its query,
  ``o_proj``, MLP and the final norm only where the result is read.
- **A shared prefix** (:class:`deita.models.forward.SharedPrefix`): its keys/values lead every row's keys.

:func:`packed_decoder` says whether a model can take this path (the Llama and Mistral layers of
transformers, bias-free, SiLU, a static RoPE, no sliding window shorter than the sequences); the callers
run other models through the Hugging Face forward.
"""

from __future__ import annotations

import logging
from typing import Sequence

log = logging.getLogger(__name__)

ATTENTION_CLASSES = ("LlamaAttention", "MistralAttention")
MLP_CLASSES = ("LlamaMLP", "MistralMLP")
NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm")
STATIC_ROPE = ("default", "linear", "llama3")
"""RoPE types whose cos/sin depend on the position alone (dynamic types rescale with the batch length)."""


def unsupported_reason(model, max_length: int) -> str | None:
    """Why :class:`PackedDecoder` cannot run ``model`` for sequences up to ``max_length`` tokens (None: it can)."""
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


def _rope(x, cos, sin):
    """``x * cos + rotate_half(x) * sin`` over the last axis (the Llama rotary embedding)."""
    import torch

    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class PackedDecoder:
    """The decoder of a Llama/Mistral causal LM as a packed forward (see module doc); build it with
    :func:`packed_decoder`, which checks the model first."""

    def __init__(self, model):
        from deita.models.forward import base_model

        base = base_model(model)
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
        real = col[None, :] < lens_t[:, None]  # [B, T] real tokens, row-major = packed order
        slot = real.reshape(-1).nonzero()[:, 0]  # padded slot of each packed token
        last = lens_t.cumsum(0) - 1  # packed index of each row's last token
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
        positions = (col + skip).expand(rows, -1)[real]

        x = self.embed(ids)
        cos, sin = self.rotary(x, positions[None])
        cos, sin = cos[0][:, None], sin[0][:, None]  # [N, 1, d]
        keys = skip + width
        causal = None
        if skip:  # query i (after the prefix) sees keys 0..skip+i: the same mask for every row
            causal = torch.ones(width, keys, dtype=torch.bool, device=device).tril(skip)
        last_mask = (torch.arange(keys, device=device)[None, :] < (lens_t + skip)[:, None])[:, None, None]
        hd, nq, nkv = self.head_dim, self.heads, self.kv_heads
        gqa = {"enable_gqa": True} if nq != nkv else {}
        for li, w in enumerate(self.layers):
            final = li == len(self.layers) - 1
            qkv = F.linear(w["ln1"](x), w["qkv"])
            q, k, v = qkv.split([nq * hd, nkv * hd, nkv * hd], dim=-1)
            k = _rope(k.view(n, nkv, hd), cos, sin)
            kpad = x.new_zeros(rows * width, 2, nkv, hd)
            kpad[slot, 0] = k
            kpad[slot, 1] = v.view(n, nkv, hd)
            kpad = kpad.view(rows, width, 2, nkv, hd).permute(2, 0, 3, 1, 4)  # [2, B, kv, T, d]
            k_all, v_all = kpad[0], kpad[1]
            if skip:
                pk, pv = prefix.kv[li]
                k_all = torch.cat([pk.expand(rows, -1, -1, -1), k_all], dim=2)
                v_all = torch.cat([pv.expand(rows, -1, -1, -1), v_all], dim=2)
            if final:  # only the last token's output is read: one query per row, its real keys only
                q = _rope(q[last].view(rows, nq, hd), cos[last], sin[last])
                out = F.scaled_dot_product_attention(q[:, :, None], k_all, v_all, attn_mask=last_mask,
                                                     scale=w["scaling"], **gqa)
                attn = out.reshape(rows, nq * hd)
                x = x[last]
            else:
                q = _rope(q.view(n, nq, hd), cos, sin)
                qpad = x.new_zeros(rows * width, nq, hd)
                qpad[slot] = q
                qpad = qpad.view(rows, width, nq, hd).transpose(1, 2)
                if skip:
                    out = F.scaled_dot_product_attention(qpad, k_all, v_all, attn_mask=causal, scale=w["scaling"],
                                                         **gqa)
                else:
                    out = F.scaled_dot_product_attention(qpad, k_all, v_all, is_causal=True, scale=w["scaling"],
                                                         **gqa)
                attn = out.transpose(1, 2).reshape(rows * width, nq * hd)[slot]
            x = x + F.linear(attn, w["o"])
            gate, up = F.linear(w["ln2"](x), w["gate_up"]).split(w["inter"], dim=-1)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        return self.norm(x)
