"""A CUDA extension that cannot be built: backend "auto" warns once and uses PyTorch."""

import warnings

import pytest

from espnet_rwkv.ops import extension


@pytest.mark.parametrize("op", ["wkv", "pruned_rnnt"])
def test_failed_build_warns_once(op, monkeypatch):
    def broken(name):
        raise RuntimeError(f"nvcc exploded on {name}")

    monkeypatch.setattr(extension, "load", broken)
    monkeypatch.setattr(extension, "_usable", {})
    with pytest.warns(RuntimeWarning, match=f"{op}: .*nvcc exploded on {op}.*PyTorch implementation instead"):
        assert extension.usable(op) is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.usable(op) is False
