"""RWKV block pieces that keep one activation for backward and recompute the cheap rest.

An RWKV block's training memory is its saved activations, and most of them are
elementwise results feeding a projection: the token-shift mixes (one per
projection) and the channel-mix's relu(k) and relu(k)^2. Autograd keeps each;
these Functions keep only the input they are computed from and redo the
elementwise work in backward (a few passes over memory, no extra matrix
product), which is what keeps RWKV-BAT's training memory below the
conformer's at paper size.

- ``mix_project``: out_i = ((1 - m_i) * shift(h) + m_i * h) @ W_i^T for each
  projection i, keeping h and the frame before it: (B, T, C) instead of the
  mixes (B, T, C) each and h - shift(h);
- ``squared_relu_project``: relu(k)^2 @ W^T, keeping k instead of relu(k) and
  relu(k)^2.
"""

from typing import List, Sequence

import torch
from torch.amp import custom_bwd, custom_fwd


def _shift(h: torch.Tensor, h_prev: torch.Tensor) -> torch.Tensor:
    """h (B, T, C), h_prev (B, C) the frame before h[:, 0] -> (B, T, C) shifted by one frame."""
    return torch.cat([h_prev[:, None].to(h.dtype), h[:, :-1]], dim=1)


class _MixProject(torch.autograd.Function):
    @staticmethod
    @custom_fwd(device_type="cuda")
    def forward(ctx, h, h_prev, mixes, *weights):
        shifted = _shift(h, h_prev)
        diff = h - shifted
        outs = []
        for mix, weight in zip(mixes.to(h.dtype), weights):
            outs.append(torch.matmul(torch.addcmul(shifted, mix, diff), weight.to(h.dtype).t()))
        ctx.save_for_backward(h, h_prev, mixes, *weights)
        return tuple(outs)

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, *grads):
        h, h_prev, mixes, *weights = ctx.saved_tensors
        shifted = _shift(h, h_prev)
        diff = h - shifted
        grad_h = torch.zeros_like(h)
        grad_shifted = torch.zeros_like(h)
        grad_mixes, grad_weights = [], []
        for mix, weight, grad in zip(mixes.to(h.dtype), weights, grads):
            mixed = torch.addcmul(shifted, mix, diff)
            grad_weights.append(torch.matmul(grad.flatten(0, 1).t(), mixed.flatten(0, 1)).to(weight.dtype))
            grad_mixed = torch.matmul(grad, weight.to(grad.dtype))
            grad_mixes.append((grad_mixed * diff).sum(dim=(0, 1)))
            grad_h.addcmul_(grad_mixed, mix)
            grad_shifted.addcmul_(grad_mixed, 1 - mix)
        # shift(h)[:, t] is h[:, t-1] (h_prev at t = 0).
        grad_h[:, :-1] += grad_shifted[:, 1:]
        grad_h_prev = grad_shifted[:, 0].to(h_prev.dtype)
        return (grad_h, grad_h_prev, torch.stack(grad_mixes).to(mixes.dtype), *grad_weights)


def mix_project(
    h: torch.Tensor, h_prev: torch.Tensor, mixes: torch.Tensor, weights: Sequence[torch.Tensor]
) -> List[torch.Tensor]:
    """Token-shift mixes, each through its projection, keeping only h for backward.

    Args:
        h: (B, T, C) the block's normalised input.
        h_prev: (B, C) the frame before h[:, 0] (the carried token shift).
        mixes: (M, C) one mix per projection: 1 takes h, 0 the previous frame.
        weights: M ``nn.Linear`` weights (O_i, C), no bias.
    Returns:
        M tensors (B, T, O_i).
    """
    if mixes.size(0) != len(weights):
        raise ValueError(f"mix_project: {mixes.size(0)} mixes for {len(weights)} weights")
    return list(_MixProject.apply(h, h_prev, mixes, *weights))


class _SquaredReluProject(torch.autograd.Function):
    @staticmethod
    @custom_fwd(device_type="cuda")
    def forward(ctx, k, weight):
        ctx.save_for_backward(k, weight)
        return torch.matmul(torch.relu(k).square(), weight.to(k.dtype).t())

    @staticmethod
    @custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        k, weight = ctx.saved_tensors
        active = torch.relu(k)
        grad_weight = torch.matmul(grad.flatten(0, -2).t(), active.square().flatten(0, -2)).to(weight.dtype)
        grad_k = torch.matmul(grad, weight.to(grad.dtype)) * (2 * active)
        return grad_k, grad_weight


def squared_relu_project(k: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """relu(k)^2 @ weight^T keeping only k for backward: k (..., H), weight (O, H) -> (..., O)."""
    return _SquaredReluProject.apply(k, weight)
