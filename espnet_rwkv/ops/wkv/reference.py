"""Independent float64 reference for WKV: the plain sums of docs/rwkv.md, no recurrence.

Slow (quadratic in T) and for tests only; nothing in the package calls it.
"""

import torch


def wkv_reference(time_decay, time_first, k, v, state=None, rows_per_block=256):
    """Direct evaluation of the WKV sums in float64.

    k, v: (B, T, C); state: optional (B, 3, C) (a, b, p) carried in.
    Returns y (B, T, C) and the final state (B, 3, C), scaled to the largest
    exponent of any frame, as the operator keeps it.
    """
    k = k.double()
    v = v.double()
    w = -torch.exp(time_decay.double())
    u = time_first.double()
    B, T, C = k.shape
    t_idx = torch.arange(T, dtype=torch.float64)
    ys = []
    for start in range(0, T, rows_per_block):
        t = t_idx[start : start + rows_per_block]
        lag = t[:, None] - 1 - t_idx[None, :]  # (rows, T)
        exps = k[:, None, :, :] + lag[None, :, :, None] * w  # (B, rows, T, C)
        exps = torch.where((lag >= 0)[None, :, :, None], exps, -torch.inf)
        is_diag = (lag == -1)[None, :, :, None]
        exps = torch.where(is_diag, k[:, None, :, :] + u, exps)
        terms = [exps]
        if state is not None:
            a0, b0, p0 = state.double().unbind(1)
            # The carried sums have been decayed t more times by output t.
            terms.append((p0[:, None, :] + t[None, :, None] * w)[:, :, None, :])
        m = torch.cat(terms, dim=2).amax(dim=2, keepdim=True)
        wts = torch.exp(exps - m)
        num = (wts * v[:, None]).sum(2)
        den = wts.sum(2)
        if state is not None:
            c = torch.exp(terms[1] - m)[:, :, 0]
            num = num + a0[:, None] * c
            den = den + b0[:, None] * c
        ys.append(num / den)
    y = torch.cat(ys, dim=1)

    to_end = (T - 1 - t_idx)[None, :, None] * w
    exps = k + to_end
    parts = [exps]
    if state is not None:
        parts.append((state[:, 2].double() + T * w)[:, None])
    p = torch.cat(parts, dim=1).amax(dim=1)
    wts = torch.exp(exps - p[:, None])
    a = (wts * v).sum(1)
    b = wts.sum(1)
    if state is not None:
        c = torch.exp(parts[1][:, 0] - p)
        a = a + state[:, 0].double() * c
        b = b + state[:, 1].double() * c
    return y, torch.stack([a, b, p], dim=1)
