"""espnet_rwkv: RWKV encoder + BAT loss for ESPnet's transducer task.

Kernel sources live in the top-level ``cuda_ext/`` folder and install as the
package ``espnet_rwkv.cuda_ext`` (sources as package data, built JIT on first
use, or ahead of time here when a CUDA toolkit is present).
"""
from setuptools import find_packages, setup

setup(
    name="espnet_rwkv",
    version="0.1.0",
    description="RWKV encoder and BAT loss for streaming transducer ASR in ESPnet",
    packages=find_packages(include=["espnet_rwkv", "espnet_rwkv.*"]) + ["espnet_rwkv.cuda_ext"],
    package_dir={"espnet_rwkv.cuda_ext": "cuda_ext"},
    package_data={"espnet_rwkv.cuda_ext": ["*.cu", "*.cuh", "*.cpp"]},
    python_requires=">=3.12,<3.13",
    install_requires=[
        "torch>=2.11,<2.12",
        "torchaudio>=2.11,<2.12",
        "espnet==202611",
    ],
    extras_require={
        "test": ["pytest", "soundfile"],
        # ESPnet's recipe scripts (asr.sh stage 3) import these; pip's espnet does not pull them in.
        "recipe": ["kaldiio", "resampy"],
    },
)
