"""WKV of one short chunk of one stream: the streaming form of the operator.

A chunk of T frames (T small: a decoding window's encoder frames) is one
(T+1, T, C) masked weighting, output rows 0..T-1 and the state after the chunk
as row T, instead of the chunked scan of ``torch_impl``: on a CPU a chunk of a
few frames costs what its operator calls cost. Inference only (batch 1, no
autograd needed); ``StreamingBlock`` (espnet_rwkv.asr.rwkv_block) calls it.
The masks depend only on the parameters and T, so callers cache them per T.
"""

from typing import Tuple

import torch

from espnet_rwkv.ops.wkv.torch_impl import EMPTY_P

_EXP_FLOOR = -80.0


def wkv_chunk_masks(w: torch.Tensor, u: torch.Tensor, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exponent offsets of one chunk of T frames for ``wkv_chunk``, rows t = 0..T (row T: the new state).

    Returns:
        frames: (T+1, T, C) float32: ``(t-1-i) w`` for source frame i < t, ``u`` for i = t,
            ``EMPTY_P`` (no weight) for i > t.
        carried: (T+1, C) float32: ``t w``, the decay of the state carried into the chunk.
    """
    t = torch.arange(T + 1, dtype=torch.float32, device=w.device)[:, None]
    i = torch.arange(T, dtype=torch.float32, device=w.device)[None, :]
    lag = (t - 1 - i)[..., None]  # (T+1, T, 1)
    frames = torch.where(lag >= 0, lag * w, torch.where(lag == -1, u.expand(1, 1, -1), EMPTY_P))
    return frames, t * w


def wkv_chunk(
    k: torch.Tensor, v: torch.Tensor, state: torch.Tensor, frames: torch.Tensor, carried: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """WKV of one short chunk (batch 1) in one masked weighting; equals ``espnet_rwkv.ops.wkv``.

    Row t of the (T+1, T) weighting is output t (rows 0..T-1) or the state
    after the chunk (row T); every row also weighs the carried state, and
    is taken relative to its maximum exponent (docs/rwkv.md#stable-form).

    Args:
        k, v: (T, C) float32.
        state: (3, C) float32 (a, b, p) before the chunk.
        frames, carried: from ``wkv_chunk_masks(w, u, T)``.
    Returns:
        y (T, C) and the state after the chunk (3, C).
    """
    a, b, p = state
    # Later frames (frames == EMPTY_P) are selected away, not weighted by ~0: a NaN or inf
    # there must not reach an earlier output (0 * NaN is NaN).
    later = frames == EMPTY_P  # (T+1, T, C)
    e_frames = (k + frames).masked_fill_(later, EMPTY_P)  # (T+1, T, C)
    e_state = p + carried  # (T+1, C)
    q = torch.maximum(e_frames.amax(dim=1), e_state)
    # Relative weights below e^-80 (long-decayed sources) are floored there: on CPUs exp is
    # ~20x slower for results that underflow float32, and 1.8e-35 next to a weight of 1
    # changes nothing in float32.
    weight = torch.exp((e_frames - q[:, None]).clamp_min_(_EXP_FLOOR)).masked_fill_(later, 0.0)
    weight_state = torch.exp((e_state - q).clamp_min_(_EXP_FLOOR))
    num = torch.addcmul((weight * v).masked_fill_(later, 0.0).sum(dim=1), weight_state, a)
    den = torch.addcmul(weight.sum(dim=1), weight_state, b)
    T = k.size(0)
    return num[:T] / den[:T], torch.stack([num[T], den[T], q[T]])
