"""Torch-only operators of espnet_rwkv: nothing here imports ESPnet."""
from espnet_rwkv.ops.bat_ranges import bat_ranges
from espnet_rwkv.ops.pruned_rnnt import pruned_rnnt_loss
from espnet_rwkv.ops.wkv import wkv

__all__ = ["wkv", "pruned_rnnt_loss", "bat_ranges"]
