"""BatchNorm whose eval arithmetic is written out: ``b + a * x`` with ``a = gamma /
sqrt(var + eps)`` and ``b = beta - mean * a``, two float32 operations per element.

Why: the layers before and after a BatchNorm compute on integers (:mod:`nuq.nn.integer_eval`),
so a quantized model's eval output is the same in every runtime -- except for the
BatchNorms in between. PyTorch's CPU kernel and ONNX Runtime's BatchNormalization round
differently in the last bit (one fuses the multiply-add, the other does not), and an
activation that then lands within that bit of the next quantizer's threshold moves one
level: on the shipped ResNet-20 at W2A2, 1-4 of 3000 test images got logits up to 1.1
apart. Written as a multiply and an add of constants, both runtimes perform the same two
correctly rounded IEEE operations (``sqrt`` and the division are correctly rounded too), and
the exported graph (``Mul(a, x)``, ``Add(b, .)``, constants first so that ONNX Runtime
does not fold them into a preceding float convolution) gives PyTorch's bits.

Training, inputs that are not float32, autocast and compiled graphs keep PyTorch's own
kernel. ``prepare`` turns every plain ``BatchNorm1d/2d/3d`` of the model into this class
(same parameters, buffers and state_dict keys).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _ExactEval:
    def forward(self, x: Tensor) -> Tensor:
        if (self.training or not self.track_running_stats or self.running_mean is None or x.dtype != torch.float32
                or torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling()):
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        a = 1.0 / torch.sqrt(self.running_var + self.eps) if self.weight is None \
            else self.weight / torch.sqrt(self.running_var + self.eps)
        b = -self.running_mean * a if self.bias is None else self.bias - self.running_mean * a
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return b.view(shape) + a.view(shape) * x


class ExactBatchNorm1d(_ExactEval, nn.BatchNorm1d):
    pass


class ExactBatchNorm2d(_ExactEval, nn.BatchNorm2d):
    pass


class ExactBatchNorm3d(_ExactEval, nn.BatchNorm3d):
    pass


_EXACT = {nn.BatchNorm1d: ExactBatchNorm1d, nn.BatchNorm2d: ExactBatchNorm2d, nn.BatchNorm3d: ExactBatchNorm3d}


def exact_batchnorm(model: nn.Module) -> nn.Module:
    """Give every plain BatchNorm of ``model`` (in place) the written-out eval arithmetic.
    Subclasses of BatchNorm (SyncBatchNorm, a library's own) are left as they are."""
    for m in model.modules():
        cls = _EXACT.get(type(m))
        if cls is not None:
            m.__class__ = cls
    return model
