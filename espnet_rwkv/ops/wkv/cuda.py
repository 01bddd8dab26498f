"""WKV through the CUDA extension ``cuda_ext/wkv.cu``, as an autograd Function."""
import torch

from espnet_rwkv.ops.cuda_loader import extension

_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, time_decay, time_first, k, v, state):
        w = -torch.exp(time_decay.float()).contiguous()
        u = time_first.float().contiguous()
        k = k.contiguous()
        v = v.contiguous()
        state = state.contiguous()
        y, state_out, argmax, saved = extension("wkv").forward(w, u, k, v, state)
        ctx.save_for_backward(w, u, k, v, state, saved, state_out, argmax)
        ctx.param_dtypes = (time_decay.dtype, time_first.dtype)
        ctx.mark_non_differentiable(argmax)
        return y, state_out

    @staticmethod
    def backward(ctx, gy, gstate):
        w, u, k, v, state, saved, state_out, argmax = ctx.saved_tensors
        gy = torch.zeros_like(k) if gy is None else gy.to(k.dtype).contiguous()
        gstate = torch.zeros_like(state_out) if gstate is None else gstate.float().contiguous()
        gk, gv, gstate_in, gw, gu = extension("wkv").backward(
            w, u, k, v, state, saved, state_out, argmax, gy, gstate
        )
        # d w / d time_decay = -exp(time_decay) = w.
        g_decay = (gw.sum(0) * w).to(ctx.param_dtypes[0])
        g_first = gu.sum(0).to(ctx.param_dtypes[1])
        return g_decay, g_first, gk, gv, gstate_in


def wkv_cuda(time_decay, time_first, k, v, state):
    """WKV on the GPU. Shapes as ``espnet_rwkv.ops.wkv.wkv``; state must be given.

    Args:
        time_decay, time_first: (C,) any float dtype, on k's device.
        k, v: (B, T, C) float32, bfloat16 or float16 CUDA tensors, T > 0.
        state: (B, 3, C) float32.
    Returns:
        y (B, T, C) in k's dtype and the state after the last frame (B, 3, C) float32.
    """
    if not k.is_cuda:
        raise ValueError(f"wkv_cuda: inputs must be CUDA tensors, got {k.device}")
    if k.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"wkv_cuda: k and v must be one of {_KERNEL_DTYPES}, got {k.dtype}")
    if state.dtype != torch.float32:
        raise TypeError(f"wkv_cuda: state must be float32, got {state.dtype}")
    return _WKV.apply(time_decay, time_first, k, v, state)
