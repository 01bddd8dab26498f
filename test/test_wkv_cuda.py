"""The CUDA kernels of the WKV op (torch.ops.espnet_rwkv.wkv_forward) against the float64 direct-sum reference."""

import threading

import pytest
import torch
from conftest import rel_error as _rel
from conftest import wkv_inputs

from espnet_rwkv.ops import extension, wkv
from espnet_rwkv.ops.wkv import empty_state
from espnet_rwkv.ops.wkv.reference import wkv_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DEV = "cuda"
# bf16/fp16 rounding of the inputs and outputs: relative error of y and gradients.
HALF_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def _inputs(B, T, C, **kwargs):
    return wkv_inputs(B, T, C, device=DEV, **kwargs)


def _state(B, C, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.stack(
        [torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g)], dim=1
    )
    return s.to(DEV)


def _ref(*args):
    """The float64 reference runs on the CPU (its index tensors live there)."""
    return wkv_reference(*[a.cpu() if a is not None else None for a in args])


def _grads(fn, leaves, gy, gs):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y, s = fn(*leaves)
    ((y.double() * gy.to(y.device)).sum() + (s.double() * gs.to(s.device)).sum()).backward()
    return y, s, [t.grad for t in leaves]


@pytest.mark.parametrize(
    "B,T,C", [(2, 1, 8), (3, 7, 5), (2, 63, 33), (2, 64, 32), (1, 65, 40), (2, 300, 17), (1, 1024, 64), (1, 4096, 8)]
)
@pytest.mark.parametrize("with_state", [False, True])
def test_fp32_outputs_and_all_gradients_match_reference(B, T, C, with_state):
    td, tf, k, v = _inputs(B, T, C)
    state = _state(B, C) if with_state else empty_state(B, C, DEV)
    g = torch.Generator(device=DEV).manual_seed(2)
    gy = torch.randn(B, T, C, generator=g, device=DEV, dtype=torch.float64)
    gs = torch.randn(B, 3, C, generator=g, device=DEV, dtype=torch.float64)
    y, s, grads = _grads(lambda *a: wkv(*a, backend="cuda"), [td, tf, k, v, state], gy, gs)
    y_ref, s_ref, grads_ref = _grads(
        lambda *a: wkv_reference(*a), [t.double().cpu() for t in (td, tf, k, v, state)], gy, gs
    )
    assert _rel(y, y_ref) < 1e-5
    assert _rel(s, s_ref) < 1e-5
    names = ["time_decay", "time_first", "k", "v", "state"]
    for name, got, ref in zip(names, grads, grads_ref):
        if name == "state" and not with_state:
            continue  # the empty state: its a, b get no gradient, by construction
        assert torch.isfinite(got).all(), name
        assert _rel(got, ref) < 1e-5, (name, _rel(got, ref))


