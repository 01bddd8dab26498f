"""WKV in pure PyTorch: chunk-parallel, float32 math, any device.

Time is cut into chunks of ``chunk_size`` frames. Inside a chunk every output
is a masked weighted sum over the chunk's frames (parallel over time); across
chunks only the (a, b, p) state summary is carried, by a short scan of
T / chunk_size steps. Every exponent is taken relative to a running maximum,
so |k| of any size stays finite (RWKV-4 numerics, docs/rwkv.md#stable-form).

Autograd differentiates through it, including the initial state.
"""

import torch

# Exponent that stands for "no mass yet" in the state's p. Finite, so that
# max/exp/grad never meet inf - inf.
EMPTY_P = -1e38


def empty_state(batch: int, channels: int, device=None) -> torch.Tensor:
    """The state before the first frame: (a, b, p) = (0, 0, -inf), as (B, 3, C) float32."""
    state = torch.zeros(batch, 3, channels, dtype=torch.float32, device=device)
    state[:, 2] = EMPTY_P
    return state


def wkv_torch(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    chunk_size: int = 4,
):
    """Chunked WKV.

    Args:
        w: (C,) float32 decay per step, negative (already ``-exp(time_decay)``).
        u: (C,) float32 bonus for the current frame (``time_first``).
        k, v: (B, T, C) float32.
        state: (B, 3, C) float32 (a, b, p) before frame 0.
        chunk_size: frames per chunk. The intra-chunk tensors grow with its
            square; on a 2-core CPU (B=16, C=256, T=200..1000, fwd+bwd) 4 was
            fastest, 1.2-1.8x ahead of 2 and 8.
    Returns:
        y: (B, T, C) float32, and the state after frame T-1, (B, 3, C) float32.
    """
    B, T, C = k.shape
    L = min(chunk_size, T)
    N = -(-T // L)
    pad = N * L - T
    if pad:
        # Padded frames sit after the last real frame; they get k = EMPTY_P
        # (no mass) and are dropped from y. The final state is taken at frame
        # T-1 explicitly below, so they never decay it.
        k = torch.cat([k, k.new_full((B, pad, C), EMPTY_P)], dim=1)
        v = torch.cat([v, v.new_zeros(B, pad, C)], dim=1)
    k = k.reshape(B, N, L, C)
    v = v.reshape(B, N, L, C)

    pos = torch.arange(L, device=k.device, dtype=torch.float32)
    # lag[t, i] = t - 1 - i: how many decays frame i has seen when output t is formed.
    lag = pos[:, None] - 1 - pos[None, :]
    past = lag >= 0
    diag = lag == -1

    # Intra-chunk exponents e[b, n, t, i, c] for output t and source frame i.
    e = k[:, :, None, :, :] + torch.where(past[..., None], lag[..., None] * w, 0.0)
    e = torch.where(diag[..., None], e + u, e)
    causal = (past | diag)[..., None]
    e = e.masked_fill(~causal, EMPTY_P)
    e_max = e.amax(dim=3)  # (B, N, L, C)
    weight = torch.exp(e - e_max[:, :, :, None, :])
    # A later frame's weight is 0, but 0 * NaN/inf is NaN: mask the product, not only the weight.
    num = torch.where(causal, weight * v[:, :, None, :, :], 0.0).sum(dim=3)
    den = weight.sum(dim=3)

    s_a, s_b, s_p = _summary(k, v, w)  # (B, N, C) each

    # Short scan over chunks: the state entering each chunk.
    a, b, p = state.unbind(dim=1)
    decay_chunk = L * w
    entering = []
    for n in range(N):
        entering.append((a, b, p))
        if n == N - 1:
            break
        a, b, p = _merge(a, b, p + decay_chunk, s_a[:, n], s_b[:, n], s_p[:, n])
    in_a, in_b, in_p = (torch.stack(x, dim=1) for x in zip(*entering))  # (B, N, C)

    # Combine the carried state (decayed t steps into the chunk) with the intra part.
    state_exp = in_p[:, :, None, :] + pos[:, None] * w  # (B, N, L, C)
    q = torch.maximum(e_max, state_exp)
    c_intra = torch.exp(e_max - q)
    c_state = torch.exp(state_exp - q)
    y = (num * c_intra + in_a[:, :, None, :] * c_state) / (den * c_intra + in_b[:, :, None, :] * c_state)
    y = y.reshape(B, N * L, C)[:, :T]

    # Final state: the last chunk's real frames only.
    last = T - (N - 1) * L
    fa, fb, fp = _merge(a, b, p + last * w, *_summary(k[:, -1, :last], v[:, -1, :last], w))
    return y, torch.stack([fa, fb, fp], dim=1)


def _summary(k, v, w):
    """State after frames (..., L, C) from the empty state, scaled: (a, b, p) of shape (..., C).

    Frame i has decayed L - 1 - i times by the end.
    """
    L = k.size(-2)
    steps = torch.arange(L - 1, -1, -1, device=k.device, dtype=k.dtype)
    exponent = k + steps[:, None] * w
    p = exponent.amax(dim=-2)
    weight = torch.exp(exponent - p.unsqueeze(-2))
    return (weight * v).sum(dim=-2), weight.sum(dim=-2), p


def _merge(a1, b1, p1, a2, b2, p2):
    """Sum of two scaled (a, b) pairs with exponents p1, p2, rescaled to their max."""
    p = torch.maximum(p1, p2)
    c1 = torch.exp(p1 - p)
    c2 = torch.exp(p2 - p)
    return a1 * c1 + a2 * c2, b1 * c1 + b2 * c2, p
