"""WKV through the CUDA extension ``cuda_ext/wkv.cu``, as an autograd Function.

The extension takes the raw parameters, the optional state and cotangents (None:
empty state, zero cotangent) and does the casts, -exp(time_decay) and the sum of
the parameter gradients over the batch itself: one C++ call per direction.
"""
import torch

from espnet_rwkv.ops.cuda_loader import extension

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ext = None


def _extension():
    global _ext
    if _ext is None:
        _ext = extension("wkv")
    return _ext


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, time_decay, time_first, k, v, state):
        ctx.set_materialize_grads(False)  # an unused output's cotangent stays None, not zeros
        y, state_out, saved, argmax = _extension().forward(time_decay, time_first, k, v, state, True)
        ctx.save_for_backward(time_decay, time_first, k, v, state, saved, state_out, argmax)
        return y, state_out

    @staticmethod
    def backward(ctx, gy, gstate):
        # Parameter gradients come as float32; autograd casts them to the parameters' dtype.
        return tuple(_extension().backward(*ctx.saved_tensors, gy, gstate))


def wkv_cuda(time_decay, time_first, k, v, state=None):
    """WKV on the GPU. Shapes as ``espnet_rwkv.ops.wkv.wkv``.

    Args:
        time_decay, time_first: (C,) any float dtype, on k's device.
        k, v: (B, T, C) float32, bfloat16 or float16 CUDA tensors, T > 0.
        state: (B, 3, C) float32, or None for the empty state.
    Returns:
        y (B, T, C) in k's dtype and the state after the last frame (B, 3, C) float32.
    """
    if not k.is_cuda:
        raise ValueError(f"wkv_cuda: inputs must be CUDA tensors, got {k.device}")
    if k.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"wkv_cuda: k and v must be one of {_KERNEL_DTYPES}, got {k.dtype}")
    if state is not None and state.dtype != torch.float32:
        raise TypeError(f"wkv_cuda: state must be float32, got {state.dtype}")
    if torch.is_grad_enabled() and (
        time_decay.requires_grad or time_first.requires_grad or k.requires_grad or v.requires_grad
        or (state is not None and state.requires_grad)
    ):
        return _WKV.apply(time_decay, time_first, k, v, state)
    # Inference and streaming: no autograd node, nothing saved.
    y, state = _extension().forward(time_decay, time_first, k, v, state, False)
    return y, state