def test_fp32_long_sequence_matches_reference():
    # The float64 reference's autograd graph grows with T^2: check the forward only here.
    td, tf, k, v = _inputs(1, 16384, 8)
    state = _state(1, 8)
    y, s = wkv(td, tf, k, v, state, backend="cuda")
    y_ref, s_ref = _ref(td, tf, k, v, state)
    assert _rel(y, y_ref) < 1e-5 and _rel(s, s_ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_within_tolerance(dtype):
    td, tf, k, v = _inputs(2, 200, 96, dtype=dtype)
    gy = torch.randn(2, 200, 96, device=DEV, dtype=torch.float64)
    gs = torch.zeros(2, 3, 96, device=DEV, dtype=torch.float64)
    state = empty_state(2, 96, DEV)
    y, _, grads = _grads(lambda *a: wkv(*a, backend="cuda"), [td, tf, k, v, state], gy, gs)
    assert y.dtype == dtype
    y_ref, _, grads_ref = _grads(
        lambda *a: wkv_reference(*a), [t.double().cpu() for t in (td, tf, k, v, state)], gy, gs
    )
    assert _rel(y, y_ref) < HALF_TOL[dtype]
    for got, ref in zip(grads[:4], grads_ref[:4]):
        assert _rel(got, ref) < HALF_TOL[dtype]


def test_large_keys_stay_finite():
    td, tf, k, v = _inputs(2, 500, 24, k_scale=60.0)
    y, s = wkv(td, tf, k, v, backend="cuda")
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    y_ref, s_ref = _ref(td, tf, k, v)
    assert _rel(y, y_ref) < 1e-5 and _rel(s, s_ref) < 1e-5
    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    y, s = wkv(*leaves, backend="cuda")
    (y.sum() + s[:, :2].sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_every_output_element_is_written():
    # Kernel outputs come from torch.empty; run over memory poisoned with NaN first.
    td, tf, k, v = _inputs(3, 131, 37)
    torch.cuda.synchronize()
    junk = torch.full((1 << 24,), float("nan"), device=DEV)
    del junk
    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    state = _state(3, 37).requires_grad_()
    y, s = wkv(*leaves, state, backend="cuda")
    (y.sum() + s.sum()).backward()
    for t in [y, s, state.grad] + [x.grad for x in leaves]:
        assert torch.isfinite(t).all()


def test_second_backward_of_one_graph_gives_the_same_gradients():
    # No float atomics anywhere (the batch sum of the parameter gradients has a fixed order):
    # two backwards of one graph are bitwise equal.
    td, tf, k, v = _inputs(5, 100, 70)
    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
    y, _ = wkv(*leaves, backend="cuda")
    gy = torch.randn_like(y)
    first = torch.autograd.grad(y, leaves, gy, retain_graph=True)
    second = torch.autograd.grad(y, leaves, gy)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_chained_chunks_equal_one_pass_forward_and_backward():
    td, tf, k, v = _inputs(2, 333, 48)
    gy = torch.randn(2, 333, 48, device=DEV)

    def run(pieces):
        leaves = [t.clone().requires_grad_() for t in (td, tf, k, v)]
        state, ys = None, []
        for lo, hi in pieces:
            y, state = wkv(leaves[0], leaves[1], leaves[2][:, lo:hi], leaves[3][:, lo:hi], state, backend="cuda")
            ys.append(y)
        y = torch.cat(ys, 1)
        ((y * gy).sum() + state[:, :2].sum()).backward()
        return [y, state] + [t.grad for t in leaves]

    one = run([(0, 333)])
    many = run([(0, 8), (8, 24), (24, 56), (56, 200), (200, 333)])
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_states_interchangeable_with_torch_backend():
    td, tf, k, v = _inputs(2, 120, 40)
    _, s_cuda = wkv(td, tf, k[:, :50], v[:, :50], backend="cuda")
    _, s_torch = wkv(td, tf, k[:, :50], v[:, :50], backend="torch")
    torch.testing.assert_close(s_cuda, s_torch, rtol=1e-5, atol=1e-6)
    y1, f1 = wkv(td, tf, k[:, 50:], v[:, 50:], s_torch, backend="cuda")
    y2, f2 = wkv(td, tf, k[:, 50:], v[:, 50:], s_cuda, backend="torch")
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-6)


def test_finite_differences_fp32():
    td, tf, k, v = _inputs(1, 20, 3)
    state = _state(1, 3)
    gy = torch.randn(1, 20, 3, device=DEV)

    def loss(td_, tf_, k_, v_, st_):
        y, s = wkv(td_, tf_, k_, v_, st_, backend="cuda")
        return (y * gy).sum() + s[:, :2].sum()

    leaves = [t.clone().requires_grad_() for t in (td, tf, k, v, state)]
    loss(*leaves).backward()
    eps = 1e-2
    for i, leaf in enumerate(leaves):
        flat = leaf.detach().flatten()
        for j in range(0, flat.numel(), max(1, flat.numel() // 6)):
            plus, minus = [t.detach().clone() for t in leaves], [t.detach().clone() for t in leaves]
            plus[i].view(-1)[j] += eps
            minus[i].view(-1)[j] -= eps
            fd = (loss(*plus) - loss(*minus)).item() / (2 * eps)
            got = leaf.grad.flatten()[j].item()
            assert abs(fd - got) <= 2e-2 * max(1.0, abs(fd)), (i, j, fd, got)


def test_non_contiguous_inputs():
    td, tf, k, v = _inputs(2, 40, 64)
    kt = k[:, :, ::2]
    vt = v[:, :, ::2]
    y, s = wkv(td[::2], tf[::2], kt, vt, backend="cuda")
    y_ref, s_ref = _ref(td[::2], tf[::2], kt, vt)
    assert _rel(y, y_ref) < 1e-5 and _rel(s, s_ref) < 1e-5


def test_auto_backend_uses_the_extension():
    td, tf, k, v = _inputs(1, 10, 8)
    y_auto, _ = wkv(td, tf, k, v)
    y_cuda, _ = wkv(td, tf, k, v, backend="cuda")
    assert torch.equal(y_auto, y_cuda)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "v": a["v"][:, :-1]}, "must both be"),
        (lambda a: {**a, "k": a["k"][0], "v": a["v"][0]}, "must both be"),
        (lambda a: {**a, "v": a["v"].half()}, "must share"),
        (lambda a: {**a, "time_decay": a["time_decay"][:-1]}, "time_decay must be"),
        (lambda a: {**a, "time_first": a["time_first"].cpu()}, "one device"),
        (lambda a: {**a, "state": torch.zeros(2, 3, 4, dtype=torch.float64, device=DEV)}, "state must be"),
        (lambda a: {**a, "state": torch.zeros(3, 3, 4, device=DEV)}, "state must be"),
    ],
)
def test_auto_backend_bad_input_raises_clear_error(change, message):
    td, tf, k, v = _inputs(2, 8, 4)
    kwargs = change(dict(time_decay=td, time_first=tf, k=k, v=v))
    with pytest.raises((ValueError, TypeError), match=message):
        wkv(**kwargs)


