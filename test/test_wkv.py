"""WKV operator (PyTorch backend) against the float64 direct-sum reference."""

import pytest
import torch
from conftest import rel_error as _rel
from conftest import wkv_inputs as _inputs

from espnet_rwkv.ops import wkv
from espnet_rwkv.ops.wkv import empty_state
from espnet_rwkv.ops.wkv.reference import wkv_reference


@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 100, 4096])
def test_matches_reference(T):
    td, tf, k, v = _inputs(2, T, 5, seed=T)
    y, state = wkv(td, tf, k, v)
    y_ref, state_ref = wkv_reference(td, tf, k, v)
    assert y.dtype == torch.float32 and state.dtype == torch.float32
    assert _rel(y, y_ref) < 1e-5
    assert _rel(state, state_ref) < 1e-5


def test_large_keys_stay_finite():
    td, tf, k, v = _inputs(2, 300, 7, k_scale=30.0)
    k[0, 10] = 60.0
    k[1, 20] = -60.0
    y, state = wkv(td, tf, k, v)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    y_ref, state_ref = wkv_reference(td, tf, k, v)
    assert _rel(y, y_ref) < 1e-5
    assert _rel(state, state_ref) < 1e-5


def test_non_contiguous_inputs():
    td, tf, k, v = _inputs(3, 40, 6)
    k_t = k.transpose(0, 1).contiguous().transpose(0, 1)
    v_s = torch.stack([v, torch.zeros_like(v)], dim=-1).flatten(2)[:, :, ::2]
    assert not k_t.is_contiguous() and not v_s.is_contiguous()
    y, _ = wkv(td, tf, k_t, v_s)
    y_ref, _ = wkv_reference(td, tf, k, v)
    assert _rel(y, y_ref) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_half_precision_inputs(dtype, tol):
    td, tf, k, v = _inputs(2, 64, 8, dtype=dtype)
    y, state = wkv(td, tf, k, v)
    assert y.dtype == dtype and state.dtype == torch.float32
    # The reference sees the same rounded inputs: the remaining error is the output rounding.
    y_ref, _ = wkv_reference(td, tf, k.float(), v.float())
    assert _rel(y.float(), y_ref) < tol


def test_chunked_calls_equal_one_call():
    td, tf, k, v = _inputs(2, 97, 4)
    y_full, state_full = wkv(td, tf, k, v)
    state = None
    ys = []
    for piece_k, piece_v in zip(k.split([1, 30, 16, 50], dim=1), v.split([1, 30, 16, 50], dim=1)):
        y, state = wkv(td, tf, piece_k, piece_v, state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(state, state_full, rtol=1e-5, atol=1e-6)


def test_carried_state_matches_reference():
    td, tf, k, v = _inputs(2, 33, 4)
    _, state = wkv(td, tf, k[:, :20], v[:, :20])
    y, state2 = wkv(td, tf, k[:, 20:], v[:, 20:], state)
    y_ref, state_ref = wkv_reference(td, tf, k[:, 20:], v[:, 20:], state)
    assert _rel(y, y_ref) < 1e-5
    assert _rel(state2, state_ref) < 1e-5


def test_gradcheck_float64_including_state():
    td, tf, k, v = _inputs(2, 21, 3, dtype=torch.float64)
    _, state = wkv(td.double(), tf.double(), k[:, :5], v[:, :5])
    args = [t.double().detach().requires_grad_() for t in (td, tf, k[:, 5:], v[:, 5:])]
    state = state.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: wkv(*a), (*args, state))


def test_gradients_match_reference():
    td, tf, k, v = _inputs(2, 50, 4)
    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    ref_leaves = [t.double().clone().requires_grad_() for t in (td, tf, k, v)]
    gy = torch.randn(2, 50, 4)
    (wkv(*leaves)[0] * gy).sum().backward()
    (wkv_reference(*ref_leaves)[0] * gy.double()).sum().backward()
    for got, ref in zip(leaves, ref_leaves):
        assert _rel(got.grad, ref.grad) < 1e-5


def test_zero_length_returns_state_unchanged():
    td, tf, k, v = _inputs(2, 0, 4)
    state = empty_state(2, 4)
    y, out = wkv(td, tf, k, v, state)
    assert y.shape == (2, 0, 4)
    assert out is state


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "v": a["v"][:, :-1]}, "must both be"),
        (lambda a: {**a, "v": a["v"].double()}, "must share"),
        (lambda a: {**a, "k": a["k"].long(), "v": a["v"].long()}, "must share"),
        (lambda a: {**a, "time_decay": a["time_decay"][:-1]}, "time_decay must be"),
        (lambda a: {**a, "state": torch.zeros(2, 3, 4, dtype=torch.float64)}, "state must be"),
        (lambda a: {**a, "backend": "tpu"}, "backend must be"),
    ],
)
def test_bad_input_raises_clear_error(change, message):
    td, tf, k, v = _inputs(2, 8, 4)
    kwargs = change(dict(time_decay=td, time_first=tf, k=k, v=v))
    with pytest.raises((ValueError, TypeError), match=message):
        wkv(**kwargs)
