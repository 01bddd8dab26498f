"""Forward-backward over a pruned RNN-T lattice, vectorized over the batch, in PyTorch.

The lattice of utterance b has nodes (t, u), t < T_b, u <= U_b. Pruning keeps,
at frame t, only the S consecutive labels u = start[t] + s, s < S (the window;
``start`` non-decreasing). With slot s instead of u:

    alpha(t, s) = logaddexp(alpha(t-1, s + d_t) + blank(t-1, s + d_t),   d_t = start[t] - start[t-1]
                            alpha(t, s-1) + emit(t, s-1))
    beta(t, s)  = logaddexp(blank(t, s) + beta(t+1, s - d_{t+1}), emit(t, s) + beta(t, s+1))

with alpha(0, 0) = 0 and the final blank out of (T_b - 1, U_b). Within a frame
the emission chain is a prefix sum, so each frame is one batched log-sum-exp
over an (S, S) matrix of partial emission sums instead of S sequential steps.
"""

import torch

NEG_INF = float("-inf")


def _partial_emission_sums(emit: torch.Tensor) -> torch.Tensor:
    """emit (B, T, S) -> P (B, T, S, S) with P[..., s, j] = sum_{j <= m < s} emit[..., m], -inf for j > s."""
    S = emit.size(-1)
    m = torch.arange(S, device=emit.device)
    inside = (m[None, None, :] >= m[None, :, None]) & (m[None, None, :] < m[:, None, None])  # [s, j, m]
    terms = torch.where(inside, emit[..., None, None, :], 0.0)  # (B, T, S, S, S)
    sums = terms.sum(-1)
    return sums.masked_fill(m[None, :] > m[:, None], NEG_INF)


def _shifted(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """x (B, S), offset (B,) -> y[b, s] = x[b, s + offset[b]], -inf outside 0..S-1."""
    S = x.size(1)
    idx = torch.arange(S, device=x.device)[None, :] + offset[:, None]
    inside = (idx >= 0) & (idx < S)
    return torch.where(inside, x.gather(1, idx.clamp(0, S - 1)), NEG_INF)


def lattice_forward_backward(blank, emit, start, logit_lengths, target_lengths):
    """Occupation log-probabilities of the pruned lattice.

    Args:
        blank, emit: (B, T, S) float32 log-probabilities; -inf where a move is impossible
            (outside the utterance, beyond U_b, or ``emit`` out of the window's last slot).
        start: (B, T) int64 window start per frame.
        logit_lengths, target_lengths: (B,) int64.
    Returns:
        log_z (B,) (-inf where no path), and the occupation (posterior probability) of
        each blank and each emit move, (B, T, S) each (0 where log_z = -inf).
    """
    B, T, S = blank.shape
    P = _partial_emission_sums(emit)
    batch = torch.arange(B, device=blank.device)

    alpha = blank.new_full((B, T, S), NEG_INF)
    enter = blank.new_full((B, S), NEG_INF)
    enter[:, 0] = torch.where(start[:, 0] == 0, 0.0, NEG_INF)
    for t in range(T):
        if t > 0:
            enter = _shifted(alpha[:, t - 1] + blank[:, t - 1], start[:, t] - start[:, t - 1])
        alpha[:, t] = torch.logsumexp(enter[:, None, :] + P[:, t], dim=-1)

    # next_beta[b, t, s]: log-prob of finishing after the blank out of (t, s).
    last = logit_lengths - 1
    final_slot = target_lengths - start[batch, last]
    beta = blank.new_full((B, T, S), NEG_INF)
    next_beta = blank.new_full((B, T, S), NEG_INF)
    slots = torch.arange(S, device=blank.device)
    for t in range(T - 1, -1, -1):
        if t + 1 < T:
            from_next = _shifted(beta[:, t + 1], start[:, t] - start[:, t + 1])
        else:
            from_next = blank.new_full((B, S), NEG_INF)
        at_end = torch.where(slots[None, :] == final_slot[:, None], 0.0, NEG_INF)
        nb = torch.where((t == last)[:, None], at_end, from_next)
        nb = torch.where((t > last)[:, None], NEG_INF, nb)
        next_beta[:, t] = nb
        leave = blank[:, t] + nb  # (B, S) indexed by the slot the chain ends in
        # beta(t, s) = logsumexp_j (sum_{s <= m < j} emit + leave[j]) = logsumexp_j (P[j, s] + leave[j])
        beta[:, t] = torch.logsumexp(P[:, t].transpose(1, 2) + leave[:, None, :], dim=-1)

    # beta(0, 0) is the total only where the first window starts at u = 0.
    log_z = torch.where(start[:, 0] == 0, beta[:, 0, 0], NEG_INF)
    finite = torch.isfinite(log_z)[:, None, None]
    beta_next_slot = torch.cat([beta[:, :, 1:], blank.new_full((B, T, 1), NEG_INF)], dim=2)
    blank_occ = torch.where(finite, alpha + blank + next_beta - log_z[:, None, None], NEG_INF).exp()
    emit_occ = torch.where(finite, alpha + emit + beta_next_slot - log_z[:, None, None], NEG_INF).exp()
    return log_z, blank_occ, emit_occ
