"""The one loader of the ops' C++ kernels, their build flags, and the fallback when they cannot load.

Each op with kernels (``KERNEL_OPS``) is a registered torch op in the namespace
``espnet_rwkv`` (``torch.ops.espnet_rwkv.*``) with two libraries: ``ops/<op>/kernel.cpp``
(the schemas and the CPU kernels; g++ only) and ``ops/<op>/kernel.cu`` (the CUDA kernels).
``load(op, device_type)`` loads the library of ``device_type`` ("cpu" or "cuda"; the CPU one
first, it defines the schemas), then the op's Python registrations (fake kernels, autograd:
``ops/<op>/library.py``). A library comes from the install (``espnet_rwkv.ops.<op>._cpu`` /
``._cuda``, setup.py) or else from a JIT build with ninja, cached under torch's extension
directory and guarded by a file lock so that parallel processes (spawned DDP workers) build
it once (``jit_build``). A build that fails is remembered per toolkit and source hash, so later
processes fall back at once. ``usable(op, device)`` is what the ops' "auto" backends ask:
whether the kernels for ``device`` load and can run there, warning once if not.

This module imports nothing but the standard library at import time: setup.py reads its
flags before torch may be importable.
"""

import hashlib
import importlib
import importlib.util
import os
import re
import subprocess
import warnings
from functools import cache
from pathlib import Path

OPS_DIR = Path(__file__).resolve().parent
# Ops that have kernels (ops/<op>/kernel.cpp and kernel.cu).
KERNEL_OPS = ("wkv", "pruned_rnnt")
# sm_80 (A100) and sm_90 (H100/H200); PTX of sm_90 for newer parts. The kernels use cp.async:
# no code for GPUs before sm_80.
ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
NVCC_FLAGS = ["-O3", "--use_fast_math", "-std=c++17", *ARCH_FLAGS]
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp"]  # OpenMP: at::parallel_for's threads
LD_FLAGS = ["-fopenmp"]
# The lowest CUDA toolkit: compute_90 code needs 11.8, and torch builds extensions only with
# the major version of its own CUDA (12.6 or newer for torch 2.11), so 12.0 is the floor.
MIN_CUDA_TOOLKIT = (12, 0)
MIN_COMPUTE_CAPABILITY = (8, 0)
# How long a process waits for another's build of the same library before giving up (the
# CUDA kernels take a few minutes on a slow machine).
BUILD_LOCK_TIMEOUT_S = 1800.0

_usable = {}


def source(op: str, device_type: str = "cuda") -> Path:
    """The source of ``op``'s kernels for ``device_type``: ``ops/<op>/kernel.cu`` or ``kernel.cpp``."""
    path = OPS_DIR / op / ("kernel.cu" if device_type == "cuda" else "kernel.cpp")
    if not path.exists():
        raise FileNotFoundError(f"no {device_type} source for op {op!r}: {path}")
    return path


def nvcc_version(nvcc: str) -> tuple:
    """(major, minor) of the CUDA toolkit of ``nvcc``; raises with a clear message if too old or unreadable."""
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"cannot run {nvcc} --version: {err}") from err
    found = re.search(r"release (\d+)\.(\d+)", text)
    if found is None:
        raise RuntimeError(f"cannot read the CUDA version from {nvcc} --version: {text.strip()[-200:]!r}")
    version = (int(found.group(1)), int(found.group(2)))
    if version < MIN_CUDA_TOOLKIT:
        floor = ".".join(map(str, MIN_CUDA_TOOLKIT))
        raise RuntimeError(
            f"the CUDA toolkit at {nvcc} is {version[0]}.{version[1]}; the kernels need {floor} or newer"
        )
    return version


