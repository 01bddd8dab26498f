"""espnet_rwkv: RWKV encoder + BAT loss for ESPnet's transducer task.

Each op with kernels has ``espnet_rwkv/ops/<op>/kernel.cpp`` (its schemas and CPU kernels)
and ``kernel.cu`` (its CUDA kernels), installed as package data (built JIT on first use),
or built ahead of time here: the CPU libraries ``espnet_rwkv.ops.<op>._cpu`` wherever torch
is importable at build time (g++ only), the CUDA ones ``espnet_rwkv.ops.<op>._cuda`` where a
CUDA toolkit is present too. The version is ``__version__`` in espnet_rwkv/__init__.py.
"""

import importlib.util
import os
import re
import warnings
from pathlib import Path

from setuptools import find_packages, setup


def _kernel_build():
    """setup() arguments for the ahead-of-time build of espnet_rwkv/ops/*/kernel.{cpp,cu}, or none.

    It needs torch at build time: ``pip install --no-build-isolation``; without it the
    kernels build JIT on first use (espnet_rwkv.ops.extension.load). The CUDA libraries are
    built only where a GPU is visible or ESPNET_RWKV_CUDA_BUILD=1 asks for it, so installs on
    CPU machines (CI) stay quick, and only with a toolkit of at least
    extension.MIN_CUDA_TOOLKIT; ESPNET_RWKV_NO_CUDA_BUILD=1 always skips them.
    """
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:  # isolated build environment: no torch there
        return {}
    # The loader's own flags and op list; it imports only the standard library at import time.
    spec = importlib.util.spec_from_file_location("_extension", "espnet_rwkv/ops/extension.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    extensions = [
        CppExtension(
            f"espnet_rwkv.ops.{op}._cpu",
            [f"espnet_rwkv/ops/{op}/kernel.cpp"],
            extra_compile_args=loader.CXX_FLAGS,
            extra_link_args=loader.LD_FLAGS,
        )
        for op in loader.KERNEL_OPS
    ]
    wanted = torch.cuda.is_available() or os.environ.get("ESPNET_RWKV_CUDA_BUILD") == "1"
    if CUDA_HOME is not None and wanted and os.environ.get("ESPNET_RWKV_NO_CUDA_BUILD") != "1":
        try:
            loader.nvcc_version(os.path.join(CUDA_HOME, "bin", "nvcc"))
        except RuntimeError as err:
            warnings.warn(
                f"espnet_rwkv: no CUDA kernels built ({err}); the PyTorch implementation runs on GPUs", stacklevel=2
            )
        else:
            extensions += [
                CUDAExtension(
                    f"espnet_rwkv.ops.{op}._cuda",
                    [f"espnet_rwkv/ops/{op}/kernel.cu"],
                    extra_compile_args={"cxx": ["-O3"], "nvcc": loader.NVCC_FLAGS},
                )
                for op in loader.KERNEL_OPS
            ]
    return {"ext_modules": extensions, "cmdclass": {"build_ext": BuildExtension}}


def _version():
    text = Path(__file__).with_name("espnet_rwkv").joinpath("__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


setup(
    name="espnet_rwkv",
    version=_version(),
    description="RWKV encoder and BAT loss for streaming transducer ASR in ESPnet",
    # Not on PyPI: installs are from this repository; model cards read it back from the package metadata.
    url="https://github.com/espnet-rwkv/espnet_rwkv",
    license="Apache-2.0",
    packages=find_packages(include=["espnet_rwkv", "espnet_rwkv.*"]),
    package_data={"espnet_rwkv.ops": ["*/*.cu", "*/*.cpp", "*/*.h"]},
    python_requires=">=3.12,<3.13",
    **_kernel_build(),
    install_requires=[
        "torch>=2.11,<2.12",
        "torchaudio>=2.11,<2.12",
        "espnet==202611",
    ],
    extras_require={
        "test": [
            "pytest",
            "soundfile",
            "ruff",
            "clang-format",
            "onnx",
            "onnxruntime",
            "kaldi-native-fbank",
            "sherpa-onnx",
        ],
        # Export for sherpa-onnx (espnet_rwkv.export_onnx) and the onnxruntime decoder (stream --onnx).
        "onnx": ["onnx", "onnxruntime", "kaldi-native-fbank", "sherpa-onnx"],
        # asr.sh needs these and pip's espnet does not pull them in: stage 3 imports kaldiio and
        # resampy; stage 14 packs exp/<asr>/images, which training writes with matplotlib.
        "recipe": ["kaldiio", "resampy", "matplotlib"],
    },
)
