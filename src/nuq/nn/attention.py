"""``nn.MultiheadAttention`` with its projections as modules, so that they can be quantized.

PyTorch's MultiheadAttention keeps the query/key/value projection as a raw
``in_proj_weight`` and hands it, and ``out_proj.weight``, to
``F.multi_head_attention_forward``: no Linear module ever runs, so a quantized copy of one
would change nothing. :class:`SplitMultiheadAttention` computes the same function with four
``nn.Linear`` modules (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and
``F.scaled_dot_product_attention``; ``prepare`` converts every MultiheadAttention to it
first, and then quantizes those Linear layers like any other (each projection with its own
input and weight quantizer).

Supported: self- and cross-attention, ``batch_first`` either way, ``key_padding_mask`` and
``attn_mask`` (boolean: True = not allowed, or additive float), ``is_causal``,
``need_weights`` (head-averaged or per-head), dropout. Not supported: ``add_bias_kv``,
``add_zero_attn`` and different key/value embedding sizes (``kdim``/``vdim``); such modules
(and subclasses of MultiheadAttention) stay as they are, and ``prepare`` refuses to
quantize their ``out_proj`` by name, with the ``skip`` pattern to use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if bias is not None:
            lin.bias.copy_(bias)
    return lin


class SplitMultiheadAttention(nn.Module):
    """The function of an ``nn.MultiheadAttention`` (same call signature and outputs) with
    its four projections as ``nn.Linear`` modules."""

    def __init__(self, mha: nn.MultiheadAttention, name: str = "attention") -> None:
        super().__init__()
        if not supported(mha):
            raise ValueError(f"{name}: nn.MultiheadAttention with add_bias_kv, add_zero_attn or kdim/vdim other "
                             "than embed_dim is not supported")
        e = mha.embed_dim
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        bs = [None] * 3 if b is None else list(b.detach().split(e))
        self.q_proj, self.k_proj, self.v_proj = (_linear(wi, bi) for wi, bi in zip(w.split(e), bs))
        out = mha.out_proj
        self.out_proj = _linear(out.weight.detach(), None if out.bias is None else out.bias.detach())
        self.embed_dim, self.num_heads, self.head_dim = e, mha.num_heads, mha.head_dim
        self.dropout, self.batch_first = mha.dropout, mha.batch_first

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, lq: int, ls: int,
              dtype: torch.dtype) -> Tensor | None:
        """One additive float mask [N, H, L, S] (or None) from MultiheadAttention's masks."""
        def additive(m: Tensor) -> Tensor:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf")) \
                if m.dtype == torch.bool else m.to(dtype)

        out = None
        if attn_mask is not None:
            m = additive(attn_mask)
            out = m.view(1, 1, lq, ls) if m.dim() == 2 else m.view(n, self.num_heads, lq, ls)
        if key_padding_mask is not None:
            k = additive(key_padding_mask).view(n, 1, 1, ls)
            out = k if out is None else out + k
        return out

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or not batched:  # [L, N, E] -> [N, L, E]
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, lq, _ = query.shape
        ls = key.shape[1]
        h, d = self.num_heads, self.head_dim

        def heads(x: Tensor, length: int) -> Tensor:
            return x.reshape(n, length, h, d).transpose(1, 2)

        q, k, v = heads(self.q_proj(query), lq), heads(self.k_proj(key), ls), heads(self.v_proj(value), ls)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(lq, ls, dtype=torch.bool, device=q.device).triu(1)
        mask = self._mask(attn_mask, key_padding_mask, n, lq, ls, q.dtype)
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(d)
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            weights = attn.mean(1) if average_attn_weights else attn
            out = F.dropout(attn, p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, self.embed_dim))
        if not self.batch_first or not batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights


def split_attention(model: nn.Module) -> nn.Module:
    """Replace (in place) every ``nn.MultiheadAttention`` of ``model`` by a
    :class:`SplitMultiheadAttention` computing the same function."""
    from .walk import set_module

    for name, m in list(model.named_modules()):
        if type(m) is nn.MultiheadAttention and supported(m):
            set_module(model, name, SplitMultiheadAttention(m, name).train(m.training))
    return model


def supported(mha: nn.MultiheadAttention) -> bool:
    """Whether :class:`SplitMultiheadAttention` computes this module's function."""
    return mha.bias_k is None and not mha.add_zero_attn and mha._qkv_same_embed_dim
