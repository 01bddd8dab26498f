"""The Python side of the registered op ``torch.ops.espnet_rwkv.wkv_forward`` (kernel.cpp, kernel.cu).

``register()`` (called by ``espnet_rwkv.ops.extension.load`` once the library that defines
the schemas is loaded) adds the fake kernels that let ``torch.compile`` trace the op and its
autograd: the backward is the op ``wkv_backward``, which replays the forward from the states
that the training forward saved every ``SAVE_EVERY`` frames.
"""

import torch

# Frames between the states the training forward saves (kL in wkv.h).
SAVE_EVERY = 8


def wkv_kernel(time_decay, time_first, k, v, state):
    """WKV through the registered op (CPU or CUDA kernels by the tensors' device); shapes as ``wkv``.

    Saves what the backward needs only when grad mode is on and an input requires a gradient.
    """
    train = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (time_decay, time_first, k, v, state)
    )
    y, state_out, _, _ = torch.ops.espnet_rwkv.wkv_forward(time_decay, time_first, k, v, state, train)
    return y, state_out


def _math_dtype(k):
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def _fake_forward(time_decay, time_first, k, v, state, train):
    B, T, C = k.shape
    math = _math_dtype(k)
    if train:
        saved = k.new_empty(B, (T + SAVE_EVERY - 1) // SAVE_EVERY, 3, C, dtype=math)
        last_reset = k.new_empty(B, C, dtype=torch.int32)
    else:
        saved, last_reset = k.new_empty(0, dtype=math), k.new_empty(0, dtype=torch.int32)
    return k.new_empty(B, T, C), k.new_empty(B, 3, C, dtype=math), saved, last_reset


def _fake_backward(time_decay, time_first, k, v, state, saved, state_out, last_reset, grad_y, grad_state):
    C = k.size(2)
    math = _math_dtype(k)
    grad_state_in = torch.empty_like(state) if state is not None else k.new_empty(0, dtype=math)
    grad_params = (k.new_empty(C, dtype=math), k.new_empty(C, dtype=math))
    return *grad_params, torch.empty_like(k), torch.empty_like(k), grad_state_in


def _setup_context(ctx, inputs, output):
    time_decay, time_first, k, v, state, _ = inputs
    _, state_out, saved, last_reset = output
    ctx.save_for_backward(time_decay, time_first, k, v, state, saved, state_out, last_reset)
    ctx.mark_non_differentiable(saved, last_reset)
    ctx.set_materialize_grads(False)  # an unused output's cotangent stays None, not zeros


def _backward(ctx, grad_y, grad_state, _grad_saved, _grad_last_reset):
    time_decay, time_first, k, v, state, saved, state_out, last_reset = ctx.saved_tensors
    if saved.numel() == 0 and k.size(1) > 0:
        raise RuntimeError("wkv_backward: wkv_forward ran with train=False, nothing was saved for the backward")
    g_decay, g_first, gk, gv, g_state = torch.ops.espnet_rwkv.wkv_backward(
        time_decay, time_first, k, v, state, saved, state_out, last_reset, grad_y, grad_state
    )
    g_state = g_state if state is not None else None
    return g_decay.to(time_decay.dtype), g_first.to(time_first.dtype), gk, gv, g_state, None


def register():
    torch.library.register_fake("espnet_rwkv::wkv_forward", _fake_forward)
    torch.library.register_fake("espnet_rwkv::wkv_backward", _fake_backward)
    torch.library.register_autograd("espnet_rwkv::wkv_forward", _backward, setup_context=_setup_context)
