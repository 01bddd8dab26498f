"""When the ops check the values of their inputs (lengths in range, windows well formed).

Shapes, dtypes and devices are metadata and always checked. Checking values reads the
tensors: on a CUDA tensor that is a copy to the host and a stream sync on every call,
which is what keeps a training step host-bound. So value checks run where they are free,
on CPU tensors, and on CUDA only when ``ESPNET_RWKV_CHECK_VALUES=1`` asks for them
(debugging a GPU run); never inside ``torch.compile``, whose graph cannot raise on data.
"""

import os

import torch

CHECK_VALUES_ENV = "ESPNET_RWKV_CHECK_VALUES"


def check_values(tensor: torch.Tensor) -> bool:
    """Whether the ops should check the values of ``tensor`` (and the tensors on its device)."""
    if torch.compiler.is_compiling():
        return False
    return tensor.device.type == "cpu" or os.environ.get(CHECK_VALUES_ENV) == "1"
