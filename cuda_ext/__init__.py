"""CUDA kernels of espnet_rwkv and their build.

Each op has one source file here, ``<name>.cu``, holding its kernels, launchers
and pybind11 bindings. ``load(name)`` returns the compiled module: the one
built at install time (``espnet_rwkv.cuda_ext._<name>``) if present, else a JIT
build with ninja, cached under torch's extension directory and guarded by a
file lock so that parallel processes (spawned DDP workers) build it once
(``jit_build``).
"""
import importlib
import os
from functools import lru_cache
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
# sm_80 (A100) and sm_90 (H100/H200); PTX of sm_90 for newer parts.
ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17", *ARCH_FLAGS]


def sources(name: str):
    path = SOURCE_DIR / f"{name}.cu"
    if not path.exists():
        raise FileNotFoundError(f"no CUDA source for op {name!r}: {path}")
    return [str(path)]


@lru_cache(maxsize=None)
def load(name: str):
    """The compiled extension for op ``name`` (``cuda_ext/<name>.cu``)."""
    try:
        return importlib.import_module(f"espnet_rwkv.cuda_ext._{name}")
    except ImportError:
        pass
    return jit_build(f"espnet_rwkv_{name}", sources(name))


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
    from torch.utils.cpp_extension import _get_build_directory, load as jit_load

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
