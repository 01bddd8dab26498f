"""Kernels that cannot be built: backend "auto" warns once per device and uses PyTorch."""

import warnings

import pytest

from espnet_rwkv.ops import extension


@pytest.mark.parametrize("op", ["wkv", "pruned_rnnt"])
def test_failed_build_warns_once(op, monkeypatch):
    def broken(name, device_type):
        raise RuntimeError(f"g++ exploded on {name}")

    monkeypatch.setattr(extension, "load", broken)
    monkeypatch.setattr(extension, "_usable", {})
    expected = f"{op}: the CPU kernels .*g\\+\\+ exploded on {op}.*PyTorch implementation"
    with pytest.warns(RuntimeWarning, match=expected):
        assert extension.usable(op, "cpu") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.usable(op, "cpu") is False
