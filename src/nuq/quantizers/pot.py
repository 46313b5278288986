"""PoT: powers-of-two levels (APoT, Li, Dong & Wang, ICLR 2020, Eq. 3) with the RCF clipping
threshold (Eq. 7/8, ``rcf.py``); one shift per multiply."""

from __future__ import annotations

from torch import Tensor

from .base import register_quantizer
from .levelsets import level_set
from .rcf import RCFQuantizer


@register_quantizer("pot")
class PoTQuantizer(RCFQuantizer):
    """Powers-of-two levels (Eq. 3); one shift per multiply."""

    projection = "bits"
    dyadic_levels = True

    def unsigned_raw(self, bits: int) -> Tensor:
        return level_set("pot", bits, normalize=False)

    @property
    def pot_terms(self) -> int:
        return 1
