"""Boundary-aware transducer loss (BAT, arXiv 2305.11571).

A CIF predictor on the encoder output places, per frame, a window of S labels
around the number of labels emitted so far; the joiner and the RNN-T lattice
are evaluated in that window only: (B, T, S, V) instead of (B, T, U+1, V).
"""

from typing import Dict, List

import torch
from torch import nn

from espnet_rwkv.asr.cif import CifPredictor, rescale_to_targets
from espnet_rwkv.ops.bat_ranges import bat_ranges
from espnet_rwkv.ops.pruned_rnnt import pruned_rnnt_loss


class BATLoss(nn.Module):
    """Pruned transducer loss on CIF windows, plus the CIF's quantity loss.

    Args:
        encoder_size: encoder output dimension D_enc.
        left, right: labels kept before and after the CIF peak (window S = left + right).
        quantity_weight: weight of |sum alpha - U| in the total.
        cif_kernel_size: frames the CIF convolution sees (current and past).
    """

    def __init__(
        self, encoder_size: int, left: int = 3, right: int = 5, quantity_weight: float = 1.0, cif_kernel_size: int = 3
    ):
        super().__init__()
        if not (isinstance(left, int) and isinstance(right, int) and left >= 0 and right >= 1 and left + right >= 2):
            raise ValueError(
                "model_conf.bat_conf: left must be an int >= 0 and right an int >= 1 with left + right >= 2 "
                f"(the window of labels per frame), got left {left!r}, right {right!r}"
            )
        if not quantity_weight >= 0:
            raise ValueError(f"model_conf.bat_conf.quantity_weight must be >= 0, got {quantity_weight!r}")
        if not (isinstance(cif_kernel_size, int) and cif_kernel_size >= 1):
            raise ValueError(f"model_conf.bat_conf.cif_kernel_size must be an int >= 1, got {cif_kernel_size!r}")
        self.left = left
        self.right = right
        self.quantity_weight = quantity_weight
        self.cif = CifPredictor(encoder_size, cif_kernel_size)

    def unreachable(self, encoder_lengths: torch.Tensor, target_lengths: torch.Tensor) -> List[int]:
        """Batch rows (of (B,) lengths) with more labels than windows of S can reach: U_b > T_b * (S - 1)."""
        window = self.left + self.right
        return (target_lengths > encoder_lengths * (window - 1)).nonzero().flatten().tolist()

    def forward(
        self,
        encoder_out: torch.Tensor,
        decoder_out: torch.Tensor,
        targets: torch.Tensor,
        encoder_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
        joint_network: nn.Module,
    ) -> Dict[str, torch.Tensor]:
        """Loss terms for one batch.

        Args:
            encoder_out: (B, T, D_enc).
            decoder_out: (B, U+1, D_dec) prediction network outputs (blank-prefixed labels).
            targets: (B, U) labels; encoder_lengths, target_lengths: (B,).
            joint_network: ESPnet's JointNetwork (``lin_enc``, ``lin_dec``,
                ``joint_activation``, ``lin_out``), used attribute by attribute
                so that only the window is projected to the vocabulary.
        Returns:
            ``loss`` (transducer + quantity_weight * quantity), ``loss_transducer``
            and ``loss_quantity`` (mean over the batch of |sum alpha - U|).
        """
        alpha = self.cif(encoder_out, encoder_lengths)
        scaled, loss_quantity = rescale_to_targets(alpha, target_lengths)
        ranges = bat_ranges(scaled.detach(), encoder_lengths, target_lengths, self.left, self.right)

        enc = joint_network.lin_enc(encoder_out)  # (B, T, J)
        dec = joint_network.lin_dec(decoder_out)  # (B, U+1, J)
        B, T, S = ranges.shape
        dec_window = dec.gather(1, ranges.reshape(B, T * S, 1).expand(-1, -1, dec.size(-1))).reshape(B, T, S, -1)
        logits = joint_network.lin_out(joint_network.joint_activation(enc[:, :, None] + dec_window))
        with torch.autocast(logits.device.type, enabled=False):
            loss_transducer = pruned_rnnt_loss(logits.float(), targets, ranges, encoder_lengths, target_lengths)
        return {
            "loss": loss_transducer + self.quantity_weight * loss_quantity,
            "loss_transducer": loss_transducer,
            "loss_quantity": loss_quantity,
        }
