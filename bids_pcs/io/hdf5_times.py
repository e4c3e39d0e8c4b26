"""Reproducible HDF5 files: clear the creation times HDF5 stamps into object headers.

ITK writes ANTs composite transforms (``.h5``) with HDF5's default object
creation properties, which record the access, modification, change and birth
times of every group and dataset.  Two runs that compute the very same
transform therefore write files that differ in those bytes (and in the
checksum that covers them).  antspyx exposes no way to switch the stamps off,
so :func:`clear_object_times` sets them to 0 afterwards and recomputes each
header's checksum: identical transforms then give identical files.

Only version-2 object headers (``OHDR``, the ones that carry times) are
touched, and only those whose stored checksum the HDF5 algorithm reproduces,
so bytes that merely look like a header are left alone.
"""

from __future__ import annotations

import struct
from pathlib import Path

_SIGNATURE = b"OHDR"
_TIMES_STORED = 0x20  # flags bit 5: four 32-bit times follow the flags
_PHASE_CHANGE_STORED = 0x10  # flags bit 4: two 16-bit attribute limits follow
_MASK = 0xFFFFFFFF


def clear_object_times(path: str | Path) -> int:
    """Zero the object times of every version-2 header of the HDF5 file ``path``.

    The file is rewritten in place only when something changed.

    Returns:
        the number of headers whose times were cleared.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    cleared = 0
    start = data.find(_SIGNATURE)
    while start >= 0:
        if _clear_header(data, start):
            cleared += 1
        start = data.find(_SIGNATURE, start + 1)
    if cleared:
        path.write_bytes(bytes(data))
    return cleared


def _clear_header(data: bytearray, start: int) -> bool:
    """Clear the times of the header at ``start``; False if it is not one that has them."""
    if start + 6 > len(data) or data[start + 4] != 2:
        return False
    flags = data[start + 5]
    if not flags & _TIMES_STORED:
        return False
    times = start + 6
    size_at = times + 16 + (4 if flags & _PHASE_CHANGE_STORED else 0)
    size_bytes = 1 << (flags & 0x03)
    if size_at + size_bytes > len(data):
        return False
    chunk_size = int.from_bytes(data[size_at:size_at + size_bytes], "little")
    end = size_at + size_bytes + chunk_size  # the checksum follows the first chunk
    if end + 4 > len(data):
        return False
    (stored,) = struct.unpack_from("<I", data, end)
    if lookup3(bytes(data[start:end])) != stored:
        return False
    if any(data[times:times + 16]):
        data[times:times + 16] = bytes(16)
        struct.pack_into("<I", data, end, lookup3(bytes(data[start:end])))
    return True


def lookup3(key: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``, the checksum of HDF5 metadata."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    offset = 0
    while length > 12:
        a = (a + int.from_bytes(key[offset:offset + 4], "little")) & _MASK
        b = (b + int.from_bytes(key[offset + 4:offset + 8], "little")) & _MASK
        c = (c + int.from_bytes(key[offset + 8:offset + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        length -= 12
        offset += 12
    if length == 0:
        return c
    tail = key[offset:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _MASK) ^ _rot(c, 4)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 6)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 8)
    b = (b + a) & _MASK
    a = ((a - c) & _MASK) ^ _rot(c, 16)
    c = (c + b) & _MASK
    b = ((b - a) & _MASK) ^ _rot(a, 19)
    a = (a + c) & _MASK
    c = ((c - b) & _MASK) ^ _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    c = ((c ^ b) - _rot(b, 24)) & _MASK
    return c