def check_compute_capability(device) -> None:
    """Raises a RuntimeError naming the compute capability if ``device``'s GPU cannot run the kernels."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < MIN_COMPUTE_CAPABILITY:
        floor = ".".join(map(str, MIN_COMPUTE_CAPABILITY))
        raise RuntimeError(
            f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; "
            f"the kernels need {floor} or newer (cp.async)"
        )


@cache
def load(op: str, device_type: str) -> str:
    """Loads ``op``'s library for ``device_type`` ("cpu" or "cuda") and its Python registrations; raises if it cannot.

    Returns the path of the loaded library. The CPU library is loaded first in any case: it
    defines the op's schemas.
    """
    import torch

    if device_type == "cuda":
        load(op, "cpu")
    name = f"_{device_type}"
    spec = importlib.util.find_spec(f"espnet_rwkv.ops.{op}.{name}")
    if spec is not None and spec.origin:
        torch.ops.load_library(spec.origin)
        path = spec.origin
    else:
        path = jit_build(f"espnet_rwkv_{op}{name}", [str(source(op, device_type))], cuda=device_type == "cuda")
    if device_type == "cpu":
        importlib.import_module(f"espnet_rwkv.ops.{op}.library").register()
    return path


def usable(op: str, device) -> bool:
    """Whether ``op``'s kernels load and run on ``device``; on the first failure per device warn once and remember.

    A GPU below compute capability 8.0 gets the warning (naming its capability) and the
    PyTorch implementation, never an error per call.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (op, str(device))
    if key not in _usable:
        try:
            if device.type == "cuda":
                check_compute_capability(device)
            elif device.type != "cpu":
                raise RuntimeError(f"no kernels for {device.type} tensors")
            load(op, device.type)
            _usable[key] = True
        except Exception as err:  # a failed build raises many kinds of errors
            warnings.warn(
                f"{op}: the {device.type.upper()} kernels cannot be used on {device} ({err}); "
                "running the PyTorch implementation instead (slower).",
                RuntimeWarning,
                stacklevel=3,
            )
            _usable[key] = False
    return _usable[key]


def _toolkit(cuda: bool) -> str:
    """What the build depends on besides its sources: torch, flags and the compilers' version lines."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    parts = [torch.__version__, *CXX_FLAGS]
    cxx = os.environ.get("CXX", "c++")
    try:
        parts.append(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout)
    except OSError as err:
        raise RuntimeError(f"no C++ compiler: {cxx} ({err})") from err
    if cuda:
        if CUDA_HOME is None:
            raise RuntimeError("no CUDA toolkit found (set CUDA_HOME)")
        parts += [*NVCC_FLAGS, str(nvcc_version(os.path.join(CUDA_HOME, "bin", "nvcc")))]
    return "\n".join(parts)


def jit_build(ext_name: str, source_files, cuda: bool, lock_timeout_s: float = BUILD_LOCK_TIMEOUT_S) -> str:
    """Build ``source_files`` as library ``ext_name`` with torch's JIT, once across processes; load it; its path.

    Processes that start together (ESPnet's spawned DDP workers) queue on a file
    lock in the build directory: the first compiles, the others find the build
    up to date and only load it; a process that waits more than ``lock_timeout_s``
    raises, saying which lock. torch guards its own build with a ``lock``
    file that a killed build leaves behind, after which every later build waits
    for it forever; holding our lock, no other build can be running, so a
    ``lock`` file still there is stale and is removed. A build that fails leaves
    ``failed-<hash>.txt`` (the hash of the sources, flags and toolkit) with its
    error: later processes raise that error at once, until the file is deleted
    or the sources or the toolkit change.
    """
    from filelock import FileLock, Timeout
    from torch.utils.cpp_extension import _get_build_directory
    from torch.utils.cpp_extension import load as jit_load

    build_dir = Path(_get_build_directory(ext_name, verbose=False))
    digest = hashlib.sha256(_toolkit(cuda).encode())
    for path in source_files:
        digest.update(Path(path).read_bytes())
        for header in Path(path).parent.glob("*.h"):
            digest.update(header.read_bytes())
    failed = build_dir / f"failed-{digest.hexdigest()[:16]}.txt"
    if failed.exists():
        raise RuntimeError(f"{failed.read_text().strip()} (an earlier build failed; delete {failed} to retry)")
    lock = build_dir / "build.lock"
    try:
        with FileLock(str(lock), timeout=lock_timeout_s):
            if failed.exists():  # the build we waited for failed
                raise RuntimeError(f"{failed.read_text().strip()} (an earlier build failed; delete {failed} to retry)")
            Path(build_dir, "lock").unlink(missing_ok=True)
            try:
                return jit_load(
                    name=ext_name,
                    sources=[str(p) for p in source_files],
                    extra_cflags=CXX_FLAGS,
                    extra_cuda_cflags=NVCC_FLAGS if cuda else None,
                    extra_ldflags=LD_FLAGS,
                    is_python_module=False,
                    verbose=False,
                )
            except Exception as err:
                message = " ".join(str(err).split())[-2000:]
                failed.write_text(f"building {ext_name} failed: {message}\n")
                raise
    except Timeout as err:
        raise RuntimeError(
            f"waited {lock_timeout_s:g} s for another process's build of {ext_name} (lock {lock}); "
            "if no build is running, delete the lock file"
        ) from err
