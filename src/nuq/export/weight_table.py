"""``WeightTable``: the fixed weight level table of a packed file, as a weight quantizer.

``load_packed`` gives every rebuilt layer its decoded weight *and* this quantizer holding
the stored levels, so the layer knows its weight is ``levels[codes]`` -- not just some float
tensor. That keeps the loaded model equal to the one that was saved in every mode,
including eval mode's integer arithmetic (:mod:`nuq.nn.integer_eval`), which needs the
level table to find the weight integers. Not registered: it is not a training method.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..quantizers import Quantizer


class WeightTable(Quantizer):
    """Projection onto a fixed level table [L] (or [C, L] per output channel)."""

    method = "table"
    min_bits = 1
    max_bits = 16

    def __init__(self, levels: Tensor) -> None:
        n = levels.shape[-1]
        super().__init__(bits=max(1, math.ceil(math.log2(max(n, 2)))), signed=bool(levels.min() < 0))
        self.register_buffer("table", levels.detach().clone(), persistent=False)
        self.mark_initialized()

    def levels(self) -> Tensor:
        return self.table

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        mids = self._midpoints(self.table.to(x.dtype))
        if mids.dim() == 1:
            return torch.bucketize(x, mids).to(self.code_dtype)
        flat = x.reshape(x.shape[0], -1).contiguous()
        return torch.searchsorted(mids.contiguous(), flat).view(x.shape).to(self.code_dtype)

    def quantize(self, x: Tensor) -> Tensor:
        idx = self.encode(x).long()
        lv = self.table.to(x.dtype)
        if lv.dim() == 2:
            return torch.gather(lv, 1, idx.reshape(x.shape[0], -1)).view(x.shape)
        return lv[idx]

    def _initialize(self, x: Tensor, method: str) -> None:
        pass  # fixed table
