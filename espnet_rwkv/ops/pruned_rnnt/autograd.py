"""The differentiable steps of the pruned loss: label scores out of the logits, and the PyTorch lattice DP.

(The C++ lattice op's autograd is registered with the op: ``library.py``.)
"""

import torch

from espnet_rwkv.ops.pruned_rnnt.torch_impl import lattice_forward_backward


class BlankAndLabelLogProbs(torch.autograd.Function):
    """``log_softmax(logits)`` at the blank and at one label per node, without storing the log-softmax.

    The backward writes the only (B, T, S, V) tensor: softmax times minus the summed gradient,
    plus the two one-hot terms (as k2's pruned loss does, instead of autograd's several copies).
    """

    @staticmethod
    def forward(ctx, logits, labels, blank, math_dtype):
        """logits (B, T, S, V), labels (B, T, S) int64 -> blank and label log-probs (B, T, S) in math_dtype."""
        scores = logits.to(math_dtype)
        log_norm = torch.logsumexp(scores, dim=-1)
        blank_lp = scores[..., blank] - log_norm
        label_lp = scores.gather(-1, labels[..., None]).squeeze(-1) - log_norm
        ctx.save_for_backward(logits, labels, log_norm)
        ctx.blank = blank
        return blank_lp, label_lp

    @staticmethod
    def backward(ctx, grad_blank, grad_label):
        logits, labels, log_norm = ctx.saved_tensors
        grad = torch.exp(logits.to(log_norm.dtype) - log_norm[..., None]) * -(grad_blank + grad_label)[..., None]
        grad[..., ctx.blank] += grad_blank
        grad.scatter_add_(-1, labels[..., None], grad_label[..., None])
        return grad.to(logits.dtype), None, None, None


class LatticeLoss(torch.autograd.Function):
    """-log P(targets) over the pruned lattice by the PyTorch DP, per utterance; gradients: minus the occupations."""

    @staticmethod
    def forward(ctx, blank, emit, start, logit_lengths, target_lengths):
        """blank, emit (B, T, S) -> loss (B,)."""
        log_z, blank_occ, emit_occ = lattice_forward_backward(blank, emit, start, logit_lengths, target_lengths)
        ctx.save_for_backward(blank_occ, emit_occ)
        return -log_z

    @staticmethod
    def backward(ctx, grad_loss):
        blank_occ, emit_occ = ctx.saved_tensors
        scale = -grad_loss[:, None, None]
        return blank_occ * scale, emit_occ * scale, None, None, None
