"""Torch-only operators of espnet_rwkv: nothing here imports ESPnet."""
from espnet_rwkv.ops.wkv import wkv

__all__ = ["wkv"]
