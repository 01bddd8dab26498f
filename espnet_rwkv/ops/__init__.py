"""Torch-only operators of espnet_rwkv: nothing here imports ESPnet.

One folder per op (``wkv``, ``pruned_rnnt``, ``bat_ranges``), each with the same file names
where it has the part: ``kernel.cpp`` (schemas, CPU kernels), ``kernel.cu`` (CUDA kernels),
``library.py`` (fake kernels, autograd), ``torch_impl.py``, ``autograd.py``, ``chunk.py``,
``reference.py``. ``extension`` is the one loader of the kernels.
"""

from espnet_rwkv.ops.bat_ranges import bat_ranges
from espnet_rwkv.ops.pruned_rnnt import pruned_rnnt_loss
from espnet_rwkv.ops.wkv import wkv

__all__ = ["wkv", "pruned_rnnt_loss", "bat_ranges"]
