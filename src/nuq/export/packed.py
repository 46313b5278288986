"""``save_packed`` / ``load_packed``: a quantized model as real low-bit weights in one file.

The file is a safetensors file (:mod:`nuq.export.safetensors_io`): any safetensors reader
(``safetensors.safe_open``, ``load_file``) reads its tensors, and nuq's description of the
model rides in the metadata. Files of the earlier container (format versions 1-2,
:mod:`nuq.export.container`) are still read. What is stored:

* per quantized layer, the weight *codes* (indices into the level table) bit-packed at
  ``ceil(log2 L)`` bits for a table of L levels -- 2 bits per weight at W2, 8 at W8 -- and
  the weight level table (``[L]``, or ``[C, L]`` per channel) in the weight's dtype;
* the activation quantizer as a tiny module: its ``config()`` (method, bits, signedness,
  constructor arguments) and its ``state_dict`` tensors, so ``load_packed`` rebuilds the very same
  quantizer (its thresholds included, whatever rule the method uses);
* every other tensor of the model's ``state_dict`` as is (BatchNorm, biases, layers kept
  float);
* a JSON header (the ``"nuq"`` metadata entry): nuq version, the caller's ``meta`` (the
  architecture to rebuild: ``{"model": {"name", "kwargs"}, "num_classes", "in_channels"}``
  and, for a run, its whole config), per layer its geometry, weight and activation
  method, bits and signedness, and the array table.

Arrays are named by the rebuilt model's ``state_dict`` keys (``layers.0.bn1.weight``,
``layers.0.conv1.act_quantizer.step``, ``fc.weight`` of a float layer), except the two
per quantized layer that replace its weight: ``<layer>.weight_codes`` (uint8, packed) and
``<layer>.weight_levels``.

``load_packed`` rebuilds a model whose layers hold the decoded weights (levels gathered
at codes) as frozen float tensors; its outputs equal the fake-quantized model's exactly
(``atol=0`` on CPU float32). Why a level table and codes rather than a scale: non-uniform
methods (nuLSQ, APoT, LCQ) have no single scale, and a table of 2^b floats per layer costs
nothing next to the weights. APoT (Li et al., 2020, Sec. 2.2) stores only the quantized
weights for inference; this file is that, at ``b`` bits per weight.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config_utils import to_dict
from ..models import create_model
from ..nn.attention import split_attention
from ..nn.batchnorm import exact_batchnorm
from ..nn.layers import QuantConv2d, QuantLinear
from ..nn.walk import named_quantizers, quant_layers, set_module
from ..quantizers import Quantizer
from ..runs.checkpoint import load_strict
from .container import MAGIC, pack_bits, read_container, unpack_bits
from .safetensors_io import read_safetensors, write_safetensors
from .tables import check_layer, decoded_weight
from .weight_table import WeightTable

FORMAT = "nuq-packed"
#: 3: a safetensors file; 2: nuq's own container with a header CRC; 1: without it (1 and 2
#: are still read)
FORMAT_VERSION = 3
_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
               "padding_mode")
_LINEAR_ATTRS = ("in_features", "out_features")


def code_bits(num_levels: int) -> int:
    """Bits per code for a table of ``num_levels`` levels (2 bits for 3 or 4 levels)."""
    return max(1, (num_levels - 1).bit_length())


def _geometry(layer: nn.Module) -> dict[str, Any]:
    attrs = _CONV_ATTRS if isinstance(layer, nn.Conv2d) else _LINEAR_ATTRS
    g = {a: (list(v) if isinstance(v, tuple) else v) for a in attrs for v in [getattr(layer, a)]}
    return {"kind": "conv2d" if isinstance(layer, nn.Conv2d) else "linear", **g, "bias": layer.bias is not None}


def _act_spec(q: Quantizer) -> dict[str, Any]:
    """What the header stores of an activation quantizer: its ``config()`` (the role is
    implied by the entry)."""
    cfg = q.config()
    return {k: cfg[k] for k in ("method", "bits", "signed", "kwargs")}


#: state that export fixes and so does not store: every exported quantizer is initialised, and
#: BatchNorm's step counter plays no part in eval (nor in training unless momentum=None)
_IMPLIED = ("initialized", "num_batches_tracked")


def _stored(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.rpartition(".")[2] not in _IMPLIED}


def _with_implied(want: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` plus the implied entries of ``_IMPLIED`` that the module ``want``s."""
    fill = {"initialized": lambda: torch.ones((), dtype=torch.bool),
            "num_batches_tracked": lambda: torch.zeros((), dtype=torch.long)}
    extra = {k: fill[k.rpartition(".")[2]]() for k in want if k not in state and k.rpartition(".")[2] in fill}
    return {**state, **extra}


