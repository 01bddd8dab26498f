"""Every op's kernel.cu compiles with nvcc and the build's own flags (compile only): CI has nvcc but no GPU."""

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest

from espnet_rwkv.ops import extension

OPS = list(extension.KERNEL_OPS)


def _nvcc():
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_every_kernel_op_has_its_source():
    found = sorted(p.parent.name for p in extension.OPS_DIR.glob("*/kernel.cu"))
    assert found == sorted(OPS)


@pytest.mark.parametrize("op", OPS)
def test_compiles(op, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc found (CUDA_HOME, PATH, /usr/local/cuda*/bin)")
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"]]]
    cmd = [
        nvcc,
        "-c",
        str(extension.source(op)),
        "-o",
        str(tmp_path / "out.o"),
        *extension.NVCC_FLAGS,
        "--threads",
        "2",
        "-DTORCH_EXTENSION_NAME=_C",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        *includes,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
