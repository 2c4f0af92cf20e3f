"""Arrays too large for memory: `.npy` files written in chunks and read row by row.

`DiskArray` is a read-only [N, ...] view of one `.npy` file. Indexing it with an int, a slice
or an int array reads exactly those rows with positioned reads (`os.pread`, thread-safe, one
read per run of consecutive rows) and returns an ordinary numpy array. Unlike `np.memmap`,
the rows it has read do not stay mapped in the process, so its resident memory does not
grow towards the file size as training visits the whole dataset (mapped file pages count in
a process's RSS until the kernel needs them back).

`RowConcat` joins several such arrays (one per process shard) along the rows, and
`NpyWriter` writes a `.npy` file of known shape chunk by chunk, so that neither writing nor
reading ever holds more than a chunk.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _rows_of(index: Any, num: int) -> tuple[np.ndarray, bool]:
    """Row numbers selected by `index` (int, slice or int array) and whether it was an int."""
    if isinstance(index, int | np.integer):
        row = int(index) + (num if index < 0 else 0)
        if not 0 <= row < num:
            raise IndexError(f"row {index} is out of range for {num} rows")
        return np.array([row], np.int64), True
    if isinstance(index, slice):
        return np.arange(*index.indices(num), dtype=np.int64), False
    rows = np.asarray(index)
    if rows.dtype == bool:
        if rows.shape != (num,):
            raise IndexError(f"boolean index of shape {rows.shape} for {num} rows")
        return np.flatnonzero(rows).astype(np.int64), False
    if not np.issubdtype(rows.dtype, np.integer):
        raise IndexError(f"rows must be ints, a slice or an int array; got {rows.dtype}")
    rows = rows.astype(np.int64)
    rows = np.where(rows < 0, rows + num, rows)
    if rows.size and (rows.min() < 0 or rows.max() >= num):
        raise IndexError(f"rows out of range for {num} rows")
    return rows, False


class _RowArray:
    """What DiskArray and RowConcat share: numpy-like indexing over rows via `_read`."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        rest: tuple = ()
        if isinstance(index, tuple):
            index, rest = index[0], index[1:]
        rows, scalar = _rows_of(index, self.shape[0])
        out = self._read(rows.ravel()).reshape(*rows.shape, *self.shape[1:])
        out = out[0] if scalar else out
        return out[(slice(None),) * (rows.ndim * (not scalar)) + rest] if rest else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class DiskArray(_RowArray):
    """Read-only rows of a C-ordered `.npy` file, read on demand (see the module docstring).

    Args:
      path: the `.npy` file (format 1.0 or 2.0, as numpy writes them; C order, no objects).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f"{path}: .npy format {version} is not supported")
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
        if fortran or dtype.hasobject or not shape:
            raise ValueError(f"{path}: need a C-ordered array of rows without objects")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        expected = self._offset + self.shape[0] * self._row_bytes
        if os.path.getsize(path) != expected:
            raise ValueError(
                f"{path} holds {os.path.getsize(path)} bytes, its header promises {expected} "
                "(truncated or damaged)"
            )
        self._fd = os.open(path, os.O_RDONLY)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *self.shape[1:]), self.dtype)
        if not rows.size:
            return out
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        # Runs of consecutive rows (in file order) are read with one call each.
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        flat = out.reshape(rows.size, -1).view(np.uint8)
        in_order = bool(np.all(order == np.arange(rows.size)))
        staged = flat if in_order else np.empty_like(flat)  # rows in file order: read in place
        for start, stop in zip(np.r_[0, breaks], np.r_[breaks, rows.size], strict=True):
            first = int(ordered[start])
            offset = self._offset + first * self._row_bytes
            _pread_into(self._fd, staged[start:stop].reshape(-1), offset, self.path)
        if not in_order:
            flat[order] = staged
        return out

    def close(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DiskArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"


class RowConcat(_RowArray):
    """Several row arrays (DiskArray or numpy, same trailing shape and dtype) as one [N, ...].

    Args:
      parts: the arrays, in row order.
    """

    def __init__(self, parts: list) -> None:
        if not parts:
            raise ValueError("RowConcat needs at least one part")
        first = parts[0]
        for part in parts[1:]:
            if tuple(part.shape[1:]) != tuple(first.shape[1:]) or part.dtype != first.dtype:
                raise ValueError(
                    f"parts differ: {first.dtype} {tuple(first.shape)} vs "
                    f"{part.dtype} {tuple(part.shape)}"
                )
        self.parts = list(parts)
        self._starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self._starts[-1]), *first.shape[1:])
        self.dtype = np.dtype(first.dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *self.shape[1:]), self.dtype)
        which = np.searchsorted(self._starts, rows, side="right") - 1
        for i in np.unique(which):
            chosen = np.flatnonzero(which == i)
            out[chosen] = self.parts[i][rows[chosen] - self._starts[i]]
        return out


def _pread_into(fd: int, buffer: np.ndarray, offset: int, path: str) -> None:
    """Fills the contiguous uint8 `buffer` from the file at `offset`, in reads of at most
    MAX_READ bytes (Linux returns at most 0x7ffff000 bytes per call)."""
    view, done = memoryview(buffer), 0
    while done < len(view):
        got = os.preadv(fd, [view[done : done + MAX_READ]], offset + done)
        if got <= 0:
            raise OSError(f"{path}: short read at byte {offset + done} (file changed?)")
        done += got


MAX_READ = 1 << 30
FINGERPRINT_CHUNK_BYTES = 64 << 20


def fingerprint(rows: Any, chunk_rows: int = 0) -> str:
    """sha256 of an array's dtype, shape and bytes (hex, 16 chars), read `chunk_rows` at a
    time (0: as many rows as fit in FINGERPRINT_CHUNK_BYTES).

    Same value for a numpy array and a DiskArray/RowConcat of the same content.
    """
    digest = hashlib.sha256(f"{rows.dtype}{tuple(rows.shape)}".encode())
    row_bytes = int(np.prod(rows.shape[1:], dtype=np.int64)) * np.dtype(rows.dtype).itemsize
    chunk_rows = chunk_rows or max(1, FINGERPRINT_CHUNK_BYTES // max(1, row_bytes))
    for start in range(0, len(rows), chunk_rows):
        digest.update(np.ascontiguousarray(rows[start : start + chunk_rows]).tobytes())
    return digest.hexdigest()[:16]


def open_rows(paths: list[str]) -> DiskArray | RowConcat:
    """The `.npy` files `paths` as one row array (a DiskArray when there is one file)."""
    arrays = [DiskArray(p) for p in paths]
    return arrays[0] if len(arrays) == 1 else RowConcat(arrays)


class NpyWriter:
    """Writes a `.npy` file of a known [N, ...] shape in row chunks (appended in order).

    Usage:
      with NpyWriter(path, (n, t, d), np.float16) as w:
        for chunk in chunks: w.write(chunk)
    Leaving the block early (an exception) or with fewer than N rows written deletes the file:
    a `.npy` on disk is always complete. The caller renames it (or its directory) into place.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = path, tuple(int(s) for s in shape), np.dtype(dtype)
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in __exit__
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_2_0(self._file, {**header, "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        """Appends rows [b, ...] (cast to the file's dtype)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if tuple(rows.shape[1:]) != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(
                f"{self.path}: rows {rows.shape} do not fit {self.shape} after {self.rows} rows"
            )
        self._file.write(rows.tobytes())
        self.rows += len(rows)

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if exc_type is not None or self.rows != self.shape[0]:
            os.remove(self.path)
            if exc_type is None:
                raise ValueError(f"{self.path}: {self.rows} of {self.shape[0]} rows written")
