"""Flat views of tensors in memory order, for the passes that need 1-D tensors.

Searches, gathers and scatters (``bucketize``, ``index_select``, ``index_add_``) work on
1-D tensors. Flattening a channels_last activation with ``x.contiguous().view(-1)`` copies
it into NCHW order, and the result viewed back as ``x.shape`` is NCHW: the next
convolution converts it back again. Elementwise work does not care about the order, so a
dense tensor (contiguous or channels_last) is flattened here as a view of its memory, and
results are viewed back with the input's strides: no copies, and the layout is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_dense(t: Tensor) -> bool:
    """Whether t's elements fill its memory in one of PyTorch's memory formats."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def layout(t: Tensor) -> tuple[int, ...]:
    """The strides ``flat(t)``'s order stands for: t's own when dense, else contiguous ones."""
    return t.stride() if is_dense(t) else torch.empty(t.shape, device="meta").stride()


def _order(shape: torch.Size, strides: tuple[int, ...]) -> list[int]:
    """The dims from outermost to innermost in memory (ties, which only size-1 dims of a
    dense tensor can have, keep their order: a size-1 dim never stops a view)."""
    return sorted(range(len(shape)), key=lambda d: -strides[d])


def flat(t: Tensor) -> Tensor:
    """t's elements as a 1-D tensor in memory order: a view when t is dense, else a copy in
    logical order (``layout(t)`` says which order)."""
    return flat_in(t, layout(t))


def flat_in(t: Tensor, strides: tuple[int, ...]) -> Tensor:
    """t's elements, 1-D, in the memory order of ``strides`` (a ``layout``): a view when t
    is laid out so already, else one copy. Only views and reshapes, no ``as_strided``:
    a compiled graph may hand a tensor over with other storage offsets than it traced."""
    return t.permute(_order(t.shape, strides)).reshape(-1)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b) over all elements without a full-size temporary, and without copying
    two tensors laid out alike (flattening channels_last ones with reshape would)."""
    st = layout(a)
    return torch.dot(flat_in(a, st), flat_in(b, st))


def unflat(f: Tensor, shape: torch.Size, strides: tuple[int, ...]) -> Tensor:
    """The inverse of ``flat``/``flat_in``: a contiguous 1-D f as a tensor of ``shape``
    laid out by ``strides`` (a view)."""
    order = _order(shape, strides)
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return f.view([shape[d] for d in order]).permute(inverse)
