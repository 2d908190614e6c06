"""The installed CUDA driver's version, read through ``libcuda`` (no Triton, no CUDA toolkit): a
plan with the ATM plugin records it at build and checks it at load."""
from __future__ import annotations

import ctypes


def driver_cuda_version() -> str:
    """The CUDA version of the installed driver ("13.0"), from ``cuDriverGetVersion``."""
    version = ctypes.c_int()
    if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
        raise RuntimeError("cuDriverGetVersion failed")
    return f"{version.value // 1000}.{version.value % 1000 // 10}"
