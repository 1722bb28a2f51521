"""Minimal safetensors reader/writer on numpy memory maps.

Why our own: the `safetensors` numpy backend cannot return bfloat16 tensors (Qwen3
checkpoints are bf16), and sharded loading needs to read *slices* of a tensor without
touching the rest. The format is simple: an 8-byte little-endian header length, a JSON
header `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the raw bytes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy view of one `.safetensors` file; tensors are memory-mapped, not loaded."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise ValueError("file shorter than the 8-byte header length")
                (header_len,) = struct.unpack("<Q", raw_len)
                if header_len > size - 8:
                    raise ValueError(f"header length {header_len} exceeds file size {size}")
                header = json.loads(f.read(header_len))
        except (ValueError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"corrupted safetensors file {self.path}: {e}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        self._entries = header
        self._data_start = 8 + header_len
        for name, entry in header.items():
            begin, end = entry["data_offsets"]
            dtype = _DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
            expected = int(np.prod(entry["shape"], dtype=np.int64)) * dtype.itemsize
            if end - begin != expected or self._data_start + end > size:
                raise ValueError(f"corrupted safetensors file {self.path}: tensor {name!r} "
                                 f"data is truncated or inconsistent with shape {entry['shape']}")
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped array (no copy until sliced or cast)."""
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        buf = self._mmap[self._data_start + begin:self._data_start + end]
        return buf.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def save_file(tensors: dict[str, np.ndarray], path: str | Path,
              metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (numpy, C-contiguous after conversion) to `path` atomically."""
    path = Path(path)
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be saved")
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align tensor data to 8 bytes
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
    tmp.replace(path)


def open_checkpoint_files(files: Iterable[Path]) -> dict[str, SafetensorsFile]:
    """Maps each tensor name to the opened file that holds it."""
    where: dict[str, SafetensorsFile] = {}
    for file in files:
        st = SafetensorsFile(file)
        for name in st.keys():
            where[name] = st
    return where
