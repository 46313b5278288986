"""N2UQ entropy-preserving weight regularization (Liu et al., CVPR 2022, Sec. 3.2.3 and
appendix A)::

    W' = 2^(n-1) / (2^n - 1) * |W| / ||W||_1 * W        per output filter

|W| is the number of entries of the filter, so |W| / ||W||_1 = 1 / mean(|W|): every
filter is rescaled to mean absolute value 2^(n-1)/(2^n - 1). For weights spread evenly
over [-a, a] this puts them evenly over [-2^n/(2^n-1), 2^n/(2^n-1)], which the weight
quantizer F_Q (``n2uq_w``) cuts into 2^n equally populated levels: maximal entropy of the
quantized weights (the paper's argument via p_i* = 1/N). On Gaussian weights the entropy
stays above 0.98 n bits at n = 2..4.

The factor is a statistic of the weights, not a learned quantity (the paper contrasts it
with learned scaling factors, Table 4), so by default it is treated as a constant in the
backward pass (``detach=True``); ``detach=False`` differentiates through ||W||_1 too.
After training it can be folded into a following BatchNorm (appendix A).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import register_transform


@register_transform("n2uq_entropy")
class EntropyPreservingScale(nn.Module):
    """W -> 2^(n-1)/(2^n - 1) * W / mean|W|, per output filter (axis 0)."""

    #: the layer context it takes (the weight bit width sets the scale, Eq. in the docstring)
    needs = ("bits",)

    def __init__(self, bits: int, detach: bool = True, eps: float = 1e-12) -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits={bits!r}; allowed: an int in 1..16")
        self.bits = bits
        self.detach = bool(detach)
        self.eps = float(eps)
        self.gain = 2 ** (bits - 1) / (2**bits - 1)

    def scale(self, w: Tensor) -> Tensor:
        """The per-filter factor 2^(n-1)/(2^n-1) / mean|W|, shaped to broadcast against w."""
        flat = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
        mean_abs = flat.abs().mean(1)
        if self.detach:
            mean_abs = mean_abs.detach()
        factor = self.gain / mean_abs.clamp_min(self.eps)
        return factor.view((-1,) + (1,) * (w.dim() - 1)) if w.dim() > 1 else factor.reshape(())

    def forward(self, w: Tensor) -> Tensor:
        return w * self.scale(w).to(w.dtype)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, detach={self.detach}"

