"""Runs espnet_rwkv/ops/wkv/kernel.cu's kernels on the CPU, for checking kernel logic without a GPU.

    PYTHONPATH=. python tools/wkv_emu/emulate.py tests   # test/test_wkv_cuda.py, on the emulator
    PYTHONPATH=. python tools/wkv_emu/emulate.py asan    # bench/wkv_sanitize.py's cases under ASan

The .cu file is compiled by g++ (C++20) with cuda_emu.h after a few text substitutions
(CUDA-only includes, the cp.async helpers, ``<<<>>>`` launches, the stream and device
guard); the host code is compiled as it is, and registered as the op's CPU kernel in place
of kernel.cpp's (the tests' ``backend="cuda"`` becomes ``"cpu"``). One std::thread per CUDA
thread, blocks one after another, cp.async copies land only at the wait, dynamic shared
memory and outputs start as NaN. Exact expf and division stand in for __expf and
__fdividef. Slow (the T=16384 test takes minutes), and it checks logic, not speed or the
GPU's memory model.
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _split_top_level(text):
    """``text`` split at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{<"
        depth -= char in ")]}>"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return parts + [current.strip()]


def _emulated_launches(s):
    """``kernel<<<grid, block, smem, stream>>>(args)`` -> ``emu::launch(kernel, grid, block, smem, args)``."""
    while "<<<" in s:
        open_at = s.index("<<<")
        name_at = re.search(r"[\w:<>, ]*$", s[:open_at]).start()
        name_at += len(s[name_at:open_at]) - len(s[name_at:open_at].lstrip())
        close_at = s.index(">>>(", open_at)
        grid, block, smem, _stream = _split_top_level(s[open_at + 3 : close_at])
        s = s[:name_at] + f"emu::launch({s[name_at:open_at]}, {grid}, {block}, {smem}, " + s[close_at + 4 :]
    return s


def build(src=ROOT / "espnet_rwkv" / "ops" / "wkv" / "kernel.cu", name="wkv_emu", asan=False):
    """Loads the emulated kernels as the CPU kernels of the op espnet_rwkv::wkv_forward (after kernel.cpp's)."""
    from torch.utils.cpp_extension import load

    from espnet_rwkv.ops import extension

    extension.load("wkv", "cpu")  # the schemas and the Python registrations

    s = Path(src).read_text()
    for inc in (
        "#include <c10/cuda/CUDAStream.h>\n",
        "#include <c10/cuda/CUDAGuard.h>\n",
        "#include <c10/cuda/CUDAException.h>\n",
    ):
        s = s.replace(inc, "")
    s = s.replace("#include <torch/library.h>\n", '#include <torch/library.h>\n#include "cuda_emu.h"\n')
    s = s.replace('#include "wkv.h"', f'#include "{Path(src).parent / "wkv.h"}"')
    start = s.index("__device__ __forceinline__ void cp_async16")
    end = s.index("}", s.index("__device__ __forceinline__ void cp_async_wait_all")) + 1
    s = s[:start] + s[end:]  # cuda_emu.h has these
    s = s.replace("extern __shared__ float4 dyn[];", "float4* dyn = emu::g_dyn;")
    s = _emulated_launches(s)
    s = s.replace("c10::cuda::getCurrentCUDAStream()", "0")
    s = re.sub(r"\n\s*const c10::cuda::CUDAGuard guard\([^;]*\);", "", s)
    s = s.replace("at::empty(", "emu::empty_poisoned(")
    s = s.replace("TORCH_LIBRARY_IMPL(espnet_rwkv, CUDA, m)", "TORCH_LIBRARY_IMPL(espnet_rwkv, CPU, m)")
    build_dir = Path(tempfile.gettempdir()) / "wkv_emu_src"
    build_dir.mkdir(exist_ok=True)
    out = build_dir / f"{name}.cpp"
    out.write_text(s)
    flags = ["-std=c++20", "-O2", "-pthread"] + (["-fsanitize=address", "-fno-omit-frame-pointer"] if asan else [])
    return load(
        name=name,
        sources=[str(out)],
        extra_include_paths=[str(HERE)],
        extra_cflags=flags,
        extra_ldflags=["-pthread"] + (["-fsanitize=address"] if asan else []),
        is_python_module=False,
        verbose=False,
    )


# The repository's test/conftest.py (its helpers), then the emulator in place of the extension.
CONFTEST = (
    (ROOT / "test" / "conftest.py").read_text()
    + f"""
import sys
sys.path[:0] = [{str(ROOT / "test")!r}, {str(HERE)!r}]
from emulate import build
build()
"""
)


def run_tests(pytest_args):
    """test/test_wkv_cuda.py with DEV = "cpu", on the emulator (auto-backend test left out)."""
    s = (ROOT / "test" / "test_wkv_cuda.py").read_text()
    s = s.replace('DEV = "cuda"', 'DEV = "cpu"').replace("torch.cuda.synchronize()", "pass")
    s = s.replace('backend="cuda"', 'backend="cpu"')
    s = re.sub(r"pytestmark = \[.*?\]\n", "", s, flags=re.S)
    s = s.replace("def test_auto_backend_", "def _needs_cuda_auto_backend_")  # auto picks CUDA tensors only
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "test_wkv_emulated.py").write_text(s)
        Path(tmp, "conftest.py").write_text(CONFTEST)
        return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp, *pytest_args])


def run_asan():
    """bench/wkv_sanitize.py's cases on CPU tensors, the emulated kernels built with ASan."""
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):
        lib = subprocess.check_output(["gcc", "-print-file-name=libasan.so"], text=True).strip()
        env = dict(os.environ, LD_PRELOAD=lib, ASAN_OPTIONS="detect_leaks=0")
        return subprocess.call([sys.executable, __file__, "asan"], env=env)
    build(name="wkv_emu_asan", asan=True)
    src = (ROOT / "bench" / "wkv_sanitize.py").read_text()
    src = src.replace('device="cuda"', 'device="cpu"').replace("torch.cuda.synchronize()", "pass")
    src = src.replace('backend="cuda"', 'backend="cpu"')
    namespace = {"__name__": "wkv_sanitize"}
    exec(compile(src, "wkv_sanitize.py", "exec"), namespace)
    namespace["main"]()
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "tests"
    sys.exit(run_asan() if what == "asan" else run_tests(sys.argv[2:]))
