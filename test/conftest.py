"""Fixtures and helpers shared by the tests (imported as ``from conftest import ...``)."""

import shutil

import pytest
import torch

TOKENS = ["<blank>", "<unk>", "A", "B", "C", "<sos/eos>"]
# For tests of torch-only operators that must agree on every device.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def wkv_inputs(B, T, C, k_scale=1.0, dtype=torch.float32, seed=0, device="cpu"):
    """Random WKV inputs [time_decay, time_first, k, v]; k and v (B, T, C) in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    time_decay = torch.randn(C, generator=g) * 1.5  # decays from e^-4.5 to e^4.5 per step
    time_first = torch.randn(C, generator=g)
    k = (torch.randn(B, T, C, generator=g) * k_scale).to(dtype)
    v = torch.randn(B, T, C, generator=g).to(dtype)
    return [x.to(device) for x in (time_decay, time_first, k, v)]


def rel_error(x, ref):
    """||x - ref|| / ||ref|| in float64 on the CPU; an all-zero reference needs x == 0."""
    x, ref = x.double().cpu(), ref.double().cpu()
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.fixture(scope="session")
def espeak():
    """Path of espeak-ng; tests that synthesize speech need it."""
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.skip("espeak-ng is not installed (the README's set-up command installs it)")
    return path
