"""espnet_rwkv: RWKV encoder + BAT loss for ESPnet's transducer task.

Kernel sources live in the top-level ``cuda_ext/`` folder and install as the
package ``espnet_rwkv.cuda_ext`` (sources as package data, built JIT on first
use, or ahead of time here when a CUDA toolkit is present).
"""
import importlib.util
import os

from setuptools import find_packages, setup


def _cuda_build():
    """setup() arguments for the ahead-of-time CUDA build of cuda_ext/*.cu, or none.

    Built only where a GPU is visible or ESPNET_RWKV_CUDA_BUILD=1 asks for it, so
    installs on CPU machines (CI) stay quick; ESPNET_RWKV_NO_CUDA_BUILD=1 always
    skips it. It needs torch at build time: ``pip install --no-build-isolation``.
    Without it the kernels build JIT on first use (cuda_ext.load).
    """
    if os.environ.get("ESPNET_RWKV_NO_CUDA_BUILD") == "1":
        return {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:  # isolated build environment: no torch there
        return {}
    if CUDA_HOME is None or not (
        torch.cuda.is_available() or os.environ.get("ESPNET_RWKV_CUDA_BUILD") == "1"
    ):
        return {}
    spec = importlib.util.spec_from_file_location("_cuda_ext_flags", "cuda_ext/__init__.py")
    flags = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(flags)
    extensions = [
        CUDAExtension(
            f"espnet_rwkv.cuda_ext._{name}",
            [f"cuda_ext/{name}.cu"],
            extra_compile_args={"cxx": ["-O3"], "nvcc": flags.NVCC_FLAGS},
        )
        for name in ("wkv", "pruned_rnnt")
    ]
    return {"ext_modules": extensions, "cmdclass": {"build_ext": BuildExtension}}


setup(
    name="espnet_rwkv",
    version="0.1.0",
    description="RWKV encoder and BAT loss for streaming transducer ASR in ESPnet",
    packages=find_packages(include=["espnet_rwkv", "espnet_rwkv.*"]) + ["espnet_rwkv.cuda_ext"],
    package_dir={"espnet_rwkv.cuda_ext": "cuda_ext"},
    package_data={"espnet_rwkv.cuda_ext": ["*.cu", "*.cuh", "*.cpp"]},
    python_requires=">=3.12,<3.13",
    **_cuda_build(),
    install_requires=[
        "torch>=2.11,<2.12",
        "torchaudio>=2.11,<2.12",
        "espnet==202611",
    ],
    extras_require={
        "test": ["pytest", "soundfile", "onnx", "onnxruntime", "kaldi-native-fbank", "sherpa-onnx"],
        # Export for sherpa-onnx (espnet_rwkv.export_onnx) and the onnxruntime decoder (stream --onnx).
        "onnx": ["onnx", "onnxruntime", "kaldi-native-fbank", "sherpa-onnx"],
        # asr.sh needs these and pip's espnet does not pull them in: stage 3 imports kaldiio and
        # resampy; stage 14 packs exp/<asr>/images, which training writes with matplotlib.
        "recipe": ["kaldiio", "resampy", "matplotlib"],
    },
)
