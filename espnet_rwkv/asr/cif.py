"""Continuous integrate-and-fire weights for BAT's label boundaries (arXiv 2305.11571; CIF: arXiv 1905.11235)."""

from typing import Tuple

import torch
from torch import nn


class CifPredictor(nn.Module):
    """Per-frame weight alpha_t in (0, 1): how much of a label frame t completes.

    A depthwise convolution over the current and ``kernel_size - 1`` past frames
    (causal, so a streaming encoder keeps no lookahead), ReLU, a linear map to
    one value and a sigmoid.

    Args:
        size: encoder output dimension D.
        kernel_size: frames the convolution sees.
    """

    def __init__(self, size: int, kernel_size: int = 3):
        super().__init__()
        self.pad = kernel_size - 1
        self.conv = nn.Conv1d(size, size, kernel_size, groups=size)
        self.proj = nn.Linear(size, 1)

    def forward(self, encoder_out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """encoder_out (B, T, D), lengths (B,) -> alpha (B, T), 0 on padding."""
        x = nn.functional.pad(encoder_out.transpose(1, 2), (self.pad, 0))
        x = torch.relu(self.conv(x)).transpose(1, 2)
        alpha = torch.sigmoid(self.proj(x).squeeze(-1))
        valid = torch.arange(alpha.size(1), device=alpha.device)[None, :] < lengths[:, None]
        return alpha.masked_fill(~valid, 0.0)


def rescale_to_targets(alpha: torch.Tensor, target_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale each utterance's alpha to sum to its label count U_b.

    Returns the scaled alpha (B, T) and the quantity loss, mean over the batch
    of |sum alpha - U_b| (before scaling): the CIF learns to count labels.
    """
    total = alpha.sum(dim=1)
    targets = target_lengths.to(alpha.dtype)
    scaled = alpha * (targets / total.clamp(min=1e-6))[:, None]
    return scaled, (total - targets).abs().mean()
