"""The one loader of the ops' CUDA kernels, their build flags, and the fallback when they cannot load.

Each op with a kernel has one source file, ``espnet_rwkv/ops/<op>/kernel.cu``, holding
its kernels, launchers and pybind11 bindings. ``load(op)`` returns the compiled module:
the one built at install time (``espnet_rwkv.ops.<op>._C``, setup.py) if present, else a
JIT build with ninja, cached under torch's extension directory and guarded by a file lock
so that parallel processes (spawned DDP workers) build it once (``jit_build``).
``usable(op)`` is what the ops' "auto" backends ask: whether it loads, warning once if not.

This module imports nothing but the standard library at import time: setup.py reads
``NVCC_FLAGS`` from it before torch may be importable.
"""

import importlib
import os
import warnings
from functools import cache
from pathlib import Path

OPS_DIR = Path(__file__).resolve().parent
# Ops that have a CUDA kernel (ops/<op>/kernel.cu).
KERNEL_OPS = ("wkv", "pruned_rnnt")
# sm_80 (A100) and sm_90 (H100/H200); PTX of sm_90 for newer parts.
ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17", *ARCH_FLAGS]

_usable = {}


def source(op: str) -> Path:
    """The CUDA source of ``op``: ``espnet_rwkv/ops/<op>/kernel.cu``."""
    path = OPS_DIR / op / "kernel.cu"
    if not path.exists():
        raise FileNotFoundError(f"no CUDA source for op {op!r}: {path}")
    return path


@cache
def load(op: str):
    """The compiled extension of ``op``: built at install time, else built JIT on first use; raises if it cannot be."""
    try:
        return importlib.import_module(f"espnet_rwkv.ops.{op}._C")
    except ImportError:
        pass
    return jit_build(f"espnet_rwkv_{op}", [str(source(op))])


def usable(op: str) -> bool:
    """Whether the extension of ``op`` loads; on the first failure warn once and remember."""
    if op not in _usable:
        try:
            load(op)
            _usable[op] = True
        except Exception as err:  # a failed build raises many kinds of errors
            warnings.warn(
                f"{op}: the CUDA extension could not be built or loaded ({err!r}); "
                "running the PyTorch implementation instead (slower).",
                RuntimeWarning,
                stacklevel=3,
            )
            _usable[op] = False
    return _usable[op]


def jit_build(ext_name: str, source_files):
    """Build ``source_files`` as extension ``ext_name`` with torch's JIT, once across processes.

    Processes that start together (ESPnet's spawned DDP workers) queue on a file
    lock in the build directory: the first compiles, the others find the build
    up to date and only import it. torch guards its own build with a ``lock``
    file that a killed build leaves behind, after which every later build waits
    for it forever; holding our lock, no other build can be running, so a
    ``lock`` file still there is stale and is removed.
    """
    from filelock import FileLock
    from torch.utils.cpp_extension import _get_build_directory
    from torch.utils.cpp_extension import load as jit_load

    build_dir = _get_build_directory(ext_name, verbose=False)
    with FileLock(os.path.join(build_dir, "build.lock")):
        Path(build_dir, "lock").unlink(missing_ok=True)
        return jit_load(
            name=ext_name,
            sources=list(source_files),
            extra_cuda_cflags=NVCC_FLAGS,
            extra_cflags=["-O3"],
            verbose=False,
        )
