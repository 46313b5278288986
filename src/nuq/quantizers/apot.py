"""APoT: additive powers-of-two levels (Li, Dong & Wang, ICLR 2020, Eq. 5 for even b, Eq. 6
for odd b; base bit width k = 2), with the RCF clipping threshold (Eq. 7/8, ``rcf.py``).
Every level is a sum of ``k``-term powers of two: a multiply is ``pot_terms`` shift-adds."""

from __future__ import annotations

from torch import Tensor

from .base import register_quantizer
from .levelsets import additive_terms, level_set
from .rcf import RCFQuantizer


@register_quantizer("apot")
class APoTQuantizer(RCFQuantizer):
    """Additive powers-of-two levels (Eq. 5/6), base bit width ``k`` (default 2)."""

    config_fields = ("k", "clip")
    dyadic_levels = True

    def __init__(self, bits: int = 4, signed: bool = False, k: int = 2, **kwargs) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r}; the base bit width must be a positive int")
        self.k = k
        super().__init__(bits=bits, signed=signed, **kwargs)

    def unsigned_raw(self, bits: int) -> Tensor:
        return level_set("apot", bits, k=self.k, normalize=False)

    @property
    def pot_terms(self) -> int:
        return additive_terms(self.bits - 1 if self.signed else self.bits, self.k)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", k={self.k}" if self.k != 2 else "")
