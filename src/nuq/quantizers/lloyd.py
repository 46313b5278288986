"""Lloyd-Max levels with the RCF clipping threshold: the "Lloyd" quantizer of APoT's Table 3
ablation (Li, Dong & Wang, ICLR 2020), levels fitted to the initialisation sample."""

from __future__ import annotations

from torch import Tensor

from .base import register_quantizer
from .levelsets import lloyd_levels, signed_levels, uniform_levels
from .rcf import RCFQuantizer


@register_quantizer("lloyd")
class LloydQuantizer(RCFQuantizer):
    """Lloyd-Max levels fitted to the initialisation sample (Table 3's "Lloyd" quantizer),
    normalised to max 1, with a learned RCF threshold. Level 0 is kept exactly (mirrored
    signed set, ReLU zeros). ``initialize`` fits the levels; ``lloyd`` then sets alpha to
    the largest fitted level, ``mse``/``lsq`` choose alpha as in the other RCF quantizers.
    The levels are not powers of two: FixOPs accounting counts them as float multiplies."""

    projection = "search"
    table_persistent = True
    init_methods = ("lloyd", "mse", "lsq")

    def unsigned_raw(self, bits: int) -> Tensor:
        # placeholder until initialize() fits the levels: the uniform set
        return uniform_levels(bits)

    def _initialize(self, x: Tensor, method: str) -> None:
        b = self.bits - 1 if self.signed else self.bits
        src = x.abs() if self.signed else x.clamp_min(0)
        lv = lloyd_levels(src, b, include_zero=True).clamp_min(0)
        top = float(lv.max())
        if top <= 0:  # an all-zero sample: keep the uniform placeholder
            lv, top = uniform_levels(b), 1.0
        table = lv / top
        self.table.copy_((signed_levels(table) if self.signed else table).to(self.table))
        if method == "lloyd":
            self.alpha.data.fill_(top)
        else:
            super()._initialize(x, method)
