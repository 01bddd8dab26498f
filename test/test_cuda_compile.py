"""Every cuda_ext/*.cu compiles with nvcc (compile only, sm_80 and sm_90): CI has nvcc but no GPU."""
import glob
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(ROOT.glob("cuda_ext/*.cu"))


def _nvcc():
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    candidates += sorted(glob.glob("/usr/local/cuda*/bin/nvcc"), reverse=True)
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_compiles(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc found (CUDA_HOME, PATH, /usr/local/cuda*/bin)")
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"]]]
    cmd = [
        nvcc, "-c", str(source), "-o", str(tmp_path / "out.o"), "-std=c++17", "-O3",
        "--use_fast_math", "--threads", "2",
        "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
        f"-DTORCH_EXTENSION_NAME=_{source.stem}", "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-D_GLIBCXX_USE_CXX11_ABI=1", *includes,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
