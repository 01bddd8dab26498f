"""The pruned lattice's forward-backward through the CUDA extension ``kernel.cu``
(loaded by ``espnet_rwkv.ops.extension``)."""

from espnet_rwkv.ops import extension


def lattice_forward_backward_cuda(blank, emit, start, logit_lengths, target_lengths):
    """As ``torch_impl.lattice_forward_backward``, for CUDA tensors.

    Args:
        blank, emit: (B, T, S) float32 or float64 log-probabilities, -inf where a move is impossible.
        start: (B, T) int64 window start per frame.
        logit_lengths, target_lengths: (B,) int64.
    Returns:
        log_z (B,), blank and emit occupations (B, T, S).
    """
    if not blank.is_cuda:
        raise ValueError(f"pruned_rnnt: the CUDA backend needs CUDA tensors, got {blank.device}")
    return extension.load("pruned_rnnt").forward_backward(
        blank.contiguous(),
        emit.contiguous(),
        start.contiguous(),
        logit_lengths.contiguous(),
        target_lengths.contiguous(),
    )
