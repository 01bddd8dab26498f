"""RNN-T loss over a pruned lattice (k2's pruned-loss shape; BAT, arXiv 2305.11571).

``pruned_rnnt_loss`` is the one public function (docs/bat.md). The folder, as every op's:
``kernel.cpp`` and ``kernel.cu`` (the lattice DP as the registered op
``torch.ops.espnet_rwkv.pruned_rnnt_lattice``, CPU and CUDA kernels, docs/kernels.md),
``library.py`` (its fake kernel and autograd), ``torch_impl.py`` (the same DP in PyTorch)
and ``autograd.py`` (the PyTorch DP's and the label scores' differentiable steps). The
tests' reference is torchaudio's full ``rnnt_loss``.
"""

import torch

from espnet_rwkv.ops import extension
from espnet_rwkv.ops.checks import check_values
from espnet_rwkv.ops.pruned_rnnt.autograd import BlankAndLabelLogProbs, LatticeLoss
from espnet_rwkv.ops.pruned_rnnt.library import lattice_loss_kernel

__all__ = ["pruned_rnnt_loss"]

_REDUCTIONS = ("mean", "sum", "none")
_BACKENDS = ("auto", "torch", "cpu", "cuda")


def pruned_rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ranges: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Transducer loss with the joiner evaluated only inside a window of labels per frame.

    For utterance b with T_b frames and U_b labels, the loss is
    ``-log sum_paths prod P(move)`` over the RNN-T lattice (t < T_b, u <= U_b)
    restricted to the window ``u in ranges[b, t]`` at each frame, ending with a
    blank out of (T_b - 1, U_b): the same quantity as torchaudio's
    ``rnnt_loss`` when every window holds every label.

    Args:
        logits: (B, T, S, V) joiner outputs at label positions ``ranges``; any
            float dtype, math in float32 (float64 for float64 logits).
        targets: (B, U) int labels, padded.
        ranges: (B, T, S) int64 label index u of each window slot: consecutive from the
            window start ``ranges[b, t, 0]``, non-decreasing in t; slots past U_b may repeat
            U_b (``bat_ranges`` writes them so) and are ignored.
        logit_lengths: (B,) frames per utterance T_b.
        target_lengths: (B,) labels per utterance U_b.
        blank: blank index in V.
        reduction: "mean" (over utterances, as torchaudio), "sum" or "none" ((B,)).
        backend: the lattice DP: "auto" (the C++ kernels where they are built for the
            tensors' device, else PyTorch), "torch", or "cpu" / "cuda" (the kernels; a
            ValueError for tensors on another device).
    Returns:
        The loss, float32 (float64 for float64 logits). An utterance whose windows admit no path (the window
        misses u = 0 at t = 0 or U_b at the last frame) has loss +inf and zero
        gradient; ``bat_ranges`` never produces such windows.
    Raises:
        ValueError, TypeError: for inputs of the wrong shape, dtype or device, and (where
            ``ops.checks`` says values are checked: CPU tensors, or on request) lengths out
            of range or malformed windows.
    """
    B, T, S, V = _check_inputs(logits, targets, ranges, logit_lengths, target_lengths, blank, reduction)
    device = logits.device
    logit_lengths = logit_lengths.to(device=device, dtype=torch.int64)
    target_lengths = target_lengths.to(device=device, dtype=torch.int64)
    if check_values(logits):
        _check_values(ranges, logit_lengths, target_lengths, T, targets.size(1))
    if backend not in _BACKENDS:
        raise ValueError(f"pruned_rnnt_loss: backend must be one of {_BACKENDS}, got {backend!r}")
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            name = backend.upper()
            raise ValueError(f"pruned_rnnt_loss: the {name} backend needs {name} tensors, got {device}")
        extension.load("pruned_rnnt", backend)  # raises where the kernels cannot be built
    elif backend == "auto":
        backend = device.type if extension.usable("pruned_rnnt", device) else "torch"
    math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32

    start = ranges[..., 0]
    labels_u = start[..., None] + torch.arange(S, device=device)  # (B, T, S)
    in_utterance = torch.arange(T, device=device)[None, :, None] < logit_lengths[:, None, None]
    node_exists = in_utterance & (labels_u <= target_lengths[:, None, None])
    # Emitting label u leads to u + 1, which must be a label and stay inside the window.
    can_emit = in_utterance & (labels_u < target_lengths[:, None, None])
    can_emit[..., -1] = False

    if targets.size(1) > 0:
        next_label = targets.long().gather(1, labels_u.clamp(max=targets.size(1) - 1).reshape(B, -1)).reshape(B, T, S)
    else:
        next_label = torch.zeros_like(labels_u)
    blank_lp, emit_lp = BlankAndLabelLogProbs.apply(logits, next_label, blank, math_dtype)
    blank_lp = blank_lp.masked_fill(~node_exists, float("-inf"))
    emit_lp = emit_lp.masked_fill(~can_emit, float("-inf"))

    if backend == "torch":
        loss = LatticeLoss.apply(blank_lp, emit_lp, start.contiguous(), logit_lengths, target_lengths)
    else:
        loss = lattice_loss_kernel(blank_lp, emit_lp, start.contiguous(), logit_lengths, target_lengths)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_inputs(logits, targets, ranges, logit_lengths, target_lengths, blank, reduction):
    if logits.dim() != 4:
        raise ValueError(f"pruned_rnnt_loss: logits must be (B, T, S, V), got {tuple(logits.shape)}")
    B, T, S, V = logits.shape
    if not logits.is_floating_point():
        raise TypeError(f"pruned_rnnt_loss: logits must be floating point, got {logits.dtype}")
    if ranges.shape != (B, T, S) or ranges.dtype != torch.int64:
        raise ValueError(
            f"pruned_rnnt_loss: ranges must be ({B}, {T}, {S}) int64, got {tuple(ranges.shape)} {ranges.dtype}"
        )
    if targets.dim() != 2 or targets.size(0) != B or targets.is_floating_point():
        raise ValueError(
            f"pruned_rnnt_loss: targets must be ({B}, U) integers, got {tuple(targets.shape)} {targets.dtype}"
        )
    for name, lengths in (("logit_lengths", logit_lengths), ("target_lengths", target_lengths)):
        if lengths.shape != (B,) or lengths.is_floating_point():
            raise ValueError(
                f"pruned_rnnt_loss: {name} must be ({B},) integers, got {tuple(lengths.shape)} {lengths.dtype}"
            )
    if len({logits.device, targets.device, ranges.device}) != 1:
        raise ValueError("pruned_rnnt_loss: logits, targets and ranges must be on one device")
    if not 0 <= blank < V:
        raise ValueError(f"pruned_rnnt_loss: blank must be in [0, {V}), got {blank}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"pruned_rnnt_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if B == 0:
        raise ValueError("pruned_rnnt_loss: empty batch")
    return B, T, S, V


def _check_values(ranges, logit_lengths, target_lengths, T, U):
    """The checks that read the tensors (ops.checks): lengths in range, windows well formed."""
    if logit_lengths.min() < 1 or logit_lengths.max() > T:
        raise ValueError(f"pruned_rnnt_loss: logit_lengths must be in [1, {T}], got {logit_lengths.tolist()}")
    if target_lengths.min() < 0 or target_lengths.max() > U:
        raise ValueError(f"pruned_rnnt_loss: target_lengths must be in [0, {U}], got {target_lengths.tolist()}")
    start = ranges[..., :1]
    expected = start + torch.arange(ranges.size(-1), device=ranges.device)
    u_len = target_lengths[:, None, None]
    consecutive = (ranges == expected) | ((expected > u_len) & (ranges == u_len))
    if not consecutive.all() or (start < 0).any() or (start.diff(dim=1) < 0).any():
        raise ValueError(
            "pruned_rnnt_loss: ranges must be windows of consecutive labels from ranges[b, t, 0] "
            "(slots past U_b may hold U_b), with non-negative starts non-decreasing in t"
        )
