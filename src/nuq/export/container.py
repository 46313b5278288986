"""The single-file container of ``.nuqpack`` files, and bit packing of integer codes.

Layout (all integers little-endian)::

    offset 0   8 bytes   magic  b"NUQPACK\\x00"
    offset 8   8 bytes   uint64 n = length of the JSON header in bytes
    offset 16  n bytes   JSON header (UTF-8)
               padding   zero bytes up to the next multiple of 8: the data section starts here
               data      raw arrays, each starting at a multiple of 8 bytes from the data start

The header names every array: ``"arrays": {name: [dtype, shape, offset]}`` (``offset`` in
bytes from the data start, ``dtype`` a torch dtype name such as ``"float32"``),
plus ``"data_bytes"`` (length of the data section), ``"crc32"`` of the data section and
``"header_crc32"`` of the header itself (its JSON, written without the two CRC entries), so
a truncated or corrupted file -- weights or header -- is an error rather than a silently
different model. There is no
pickle anywhere: the file is readable with ``json`` and ``numpy.frombuffer`` alone.

Bit packing: code ``i`` of a tensor packed at ``w`` bits occupies bits ``[i*w, (i+1)*w)`` of a
little-endian bit stream (least significant bit first within each byte), so four 2-bit
codes c0..c3 make the byte ``c0 | c1 << 2 | c2 << 4 | c3 << 6``.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runs.files import atomic_write_bytes

MAGIC = b"NUQPACK\x00"
ALIGN = 8
_PREFIX = len(MAGIC) + 8

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}


def _dump(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), allow_nan=False).encode()


def _header_crc(header: dict[str, Any]) -> int:
    """CRC32 of the header's JSON without its CRC entries (re-serialised: the writer's own
    compact, order-preserving form, which ``json`` round-trips exactly)."""
    return zlib.crc32(_dump({k: v for k, v in header.items() if k not in ("crc32", "header_crc32")}))


def _pad(n: int) -> int:
    return -n % ALIGN


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a CPU tensor (any dtype of ``DTYPES``, bf16 included)."""
    if t.dtype not in _NAMES:
        raise ValueError(f"tensors of dtype {t.dtype} cannot be stored; supported: {', '.join(DTYPES)}")
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def write_container(path: str | Path, header: dict[str, Any], arrays: dict[str, torch.Tensor]) -> int:
    """Write ``header`` and ``arrays`` to ``path`` atomically; returns the file size in bytes."""
    blobs: list[bytes] = []
    table: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, t in arrays.items():
        raw = tensor_bytes(t)
        table[name] = [_NAMES[t.dtype], list(t.shape), offset]
        blobs += [raw, b"\x00" * _pad(len(raw))]
        offset += len(raw) + _pad(len(raw))
    data = b"".join(blobs)
    full = dict(header, arrays=table, data_bytes=len(data))
    full.update(crc32=zlib.crc32(data), header_crc32=_header_crc(full))
    head = _dump(full)
    prefix = MAGIC + len(head).to_bytes(8, "little") + head
    prefix += b"\x00" * _pad(len(prefix))

    def write(f) -> None:
        f.write(prefix)
        f.write(data)

    atomic_write_bytes(Path(path), write)
    return len(prefix) + len(data)


def read_container(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a container written by :func:`write_container`; ValueError on any damage."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no packed model at {p}")
    raw = p.read_bytes()
    if len(raw) < _PREFIX or raw[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{p} is not a nuq packed file (bad magic bytes; truncated or another format)")
    n = int.from_bytes(raw[len(MAGIC):_PREFIX], "little")
    if _PREFIX + n > len(raw):
        raise ValueError(f"{p} is truncated: header of {n} bytes, file holds {len(raw) - _PREFIX} after the prefix")
    try:
        header = json.loads(raw[_PREFIX:_PREFIX + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: the JSON header cannot be parsed ({e})") from e
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise ValueError(f"{p}: the header is not a nuq packed header")
    if "header_crc32" in header and header["header_crc32"] != _header_crc(header):
        raise ValueError(f"{p} is corrupted: CRC32 of the header does not match (a changed or damaged header)")
    start = _PREFIX + n + _pad(_PREFIX + n)
    data = raw[start:]
    want = header.get("data_bytes")
    if not isinstance(want, int) or len(data) != want:
        raise ValueError(f"{p} is truncated or has trailing bytes: data section of {len(data)} bytes, "
                         f"header says {want}")
    if zlib.crc32(data) != header.get("crc32"):
        raise ValueError(f"{p} is corrupted: CRC32 of the data section does not match the header")
    arrays: dict[str, torch.Tensor] = {}
    for name, spec in header["arrays"].items():
        try:
            dtype, shape, off = DTYPES[spec[0]], [int(s) for s in spec[1]], int(spec[2])
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ValueError(f"{p}: bad entry for array {name!r} in the header ({e!r})") from e
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a huge claimed shape cannot wrap around
        if off < 0 or off + nbytes > len(data) or min(shape, default=0) < 0:
            raise ValueError(f"{p}: array {name!r} lies outside the data section")
        if nbytes == 0:
            arrays[name] = torch.empty(shape, dtype=dtype)
        else:
            buf = bytearray(data[off:off + nbytes])  # writable copy: torch.frombuffer shares memory
            arrays[name] = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape)
    return header, arrays


def pack_bits(codes: np.ndarray, width: int) -> np.ndarray:
    """Pack non-negative integer ``codes`` at ``width`` bits each into a uint8 array."""
    if not 1 <= width <= 32:
        raise ValueError(f"width={width}; allowed: 1..32 bits")
    v = np.asarray(codes).reshape(-1).astype(np.uint64)
    if v.size and int(v.max()) >> width:
        raise ValueError(f"a code ({int(v.max())}) does not fit in {width} bits")
    if width == 8:
        return v.astype(np.uint8)
    bits = ((v[:, None] >> np.arange(width, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes as int64."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size * 8 < count * width:
        raise ValueError(f"packed codes hold {packed.size * 8} bits, {count} codes of {width} bits need more")
    if width == 8:
        return packed[:count].astype(np.int64)
    bits = np.unpackbits(packed, count=count * width, bitorder="little").reshape(count, width).astype(np.int64)
    return (bits << np.arange(width, dtype=np.int64)).sum(1)