def test_auto_backend_zero_length_returns_state_unchanged():
    td, tf, k, v = _inputs(2, 0, 4)
    state = _state(2, 4)
    y, out = wkv(td, tf, k, v, state)
    assert y.shape == (2, 0, 4) and out is state


def test_op_passes_the_state_through_zero_frames():
    # wkv() itself returns the state object for T = 0; the op returns its values.
    extension.load("wkv", DEV)
    td, tf, k, v = _inputs(2, 0, 4)
    state = _state(2, 4)
    y, out, _, _ = torch.ops.espnet_rwkv.wkv_forward(td, tf, k, v, state, False)
    assert y.shape == (2, 0, 4) and y.dtype == k.dtype and torch.equal(out, state)
    _, out, _, _ = torch.ops.espnet_rwkv.wkv_forward(td, tf, k, v, None, False)
    assert torch.equal(out, empty_state(2, 4, DEV))


@pytest.mark.skipif(DEV != "cuda", reason="threads and CUDA graphs of the real device")
def test_runs_on_a_thread_new_to_cuda_and_in_a_cuda_graph():
    # A thread that has not used CUDA yet, and a CUDA graph capturing the launches.
    td, tf, k, v = _inputs(2, 40, 8)
    state = _state(2, 8)
    want = wkv(td, tf, k, v, state, backend="cuda")
    got, errors = [], []

    def run():
        try:
            got.append(wkv(td, tf, k, v, state, backend="cuda"))
        except Exception as err:  # re-raised in the test's thread
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got.append(wkv(td, tf, k, v, state, backend="cuda"))
    k.mul_(0.5)  # replay reads the new keys
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got[0], want))
    for a, b in zip(got[1], wkv(td, tf, k, v, state, backend="cuda")):
        assert torch.equal(a, b)


def test_parameter_gradients_take_the_parameters_dtype():
    # The kernel's parameter gradients are float32; autograd casts them to bf16 parameters.
    td, tf, k, v = _inputs(2, 50, 16)
    gy = torch.randn(2, 50, 16, device=DEV, dtype=torch.float64)
    gs = torch.zeros(2, 3, 16, device=DEV, dtype=torch.float64)
    state = empty_state(2, 16, DEV)
    bf = [td.bfloat16(), tf.bfloat16()]
    _, _, grads = _grads(lambda *a: wkv(*a, backend="cuda"), bf + [k, v, state], gy, gs)
    _, _, grads_ref = _grads(lambda *a: wkv_reference(*a), [t.double().cpu() for t in bf + [k, v, state]], gy, gs)
    for got, ref in zip(grads[:2], grads_ref[:2]):
        assert got.dtype == torch.bfloat16
        assert _rel(got, ref) < HALF_TOL[torch.bfloat16]


def test_no_grad_saves_nothing_for_the_backward():
    td, tf, k, v = [t.requires_grad_() for t in _inputs(1, 10, 8)]
    y, s = wkv(td, tf, k, v, backend="cuda")
    assert y.grad_fn is not None
    with torch.no_grad():
        assert wkv(td, tf, k, v, backend="cuda")[0].grad_fn is None


def test_auto_backend_rwkv_blocks_train_and_stream_on_the_extension():
    # The encoder's blocks on the GPU (the extension) against the same blocks on the CPU (the
    # PyTorch backend): outputs and all gradients, in one pass and chunk by chunk with state.
    import copy

    from espnet_rwkv.asr.rwkv_block import RWKVBlock

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList(RWKVBlock(64, 128, i, 2) for i in range(2))
    with torch.no_grad():
        for p in blocks.parameters():
            p.add_(0.2 * torch.randn_like(p))  # the output weights start at zero: make every path count
    x = torch.randn(3, 77, 64)
    weight = torch.linspace(-1, 1, 64)

    def run(device, chunks, autocast=False):
        net = copy.deepcopy(blocks).to(device)
        xs = x.detach().to(device).requires_grad_()
        states, outs = [None, None], []
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            for lo, hi in chunks:
                h = xs[:, lo:hi]
                for i, block in enumerate(net):
                    h, states[i] = block(h, states[i])
                outs.append(h)
        y = torch.cat(outs, 1).float()
        (y * weight.to(device)).sum().backward()
        return [y, xs.grad] + [p.grad for p in net.parameters()]

    ref = run("cpu", [(0, 77)])
    for chunks in ([(0, 77)], [(0, 5), (5, 40), (40, 77)]):
        for got, want in zip(run(DEV, chunks), ref):
            assert _rel(got, want) < 1e-5
    for got, want in zip(run(DEV, [(0, 77)], autocast=True), ref):
        assert torch.isfinite(got).all()
        assert _rel(got, want) < 5e-2