def _rebuild_quantizer(spec: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> Quantizer:
    try:
        q = Quantizer.from_config({**spec, "role": "activation"})
        q.load_state_dict(_with_implied(q.state_dict(), state), strict=True)
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{where}: cannot rebuild the {spec.get('method')!r} activation quantizer ({e})") from e
    return q.eval()


@torch.no_grad()
def _check_rebuild(q: Quantizer, spec: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> None:
    """Rebuild ``q`` from what will be stored and compare, so a quantizer whose ``config()``
    misses some state fails at save time rather than giving a different model at load."""
    q2 = _rebuild_quantizer(spec, state, where)
    lv = q.levels().detach().cpu()
    x = torch.cat([torch.linspace(-3, 3, 257) * float(lv.abs().max().clamp_min(1e-6)), lv.reshape(-1).float()])
    q1 = copy.deepcopy(q).cpu().eval()
    if not (torch.equal(q2.levels().detach(), lv) and torch.equal(q2(x), q1(x))):
        raise ValueError(f"{where}: the {q.method!r} quantizer rebuilt from its config() "
                         f"{spec['kwargs']} and state_dict differs from the original; it cannot be packed")


def _split_state(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """State of everything but the quantized layers' weights, quantizers and transforms."""
    owned = tuple(f"{n}.{part}" for n in names for part in ("weight_quantizer.", "act_quantizer.",
                                                             "weight_transform."))
    weights = {f"{n}.weight" for n in names}
    return {k: v for k, v in model.state_dict().items() if k not in weights and not k.startswith(owned)}


def _check_model(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = list(quant_layers(model))
    if not layers:
        raise ValueError("model has no quantized layers (QuantConv2d/QuantLinear); prepare it with nuq.prepare "
                         "before exporting")
    for name, layer in layers:
        check_layer(layer, name)
    owners = {f"{n}.{a}" for n, m in layers for a in ("weight_quantizer", "act_quantizer")
              if getattr(m, a) is not None}
    stray = [n for n, _ in named_quantizers(model) if n not in owners]
    if stray:
        raise ValueError(f"quantizer(s) outside a QuantConv2d/QuantLinear cannot be exported: {', '.join(stray)}")
    for n, q in named_quantizers(model):
        if not bool(q.initialized):
            raise ValueError(f"quantizer {n} was never initialised (prepare with calib=..., or train) "
                             "so there is nothing meaningful to export")
    return layers


def float32_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as float32, quantizers and weight transforms left out:
    the size of the same network shipped as a plain float32 model."""
    own = (".weight_quantizer.", ".act_quantizer.", ".weight_transform.")
    return 4 * sum(v.numel() for k, v in model.state_dict().items() if not any(p in f".{k}" for p in own))


def _meta_json(meta: Any) -> dict[str, Any]:
    meta = to_dict(meta) if meta is not None else {}
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta must hold JSON values only ({e})") from e
    return meta


@torch.no_grad()
def save_packed(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the prepared ``model`` to ``path`` as a packed low-bit file (atomically).

    ``meta``: JSON-able dict kept in the header. For :func:`load_packed` to rebuild the
    architecture by itself, give ``{"model": {"name": ..., "kwargs": {...}},
    "num_classes": ..., "in_channels": ...}`` (a run's whole config under ``"config"``
    works too: its ``"model"`` entry is used). Returns sizes: ``bytes`` (the file),
    ``float32_bytes`` (the same model as float32 tensors), ``ratio`` and a breakdown.
    """
    layers = _check_model(model)
    meta = _meta_json(meta)
    was_training = model.training
    model.eval()  # eval: no lazy init, no observer update while encoding
    try:
        arrays: dict[str, torch.Tensor] = {}
        records: list[dict[str, Any]] = []
        code_bytes = 0
        for name, layer in layers:
            rec: dict[str, Any] = {"name": name, **_geometry(layer), "weight_shape": list(layer.weight.shape)}
            wq, aq = layer.weight_quantizer, layer.act_quantizer
            if wq is not None:
                codes, lv, _ = decoded_weight(layer, name)
                width = code_bits(lv.shape[-1])
                packed = pack_bits(codes.cpu().numpy(), width)
                arrays[f"{name}.weight_codes"] = torch.from_numpy(packed)
                arrays[f"{name}.weight_levels"] = lv.cpu()
                code_bytes += packed.nbytes
                rec["weight"] = {"method": wq.method, "bits": wq.bits, "signed": wq.signed,
                                 "per_channel": lv.dim() == 2, "num_levels": lv.shape[-1], "code_bits": width}
            else:
                arrays[f"{name}.weight"] = layer.float_weight().detach().cpu()
                rec["weight"] = None
            if aq is not None:
                state = _stored({k: v.detach().cpu() for k, v in aq.state_dict().items()})
                spec = _act_spec(aq)
                _check_rebuild(aq, spec, state, name)
                arrays.update({f"{name}.act_quantizer.{k}": v for k, v in state.items()})
                rec["act"] = spec
            else:
                rec["act"] = None
            records.append(rec)
        for k, v in _stored(_split_state(model, [n for n, _ in layers])).items():
            arrays[k] = v.detach().cpu()
        # array names are the rebuilt model's state_dict keys, except the codes and levels
        header = {"nuq_version": __version__, "meta": meta, "layers": records}
        size = write_safetensors(path, FORMAT, FORMAT_VERSION, header, arrays)
    finally:
        model.train(was_training)
    fb = float32_bytes(model)
    return {"path": str(path), "bytes": size, "float32_bytes": fb, "ratio": fb / size,
            "weight_code_bytes": code_bytes, "layers": len(records)}


def _architecture(meta: dict[str, Any]) -> nn.Module:
    arch = meta.get("model") or (meta.get("config") or {}).get("model")
    if not isinstance(arch, dict) or "name" not in arch or "num_classes" not in meta or "in_channels" not in meta:
        raise ValueError("the packed file's meta does not name the architecture "
                         "({'model': {'name', 'kwargs'}, 'num_classes', 'in_channels'}); pass model=<skeleton>")
    with torch.random.fork_rng(devices=[]):  # the skeleton's random init must not move the caller's RNG
        return create_model(arch["name"], num_classes=meta["num_classes"], in_channels=meta["in_channels"],
                            **(arch.get("kwargs") or {}))


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a packed file (validated like :func:`load_packed` does)."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no packed model at {p}")
    with open(p, "rb") as f:
        legacy = f.read(len(MAGIC)) == MAGIC
    header, arrays = read_container(p) if legacy else read_safetensors(p, FORMAT)
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={header.get('format')!r})")
    v = header.get("format_version")
    if not isinstance(v, int) or v < 1:
        raise ValueError(f"{path}: bad format_version {v!r}")
    if legacy and v >= 2 and "header_crc32" not in header:
        raise ValueError(f"{path} is corrupted: a format version {v} header without its header_crc32")
    if v > FORMAT_VERSION:
        raise ValueError(f"{path} was written in format version {v} by nuq {header.get('nuq_version')}; this nuq "
                         f"({__version__}) reads format version <= {FORMAT_VERSION}: upgrade nuq")
    return header, arrays


def _decode(rec: dict[str, Any], arrays: dict[str, torch.Tensor], tables: dict[str, torch.Tensor]) -> torch.Tensor:
    name, w, shape = rec["name"], rec["weight"], rec["weight_shape"]
    lv = arrays.pop(f"{name}.weight_levels")
    tables[name] = lv
    count = int(np.prod(shape))
    codes = unpack_bits(arrays.pop(f"{name}.weight_codes").numpy(), w["code_bits"], count)
    if lv.shape[-1] != w["num_levels"] or (codes.size and int(codes.max()) >= lv.shape[-1]):
        raise ValueError(f"layer {name}: weight codes do not match the level table")
    idx = torch.from_numpy(codes)
    if lv.dim() == 2:
        return torch.gather(lv, 1, idx.view(shape[0], -1)).view(shape)
    return lv[idx].view(shape)


@torch.no_grad()
def load_packed(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model of a packed file, in eval mode, on the CPU.

    ``model``: optional skeleton of the same architecture (float, or prepared; modified in
    place). Without it the architecture is built from the header's ``meta``. Each
    quantized layer becomes a QuantConv2d/QuantLinear holding its decoded weight as a
    frozen float tensor, the stored level table as its weight quantizer
    (:class:`~nuq.export.weight_table.WeightTable`) and its rebuilt activation quantizer.
    """
    header, arrays = _read(path)
    try:
        if model is None:
            model = _architecture(header.get("meta") or {})
        split_attention(model)  # as prepare did: attention projections as Linear modules
        state = dict(arrays)
        tables: dict[str, torch.Tensor] = {}
        for rec in header["layers"]:
            name = rec["name"]
            try:
                old = model.get_submodule(name)
            except AttributeError as e:
                raise ValueError(f"the model has no layer {name!r} of the packed file (another architecture?)") from e
            want = {k: rec[k] for k in ("kind", "bias", *(_CONV_ATTRS if rec["kind"] == "conv2d" else _LINEAR_ATTRS))}
            if not isinstance(old, (nn.Conv2d, nn.Linear)) or _geometry(old) != want \
                    or list(old.weight.shape) != rec["weight_shape"]:
                got = ({**_geometry(old), "weight_shape": list(old.weight.shape)}
                       if isinstance(old, (nn.Conv2d, nn.Linear)) else type(old).__name__)
                raise ValueError(f"layer {name!r}: the model has {got}, the packed file "
                                 f"{ {**want, 'weight_shape': rec['weight_shape']} }")
            act = None
            if rec["act"] is not None:
                prefix = f"{name}.act_quantizer."
                act_state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
                act = _rebuild_quantizer(rec["act"], act_state, name)
            cls = QuantConv2d if rec["kind"] == "conv2d" else QuantLinear
            new = cls.from_float(old, act_quantizer=act)
            # fresh tensors: from_float shares the skeleton's, which must not be overwritten
            new.weight = nn.Parameter(torch.empty(rec["weight_shape"], dtype=old.weight.dtype), requires_grad=False)
            if old.bias is not None:
                new.bias = nn.Parameter(old.bias.detach().clone())
            if rec["weight"] is not None:
                state[f"{name}.weight"] = _decode(rec, state, tables)
            set_module(model, name, new)
    except KeyError as e:
        raise ValueError(f"{path}: the header lacks the entry {e}; the file is damaged") from e
    load_strict(model, _with_implied(model.state_dict(), state), f"packed file {path}")
    for name, lv in tables.items():
        model.get_submodule(name).weight_quantizer = WeightTable(lv)
    return exact_batchnorm(model).eval()  # the BatchNorm arithmetic of the prepared model
