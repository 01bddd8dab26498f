"""A CUDA extension that cannot be built: backend "auto" warns once and uses PyTorch."""
import importlib
import warnings

import pytest

# By module name: the attribute espnet_rwkv.ops.wkv is the function, which shadows the package.
wkv_mod = importlib.import_module("espnet_rwkv.ops.wkv")
cuda_mod = importlib.import_module("espnet_rwkv.ops.wkv.cuda")


def test_failed_build_warns_once(monkeypatch):
    def broken():
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(cuda_mod, "_ext", broken)
    monkeypatch.setattr(wkv_mod, "_cuda_state", {})
    with pytest.warns(RuntimeWarning, match="nvcc exploded.*PyTorch implementation instead"):
        assert wkv_mod._cuda_usable() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wkv_mod._cuda_usable() is False
