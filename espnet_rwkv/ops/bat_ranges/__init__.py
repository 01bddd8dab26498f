"""Label windows from CIF boundaries (BAT, arXiv 2305.11571, §3.2; docs/bat.md). PyTorch only, no kernel."""

import torch

from espnet_rwkv.ops.checks import check_values


def bat_ranges(
    cif_alpha: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    left: int,
    right: int,
) -> torch.Tensor:
    """Window of S = left + right labels per frame around the CIF's label count.

    The CIF weights accumulate to the number of labels emitted so far:
    ``peak_t = floor(sum_{i <= t} alpha_i)``. Frame t gets the labels
    ``start_t .. start_t + S - 1`` with ``start_t = peak_t - left``, clamped per
    utterance to ``[0, max(U_b - S + 1, 0)]``. So that the pruned lattice always
    has a path, the starts are then made to begin at 0, reach the last window
    at the last frame, never decrease, and advance by at most S - 1 per frame
    (a path can move at most S - 1 labels inside one frame's window). Frames
    past T_b are pinned to the last window. Slots past U_b (when U_b + 1 < S)
    hold U_b; the loss ignores them.

    A fixed number of tensor ops whatever T, and no host sync on CUDA: the two
    rules are a running maximum (never decrease) and, on top of it, a running
    minimum of ``start_j + (t - j)(S - 1)`` (advance at most S - 1 per frame).

    Args:
        cif_alpha: (B, T) CIF weights, >= 0 (their scale is what the caller
            trained; BAT rescales them to sum to U_b).
        logit_lengths: (B,) frames T_b; target_lengths: (B,) labels U_b.
        left, right: labels before and after the peak; S = left + right >= 2.
    Returns:
        (B, T, S) int64 label indices, no gradient.
    Raises:
        ValueError: if some utterance has more labels than its frames can reach,
            U_b > (T_b - 1) * (S - 1) + S - 1 (checked where ``ops.checks``
            says values are checked: CPU tensors, or on request).
    """
    S = left + right
    if left < 0 or right < 1 or S < 2:
        raise ValueError(f"bat_ranges: need left >= 0, right >= 1 and left + right >= 2, got {left}, {right}")
    B, T = cif_alpha.shape
    device = cif_alpha.device
    t_len = logit_lengths.to(device=device, dtype=torch.int64)
    u_len = target_lengths.to(device=device, dtype=torch.int64)
    last_start = (u_len - S + 1).clamp(min=0)  # (B,)
    if check_values(t_len):
        check_reachable(t_len, u_len, S)

    frames = torch.arange(T, device=device)
    valid = frames[None, :] < t_len[:, None]
    with torch.no_grad():
        counts = torch.cumsum(cif_alpha.float().masked_fill(~valid, 0.0), dim=1)
    proposal = counts.floor().long() - left
    # Bounds that keep a path: start 0 at t = 0, last_start at T_b - 1, steps <= S - 1.
    lowest = (last_start[:, None] - (t_len[:, None] - 1 - frames[None, :]) * (S - 1)).clamp(min=0)
    highest = torch.minimum(frames[None, :] * (S - 1), last_start[:, None])
    start = torch.maximum(torch.minimum(proposal, highest), lowest)
    start = torch.where(valid, start, last_start[:, None])
    rising = start.cummax(dim=1).values
    # start_t = min_{j <= t} (rising_j + (t - j)(S - 1)): the closest to rising that moves <= S - 1 a frame.
    step = frames * (S - 1)
    start = (rising - step).cummin(dim=1).values + step
    slots = torch.arange(S, device=device)
    return torch.minimum(start[..., None] + slots, u_len[:, None, None])


def check_reachable(logit_lengths: torch.Tensor, target_lengths: torch.Tensor, S: int) -> None:
    """Raise ValueError for utterances whose U_b labels T_b frames with windows of S cannot reach."""
    last_start = (target_lengths - S + 1).clamp(min=0)
    too_long = (last_start > (logit_lengths - 1) * (S - 1)).nonzero().flatten().tolist()
    if too_long:
        raise ValueError(
            f"bat_ranges: utterance(s) {too_long} have more labels ({target_lengths[too_long].tolist()}) than "
            f"{logit_lengths[too_long].tolist()} frames can reach with windows of {S}"
        )
