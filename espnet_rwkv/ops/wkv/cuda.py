"""WKV through the CUDA extension ``kernel.cu`` (loaded by ``espnet_rwkv.ops.extension``).

The extension checks its inputs, does the casts, -exp(time_decay) and the sum of the
parameter gradients over the batch itself, and holds the autograd node in C++: one
C++ call per direction, and the backward never enters Python.
"""

from espnet_rwkv.ops import extension

_ext = None


def _extension():
    global _ext
    if _ext is None:
        _ext = extension.load("wkv")
    return _ext


def wkv_cuda(time_decay, time_first, k, v, state=None):
    """WKV on the GPU. Shapes as ``espnet_rwkv.ops.wkv.wkv``.

    Args:
        time_decay, time_first: (C,) any float dtype, on k's device.
        k, v: (B, T, C) float32, bfloat16 or float16 CUDA tensors.
        state: (B, 3, C) float32, or None for the empty state.
    Returns:
        y (B, T, C) in k's dtype and the state after the last frame (B, 3, C) float32;
        differentiable when grad mode is on and an input requires grad (parameter
        gradients are computed in float32 and cast to the parameters' dtype).
    """
    return _extension().wkv(time_decay, time_first, k, v, state)
