"""The quantizer interface shared by every method, and the registry of methods.

A quantizer is a ``torch.nn.Module`` that maps a tensor to its fake-quantized copy
(same shape and dtype) and knows its own level table:

* ``forward(x)``      -- fake-quantized ``x``, differentiable by the method's STE;
* ``levels()``        -- sorted 1-D tensor of every value the output can take
                         (``[C, L]`` for per-channel quantizers);
* ``encode(x)``       -- integer codes, indices into ``levels()``;
* ``decode(codes)``   -- ``levels()`` gathered at ``codes``; equals ``forward(x)`` exactly;
* ``initialize(x, method)`` -- data-driven initialisation from a sample;
* ``config()`` / ``Quantizer.from_config(cfg)`` -- a JSON description that rebuilds the
                         quantizer (what export files store);
* ``integer_levels()``  -- the integer structure of the level table, if any (a grid of
                         integers times a scale, or APoT's sums of powers of two);
* ``dynamic_form()``    -- for a quantizer whose range is measured on every input
                         (``dynamic``), the stateless computation of its integer codes,
                         shared by eval, ONNX export and the integer reference.

``role`` ("weight" or "activation") is what the quantizer is used for; a method may
behave differently per role (``minmax`` observes weights per tensor on every call and
activations with a running range), and a method may name the roles its paper uses it for
(``roles``; another role gives a warning).

Registering a method is one decorated class in one file of this package::

    @register_quantizer("mine")
    class Mine(Quantizer): ...

Gradient scaling: the default ``grad_scale="lsq"`` multiplies a quantizer parameter's
gradient by 1/sqrt(N*Qp) (Esser et al., 2020, Sec. 2.2), N being the number of elements per
parameter, so that a plain optimiser over ``model.parameters()`` trains it (with the raw
gradient, summed over ~1e5 elements, a step size moves by orders of magnitude in a few SGD
steps); ``grad_scale=None`` leaves the paper's raw gradient, for a separate optimiser (the
CLI's AdamW group, :func:`nuq.param_groups`) or to reproduce a paper exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

GRAD_SCALES = (None, "lsq")
ROLES = ("weight", "activation")

#: Floor applied to step sizes / clipping thresholds in the forward pass, so that a
#: parameter pushed to zero or below by the optimiser never divides by zero.
STEP_FLOOR = 1e-8

_REGISTRY: dict[str, type[Quantizer]] = {}


def register_quantizer(name: str) -> Callable[[type[Quantizer]], type[Quantizer]]:
    """Class decorator that registers a :class:`Quantizer` under ``name``."""

    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"quantizer {name!r} is already registered by {_REGISTRY[name]}")
        cls.method = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_quantizers() -> list[str]:
    """Names of every registered quantizer, sorted."""
    return sorted(_REGISTRY)


def quantizer_class(name: str) -> type[Quantizer]:
    """The class registered under ``name``; ValueError listing the names otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown quantizer method {name!r}; registered methods: {', '.join(available_quantizers())}"
        )
    return _REGISTRY[name]


def make_quantizer(name: str, bits: int = 4, signed: bool = False, **kwargs: Any) -> Quantizer:
    """Build the quantizer registered as ``name`` (see the module docstring)."""
    return quantizer_class(name)(bits=bits, signed=signed, **kwargs)


def keep_nan(x: Tensor, y: Tensor) -> Tensor:
    """``y`` with NaN wherever ``x`` is NaN. A level search or a clamp maps NaN to some
    finite level, which would hide a diverged layer from every check downstream. (+-Inf
    stay the clipped levels.) The gradient goes to ``y`` unchanged (see ``_KeepNaN``)."""
    if not x.is_floating_point():
        raise ValueError(f"quantizers take floating-point tensors, got {x.dtype}; convert with .float()")
    return _KeepNaN.apply(x, y)


