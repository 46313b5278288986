"""The packed low-bit file as a safetensors file (format version 3).

safetensors layout (the package's own): 8 bytes little-endian ``n``, ``n`` bytes of JSON
``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {str: str}}``, then the raw
tensor bytes. Any safetensors reader (``safetensors.safe_open``, ``load_file``, the Rust and
JS readers) reads the tensors. What nuq adds lives in ``__metadata__`` (string values only):

* ``"format"``: ``"nuq-packed"``, ``"format_version"``: ``"3"``;
* ``"nuq"``: the JSON of the nuq header (``nuq_version``, ``meta``: the architecture and the
  run config, ``layers``: per layer its geometry and quantizer description);
* ``"crc32"``: CRC32 of the data section, and ``"header_crc32"``: CRC32 of the ``"nuq"``
  string followed by the tensor table (name, dtype, shape, offsets, in name order), so a
  flipped bit anywhere -- weights, quantizer description or a tensor's claimed shape -- is
  an error rather than a silently different model. safetensors itself has no checksum.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import torch

from ..runs.files import atomic_write_bytes

FORMAT_KEY = "format"
_LEN = 8


def _table_bytes(table: dict[str, Any]) -> bytes:
    rows = [[k, v.get("dtype"), v.get("shape"), v.get("data_offsets")]
            for k, v in sorted(table.items()) if k != "__metadata__"]
    return json.dumps(rows, separators=(",", ":")).encode()


def _split(raw: bytes, where: Path) -> tuple[dict[str, Any], bytes]:
    """(the JSON table, the data section) of safetensors bytes; ValueError if malformed."""
    if len(raw) < _LEN:
        raise ValueError(f"{where} is truncated ({len(raw)} bytes)")
    n = int.from_bytes(raw[:_LEN], "little")
    if _LEN + n > len(raw):
        raise ValueError(f"{where} is truncated or not a safetensors file: header of {n} bytes, the file holds "
                         f"{len(raw) - _LEN} after the length prefix")
    try:
        table = json.loads(raw[_LEN:_LEN + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where} is not a safetensors file, or its header is damaged ({e})") from e
    if not isinstance(table, dict):
        raise ValueError(f"{where} is not a safetensors file (its header is not a JSON object)")
    return table, raw[_LEN + n:]


def _serialise(arrays: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    # own, contiguous storage per tensor: safetensors refuses tensors that share memory
    return save({k: v.detach().cpu().contiguous().clone() for k, v in arrays.items()}, metadata=metadata)


def write_safetensors(path: str | Path, fmt: str, version: int, header: dict[str, Any],
                      arrays: dict[str, torch.Tensor]) -> int:
    """Write ``arrays`` with ``header`` in the metadata, atomically; returns the file size."""
    body = json.dumps(header, separators=(",", ":"), allow_nan=False)
    meta = {FORMAT_KEY: fmt, "format_version": str(version), "nuq": body}
    # the data section does not depend on the metadata: serialise once to learn the tensor
    # table and CRCs, then again with them
    table, data = _split(_serialise(arrays, meta), Path(path))
    meta.update(crc32=str(zlib.crc32(data)), header_crc32=str(zlib.crc32(body.encode() + _table_bytes(table))))
    raw = _serialise(arrays, meta)
    atomic_write_bytes(Path(path), lambda f: f.write(raw))
    return len(raw)


def read_safetensors(path: str | Path, fmt: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(nuq header with ``format``/``format_version`` added, tensors) of a file written by
    :func:`write_safetensors`; ValueError naming what is wrong otherwise."""
    p = Path(path)
    raw = p.read_bytes()
    table, data = _split(raw, p)
    meta = table.get("__metadata__")
    if not isinstance(meta, dict) or meta.get(FORMAT_KEY) != fmt or "nuq" not in meta:
        raise ValueError(f"{p} is a safetensors file but not a nuq export (no {fmt!r} metadata); read plain "
                         "weights with safetensors.torch.load_file")
    try:
        version = int(meta.get("format_version", ""))
        crc, head_crc = int(meta["crc32"]), int(meta["header_crc32"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{p} is corrupted: bad or missing format_version/crc32 metadata ({e})") from e
    if zlib.crc32(meta["nuq"].encode() + _table_bytes(table)) != head_crc:
        raise ValueError(f"{p} is corrupted: CRC32 of the header does not match (a changed or damaged header)")
    if zlib.crc32(data) != crc:
        raise ValueError(f"{p} is corrupted: CRC32 of the data section does not match the header")
    header = json.loads(meta["nuq"])
    if not isinstance(header, dict):
        raise ValueError(f"{p}: the nuq header is not a JSON object")
    header.update(format=fmt, format_version=version)
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        arrays = load(raw)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(f"{p}: the tensors cannot be read ({e})") from e
    return header, arrays
