"""The WKV operator of RWKV-4 (docs/rwkv.md), with streaming state.

``wkv`` is the one public function. It runs the registered op
``torch.ops.espnet_rwkv.wkv_forward`` (C++ kernels for CPU and CUDA tensors) where
they are built, else the chunked PyTorch implementation; ``backend`` forces one.

One folder, one op:

- ``kernel.cpp``: the op's schemas and CPU kernels; ``kernel.cu``: its CUDA kernels
  (docs/kernels.md); ``wkv.h``: what the two share;
- ``library.py``: the op's fake kernels and autograd (``espnet_rwkv.ops.extension`` loads
  the libraries and registers them);
- ``torch_impl.py``: the chunk-parallel PyTorch form, any device, autograd through it;
- ``chunk.py``: the short-chunk streaming form (one stream, inference);
- ``reference.py``: the float64 direct sums the tests compare every form against.
"""

from typing import Optional, Tuple

import torch

from espnet_rwkv.ops import extension
from espnet_rwkv.ops.wkv.library import wkv_kernel
from espnet_rwkv.ops.wkv.torch_impl import EMPTY_P, empty_state, wkv_torch

__all__ = ["wkv", "empty_state", "EMPTY_P"]

_IO_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# What the kernels take, by device type; the rest runs in PyTorch.
_KERNEL_DTYPES = {"cpu": _IO_DTYPES, "cuda": _IO_DTYPES[:3]}
_BACKENDS = ("auto", "torch", "cpu", "cuda")


def wkv(
    time_decay: torch.Tensor,
    time_first: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor]:
    """RWKV-4 weighted key-value mixing over time, per channel.

    ``wkv_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t)
             / (sum_{i<t} e^{(t-1-i)w + k_i} + e^{u+k_t})``
    with ``w = -exp(time_decay)`` and ``u = time_first``; the sums also hold the
    frames before this call, carried in ``state``.

    Args:
        time_decay: (C,) raw decay parameter.
        time_first: (C,) bonus of the current frame.
        k, v: (B, T, C) float32, bfloat16, float16 or float64, same dtype.
        state: (B, 3, C) float32 (float64 for float64 inputs): the scaled
            numerator ``a``, denominator ``b`` and their exponent ``p``, so that
            the true sums are ``a e^p`` and ``b e^p``. None is the empty state
            (``empty_state``). Differentiable.
        backend: "auto" (the C++ kernels where they are built for the tensors' device
            and dtype, else PyTorch), "torch", or "cpu" / "cuda" (the kernels; a
            ValueError for tensors on another device).
    Returns:
        y: (B, T, C) in the dtype of ``k``; math in float32 (float64 for float64).
        state: (B, 3, C) after the last frame, to pass to the next chunk.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"wkv: backend must be one of {_BACKENDS}, got {backend!r}")
    _check_inputs(time_decay, time_first, k, v, state)
    if backend in ("cpu", "cuda") and k.device.type != backend:
        raise ValueError(f"wkv: backend {backend!r} needs {backend.upper()} tensors, got {k.device}")
    math_dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    B, T, C = k.shape
    if T == 0:
        return k.new_empty(B, 0, C), state if state is not None else empty_state(B, C, k.device).to(math_dtype)
    if backend == "auto":
        use_kernel = k.dtype in _KERNEL_DTYPES.get(k.device.type, ()) and extension.usable("wkv", k.device)
    else:
        use_kernel = backend != "torch"
        if use_kernel:
            extension.load("wkv", backend)  # raises where the kernels cannot be built
    if use_kernel:
        return wkv_kernel(time_decay, time_first, k, v, state)
    if state is None:
        state = empty_state(B, C, k.device).to(math_dtype)
    w = -torch.exp(time_decay.to(math_dtype))
    y, state = wkv_torch(w, time_first.to(math_dtype), k.to(math_dtype), v.to(math_dtype), state)
    return y.to(k.dtype), state


def _check_inputs(time_decay, time_first, k, v, state):
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"wkv: k and v must both be (B, T, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.dtype != v.dtype or k.dtype not in _IO_DTYPES:
        raise TypeError(f"wkv: k and v must share one of {_IO_DTYPES}, got {k.dtype} and {v.dtype}")
    B, _, C = k.shape
    for name, param in (("time_decay", time_decay), ("time_first", time_first)):
        if param.shape != (C,):
            raise ValueError(f"wkv: {name} must be ({C},), got {tuple(param.shape)}")
    tensors = [time_decay, time_first, k, v] + ([state] if state is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"wkv: all inputs must be on one device, got {[str(t.device) for t in tensors]}")
    if state is not None:
        want = torch.float64 if k.dtype == torch.float64 else torch.float32
        if state.shape != (B, 3, C) or state.dtype != want:
            raise ValueError(f"wkv: state must be ({B}, 3, {C}) {want}, got {tuple(state.shape)} {state.dtype}")
