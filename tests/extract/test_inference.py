"""Process-level inference settings (each check runs in its own interpreter)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes
import numpy as np
from avda.extract.inference import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = reuse_freed_memory()
before = libc.mallinfo2().hblkhd
block = np.ones(2**26, dtype=np.uint8)  # 64 MiB: over glibc's largest mmap threshold
print(applied, libc.mallinfo2().hblkhd - before)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_large_allocations_come_from_the_heap_unless_turned_off(setting: str) -> None:
    env = {**os.environ, "AVDA_MALLOC_TUNING": setting}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    applied, mapped = out[0] == "True", int(out[1])
    if setting == "1":
        assert applied and mapped == 0  # served from the heap, reusable after free
    else:
        assert not applied and mapped >= 2**26  # glibc's default: a fresh mapping