class _KeepNaN(torch.autograd.Function):
    """Forward: where(isnan(x), x, y). Backward: the incoming gradient goes to ``y`` as it
    is, so the backward pass needs no NaN mask and does not read x again. Only NaN elements
    differ from the gradient of ``torch.where``, and where an activation is NaN the loss
    and every gradient that depends on it are NaN already.

    Under torch.compile the test is ``x != x``: inductor's CPU code computes ``isnan`` one
    element at a time, which made it the costliest part of a fused quantizer pass (LSQ
    forward 0.88 ms with it, 0.24 ms without, on a 1.6M-element activation)."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        nan = x != x if torch.compiler.is_compiling() else torch.isnan(x)  # noqa: PLR0124
        return torch.where(nan, x.to(y.dtype), y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return None, g


def compute_dtype(x: Tensor) -> torch.dtype:
    """Quantizer arithmetic runs in at least float32 (fp16/bf16 inputs are upcast)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_finite(x: Tensor, arg: str) -> None:
    """Raise ValueError if ``x`` holds NaN or Inf (host sync: use outside hot paths)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{arg} contains NaN or Inf values; refusing to use it for quantizer parameters")


class Quantizer(nn.Module):
    """Base class of every quantizer. Subclasses implement ``quantize``, ``levels``
    and ``_initialize``; they may override ``encode`` when a faster path exists."""

    method: ClassVar[str] = ""
    min_bits: ClassVar[int] = 2
    max_bits: ClassVar[int] = 8
    supports_per_channel: ClassVar[bool] = False
    init_methods: ClassVar[tuple[str, ...]] = ("lsq", "mse")
    #: True when the output levels are an evenly spaced integer grid times one scale
    uniform_output: ClassVar[bool] = False
    #: weight transform the method's paper applies before its weight quantizer; used by
    #: QATConfig(weight_transform="auto")
    default_weight_transform: ClassVar[str | None] = None
    #: roles the method is meant for; constructing it for another role warns
    roles: ClassVar[tuple[str, ...]] = ROLES
    #: constructor arguments (beyond bits, signed, role and the base ones) that the
    #: quantizer keeps as attributes of the same name: what ``config()`` serialises
    config_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        bits: int = 4,
        signed: bool = False,
        grad_scale: str | None = "lsq",
        per_channel: bool = False,
        channels: int | None = None,
        role: str = "activation",
    ) -> None:
        super().__init__()
        cls = type(self)
        if isinstance(bits, bool) or not isinstance(bits, int) or not cls.min_bits <= bits <= cls.max_bits:
            raise ValueError(
                f"bits={bits!r} is not supported by {cls.method or cls.__name__!r}: "
                f"use an int in {cls.min_bits}..{cls.max_bits}"
            )
        if grad_scale not in GRAD_SCALES:
            raise ValueError(f"grad_scale={grad_scale!r}; allowed: None or 'lsq'")
        if not isinstance(signed, bool):
            raise ValueError(f"signed={signed!r}; allowed: True or False")
        if per_channel and not cls.supports_per_channel:
            raise ValueError(f"per_channel=True is not supported by {cls.method!r}")
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels={channels!r}; allowed: a positive int or None")
        if role not in ROLES:
            raise ValueError(f"role={role!r}; allowed: {', '.join(ROLES)}")
        if role not in cls.roles:
            warnings.warn(f"{cls.method!r} is meant for {' and '.join(cls.roles)} quantization, not {role}s "
                          f"(see its documentation for the method to use instead)", stacklevel=3)
        self.role = role
        self.bits = bits
        self.signed = signed
        self.grad_scale = grad_scale
        self.per_channel = bool(per_channel)
        self.channels = channels if per_channel else None
        # persistent flag, so a loaded checkpoint is not re-initialised on its first batch
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._init_done = False

    # --- integer grid of the uniform quantizers (LSQ convention) -------------------
    @property
    def qn(self) -> int:
        """Number of negative levels of the integer grid (0 when unsigned)."""
        return 2 ** (self.bits - 1) if self.signed else 0

    @property
    def qp(self) -> int:
        """Number of positive levels of the integer grid."""
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def dynamic(self) -> bool:
        """True when the level table depends on the current input (an observer that
        re-measures every batch); such a quantizer's ``levels()`` holds after ``encode(x)``."""
        return False

    def dynamic_form(self) -> nn.Module | None:
        """For a ``dynamic`` quantizer, a stateless module mapping ``x`` to ``(k, step)``:
        integer codes (as floats, centred: ``k * step`` is the output) and the step it
        measured on ``x``, computed with exactly the operations ``quantize`` uses. None for
        quantizers with a fixed level table."""
        return None

    def integer_levels(self) -> tuple[Tensor, Tensor, str] | None:
        """``(ints, scale, kind)`` with ``levels() == scale * ints`` (float32-exact): ints int64
        [L] shared by every channel, scale float64 0-d or [C]. ``kind`` is ``"grid"`` for a
        table of integers times one scale (uniform grids, DoReFa's odd integers); methods
        with more structure override this (APoT/PoT: ``"dyadic"``, sums of powers of two).
        None when the table has no integer form."""
        from .grid import level_grid

        grid = level_grid(self.levels().detach().cpu().float())
        if grid is None:
            return None
        return grid[0], grid[1].double(), "grid"

    # --- description --------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON description: ``{"method", "bits", "signed", "role", "kwargs"}``;
        ``Quantizer.from_config`` of it (plus the ``state_dict``) rebuilds this quantizer."""
        kwargs = {f: getattr(self, f) for f in type(self).config_fields}
        kwargs.update(grad_scale=self.grad_scale, per_channel=self.per_channel, channels=self.channels)
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        return {"method": self.method, "bits": self.bits, "signed": self.signed, "role": self.role, "kwargs": kwargs}

    @staticmethod
    def from_config(cfg: dict[str, Any]) -> Quantizer:
        """The quantizer a ``config()`` describes (parameters at their initial values)."""
        return make_quantizer(cfg["method"], bits=cfg["bits"], signed=cfg["signed"],
                              role=cfg.get("role", "activation"), **cfg.get("kwargs", {}))

    @property
    def num_levels(self) -> int:
        return 2**self.bits

    def param_shape(self) -> tuple[int, ...]:
        """Shape of a per-tensor () or per-channel (C,) scalar parameter."""
        return (self.channels,) if self.per_channel and self.channels else ()

    def grad_scale_factor(self, x: Tensor) -> float:
        """1/sqrt(N*Qp) for grad_scale='lsq' (N elements per parameter), else 1."""
        if self.grad_scale is None:
            return 1.0
        n = x.numel() // (x.shape[0] if self.per_channel else 1)
        return 1.0 / math.sqrt(max(n, 1) * max(self.qp, 1))

    def channel_view(self, p: Tensor, x: Tensor) -> Tensor:
        """Reshape a [C] parameter to broadcast against x (channel axis 0)."""
        if p.dim() == 0:
            return p
        return p.view((-1,) + (1,) * (x.dim() - 1))

    # --- the interface --------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.per_channel and self.channels is not None and (x.dim() == 0 or x.shape[0] != self.channels):
            raise ValueError(f"a per-channel {self.method!r} quantizer of {self.channels} channels got a tensor of "
                             f"shape {tuple(x.shape)}; channels are on axis 0")
        if not self._init_done:
            if self.training:
                # LSQ-style lazy initialisation from the first batch, for users who skip
                # calibration; prepare(calib=...) initialises explicitly instead.
                self.initialize(x.detach(), method=self.init_methods[0])
            elif not self.dynamic:
                raise ValueError(
                    f"a {self.method!r} quantizer ({'signed' if self.signed else 'unsigned'} {self.bits}-bit "
                    f"{self.role}) is used in eval mode but was never initialised, so its levels are "
                    "placeholders: pass calib=<batches> to nuq.prepare, call nuq.calibrate(model, batches), "
                    "or run at least one training step first")
        return keep_nan(x, self.quantize(x))

    def quantize(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def levels(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def code_dtype(self) -> torch.dtype:
        """Smallest integer dtype that holds every code."""
        n = self.levels().shape[-1]
        return torch.uint8 if n <= 256 else torch.int16 if n <= 2**15 else torch.int32

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Integer codes of ``x``: indices into ``levels()`` (last axis)."""
        y = self.quantize(x)
        lv = self.levels().to(y.dtype)
        if lv.dim() == 1:
            idx = torch.bucketize(y, self._midpoints(lv))
        else:
            flat = y.reshape(y.shape[0], -1)
            idx = torch.searchsorted(self._midpoints(lv).contiguous(), flat.contiguous()).view_as(y)
        return idx.to(self.code_dtype)

    @staticmethod
    def _midpoints(lv: Tensor) -> Tensor:
        # y is exactly one of the levels; comparing against midpoints is robust to
        # duplicated levels (steps at the floor) and to rounding of the level table.
        return (lv[..., 1:] + lv[..., :-1]) / 2

    def decode(self, codes: Tensor) -> Tensor:
        """Values of ``levels()`` at ``codes``."""
        lv = self.levels()
        idx = codes.long()
        if lv.dim() == 1:
            return lv[idx]
        return torch.gather(lv, 1, idx.reshape(idx.shape[0], -1)).view(idx.shape)

    @torch.no_grad()
    def initialize(self, x: Tensor, method: str = "lsq") -> None:
        """Set the quantizer parameters from a sample ``x`` (see ``init_methods``)."""
        if method not in self.init_methods:
            raise ValueError(
                f"method={method!r} is not an init method of {self.method!r}; allowed: {', '.join(self.init_methods)}"
            )
        if x.numel() == 0:
            raise ValueError("x is empty; initialisation needs a non-empty sample")
        check_finite(x, "x (initialisation sample)")
        if self.per_channel:
            if x.dim() < 1:
                raise ValueError("per-channel initialisation needs x with a channel axis 0")
            if self.channels is None:
                self.channels = x.shape[0]
                self._materialize_channels(self.channels)
            elif x.shape[0] != self.channels:
                raise ValueError(f"x has {x.shape[0]} channels on axis 0, the quantizer has {self.channels}")
        self._initialize(x.detach().float(), method)
        self.mark_initialized()

    def mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._init_done = True

    def _initialize(self, x: Tensor, method: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def inherit(self, other: Quantizer) -> None:
        """Initialise from a trained quantizer of the same method, usually at one more
        bit (progressive fine-tuning). The default copies every parameter and buffer of
        the same name and shape; methods whose parameter count depends on ``bits``
        (nuLSQ, N2UQ) override this."""
        if type(other) is not type(self):
            raise ValueError(f"cannot inherit a {type(self).__name__} from a {type(other).__name__}")
        # only what a checkpoint holds: non-persistent buffers (level tables) depend on bits
        mine = {k: v for k, v in self.state_dict(keep_vars=True).items() if "." not in k}
        theirs = {k: v for k, v in other.state_dict(keep_vars=True).items() if "." not in k}
        for name, t in mine.items():
            if name in theirs and theirs[name].shape == t.shape:
                t.data.copy_(theirs[name].data)
            elif name != "initialized":
                got = tuple(theirs[name].shape) if name in theirs else "missing"
                raise ValueError(f"cannot inherit {name!r}: shape {tuple(t.shape)} here, {got} in the source")
        self.mark_initialized()

    def _materialize_channels(self, channels: int) -> None:
        """Resize per-tensor placeholders of scalar parameters to [channels]."""
        for p in self.parameters(recurse=False):
            if p.dim() == 0:
                p.data = p.data.expand(channels).clone()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "initialized"
        if key in state_dict:
            self._init_done = bool(state_dict[key])
        if self.per_channel and self.channels is None:
            # lazily sized per-channel parameters take their size from the checkpoint
            for name, p in self.named_parameters(recurse=False):
                t = state_dict.get(prefix + name)
                if t is not None and t.dim() == 1 and p.dim() == 0:
                    self.channels = t.shape[0]
                    self._materialize_channels(self.channels)
                    break
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        s = f"bits={self.bits}, signed={self.signed}"
        if self.per_channel:
            s += f", per_channel=True, channels={self.channels}"
        if self.grad_scale:
            s += f", grad_scale={self.grad_scale!r}"
        return s


def reduce_to_param(g: Tensor, param: Tensor) -> Tensor:
    """Sum an elementwise gradient over every axis the parameter is broadcast along
    (all axes for a scalar, all but axis 0 for a per-channel [C] parameter)."""
    if param.dim() == 0:
        return g.sum()
    return g.reshape(g.shape[0], -1).sum(1)
