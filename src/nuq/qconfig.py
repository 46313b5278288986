"""``QATConfig``: which quantizer goes where, and how it starts.

A frozen dataclass that validates itself: unknown methods, bit widths outside a
method's range, unknown init methods and bad policy values fail at construction, before
any model is touched.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from .config_utils import check_choice, check_fields
from .nn.transforms import available_transforms
from .quantizers import quantizer_class

FIRST_LAST = ("8bit", "float", "same")
ACT_SIGNED = ("auto", True, False)
OVERRIDE_KEYS = ("weight", "act", "w_bits", "a_bits", "skip", "weight_transform")


@dataclass(frozen=True)
class LayerSpec:
    """The resolved quantization of one layer (None = keep float)."""

    weight: str | None
    act: str | None
    w_bits: int
    a_bits: int
    weight_transform: str | None = None


@dataclass(frozen=True)
class QATConfig:
    """Quantization recipe and layer policy for :func:`nuq.prepare`.

    * ``weight`` / ``act``: registered method names (``nuq.available_quantizers()``),
      or None to keep weights / activations float.
    * ``first_last``: "8bit" (APoT Sec. 4.1: 8-bit weights and inputs, with the quantizer
      ``first_last_method``, by default ``minmax``), "float", or "same" (as every other layer).
    * ``skip``: fnmatch patterns of module names left float.
    * ``overrides``: {pattern: {"weight"|"act"|"w_bits"|"a_bits"|"skip"|"weight_transform": value}}.
    * ``quantize_downsample``: whether 1x1 shortcut convolutions (names matching
      ``downsample_patterns``) are quantized.
    * ``w_init`` / ``a_init``: initialisation method of each quantizer class. "auto" picks,
      for weights, the method's first (LSQ init for LSQ, MSE for APoT) and, for
      activations, the MSE init over the calibration batches where the method has one.
    * ``weight_transform``: a registered weight transform, None, or "auto" (the method's
      paper default: APoT weight normalization for apot/pot/uniform/lloyd, tanh for
      DoReFa, entropy-preserving scaling for N2UQ's F_Q).
    * ``act_signed``: "auto" decides per layer from calibration data (signed when the
      layer ever sees a negative input; without calibration only the first layer is
      signed), or force True/False.
    """

    weight: str | None = "lsq"
    act: str | None = "lsq"
    w_bits: int = 4
    a_bits: int = 4
    first_last: str = "8bit"
    first_last_method: str = "minmax"
    per_channel: bool = False
    w_init: str = "auto"
    a_init: str = "auto"
    grad_scale: str | None = "lsq"
    quantize_downsample: bool = True
    downsample_patterns: tuple[str, ...] = ("*downsample*", "*shortcut*")
    skip: tuple[str, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    weight_transform: str | None = "auto"
    weight_kwargs: dict[str, Any] = field(default_factory=dict)
    act_kwargs: dict[str, Any] = field(default_factory=dict)
    act_signed: str | bool = "auto"

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("skip", "downsample_patterns"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_choice(self.first_last, FIRST_LAST, "first_last")
        check_choice(self.act_signed, ACT_SIGNED, "act_signed")
        check_choice(self.grad_scale, (None, "lsq"), "grad_scale")
        if not isinstance(self.overrides, dict):
            raise ValueError("overrides must be a mapping {pattern: {key: value}}")
        for pattern, ov in self.overrides.items():
            if not isinstance(ov, dict):
                raise ValueError(f"overrides[{pattern!r}] must be a mapping")
            bad = sorted(set(ov) - set(OVERRIDE_KEYS))
            if bad:
                raise ValueError(f"overrides[{pattern!r}] has unknown key(s) {bad}; "
                                 f"allowed: {', '.join(OVERRIDE_KEYS)}")
        self._check_pair(self.first_last_method, 8, None, "first_last_method", "8-bit first/last layers", None,
                         signed=True)
        self._check_pair(self.weight, self.w_bits, self.w_init, "weight", "w_bits", "w_init", signed=True)
        self._check_pair(self.act, self.a_bits, self.a_init, "act", "a_bits", "a_init", signed=False)
        for arg, method in (("weight_kwargs", self.weight), ("act_kwargs", self.act)):
            kwargs = getattr(self, arg)
            allowed = quantizer_class(method).config_fields if method is not None else ()
            bad = sorted(set(kwargs) - set(allowed))
            if bad:
                raise ValueError(f"{arg} has unknown key(s) {', '.join(map(repr, bad))} for {method!r}; allowed: "
                                 f"{', '.join(allowed) or 'none (the method takes no options)'}")
        if self.per_channel and self.weight is not None and not quantizer_class(self.weight).supports_per_channel:
            raise ValueError(f"per_channel=True: weight method {self.weight!r} has no per-channel mode")
        if self.weight_transform not in (None, "auto") and self.weight_transform not in available_transforms():
            raise ValueError(f"weight_transform={self.weight_transform!r}; registered: {available_transforms()}")
        for ov in self.overrides.values():
            self._check_pair(ov.get("weight", self.weight), ov.get("w_bits", self.w_bits), None,
                             "overrides.weight", "overrides.w_bits", None, signed=True)
            self._check_pair(ov.get("act", self.act), ov.get("a_bits", self.a_bits), None,
                             "overrides.act", "overrides.a_bits", None, signed=False)

    @staticmethod
    def _check_pair(method, bits, init, m_arg, b_arg, i_arg, signed) -> None:
        if method is None:
            return
        try:
            cls = quantizer_class(method)
        except ValueError as e:  # name the key, then the registered methods
            raise ValueError(f"{m_arg}: {e}") from None
        if isinstance(bits, bool) or not isinstance(bits, int) or not cls.min_bits <= bits <= cls.max_bits:
            raise ValueError(f"{b_arg}={bits!r} is not supported by {m_arg}={method!r}: "
                             f"use an int in {cls.min_bits}..{cls.max_bits}")
        if init is not None and init != "auto" and init not in cls.init_methods:
            raise ValueError(f"{i_arg}={init!r} is not an init method of {method!r}; allowed: {cls.init_methods}")

    def replace(self, **changes: Any) -> QATConfig:
        return dataclasses.replace(self, **changes)

    def layer_spec(self, name: str, is_first: bool, is_last: bool, is_downsample: bool) -> LayerSpec | None:
        """The quantization of module ``name``, or None to leave it float."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.skip):
            return None
        if is_downsample and not self.quantize_downsample:
            return None
        spec = LayerSpec(self.weight, self.act, self.w_bits, self.a_bits, self.weight_transform)
        if is_first or is_last:
            if self.first_last == "float":
                return None
            if self.first_last == "8bit":
                spec = LayerSpec(self.first_last_method, self.first_last_method, 8, 8, None)
        for pattern, ov in self.overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                if ov.get("skip"):
                    return None
                spec = dataclasses.replace(spec, **{k: v for k, v in ov.items() if k != "skip"})
        if spec.weight_transform == "auto":
            auto = quantizer_class(spec.weight).default_weight_transform if spec.weight else None
            spec = dataclasses.replace(spec, weight_transform=auto)
        return spec
