"""Uniform levels (APoT, Li, Dong & Wang, ICLR 2020, Eq. 2) with the RCF clipping threshold
(Eq. 7/8, ``rcf.py``)."""

from __future__ import annotations

from torch import Tensor

from .base import register_quantizer
from .levelsets import uniform_levels
from .rcf import RCFQuantizer


@register_quantizer("uniform")
class UniformRCFQuantizer(RCFQuantizer):
    """Evenly spaced levels (Eq. 2) with the RCF threshold gradient (Appendix A.2: equivalent
    to LSQ with step alpha / (2^(b-1) - 1), resp. alpha / (2^b - 1) unsigned)."""

    uniform_output = True

    def unsigned_raw(self, bits: int) -> Tensor:
        return uniform_levels(bits, normalize=False)
