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


@pytest.fixture(scope="session")
def espeak():
    """Path of espeak-ng; tests that synthesize speech need it."""
    path = shutil.which("espeak-ng")
    if path is None:
        pytest.skip("espeak-ng is not installed (the README's set-up command installs it)")
    return path
