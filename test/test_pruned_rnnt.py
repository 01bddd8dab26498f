"""Pruned RNN-T loss against torchaudio's full loss, a closed form and gradcheck."""

import pytest
import torch
import torchaudio

from espnet_rwkv.ops import pruned_rnnt_loss

# (device, lattice backend): the PyTorch DP on both devices and the C++ kernels.
BACKENDS = [
    ("cpu", "torch"),
    ("cpu", "cpu"),
    pytest.param("cuda", "torch", marks=pytest.mark.gpu),
    pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
]


def full_window(B, T, U, target_lengths):
    """Every frame's window holds every label: S = U + 1, slots past U_b hold U_b."""
    slots = torch.arange(U + 1).expand(B, T, U + 1)
    return torch.minimum(slots, target_lengths[:, None, None]).contiguous()


def random_batch(B, T, U, V, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, U + 1, V, generator=g, dtype=dtype)
    targets = torch.randint(1, V, (B, max(U, 1)), generator=g, dtype=torch.int32)[:, :U]
    t_len = torch.randint(1, T + 1, (B,), generator=g)
    t_len[0] = T
    u_len = torch.randint(0, U + 1, (B,), generator=g)
    u_len[0] = U
    return logits, targets, t_len, u_len


@pytest.mark.parametrize("device,backend", BACKENDS)
@pytest.mark.parametrize(
    "B,T,U,V,seed",
    [(4, 9, 5, 7, 0), (3, 1, 3, 5, 1), (5, 20, 12, 30, 2), (2, 4, 0, 3, 3), (40, 33, 10, 6, 10), (3, 12, 40, 5, 12)],
)
def test_full_window_equals_torchaudio(B, T, U, V, seed, device, backend):
    """The reference is torchaudio on the CPU: its CUDA kernel disagrees with its own CPU result
    for batches with T = 1 or U = 0 (seen with torchaudio 2.11 on an H100)."""
    logits, targets, t_len, u_len = random_batch(B, T, U, V, seed)
    logits.requires_grad_()
    ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    on_device = logits.detach().to(device).requires_grad_()
    ours = pruned_rnnt_loss(
        on_device,
        targets.to(device),
        full_window(B, T, U, u_len).to(device),
        t_len.to(device),
        u_len.to(device),
        reduction="none",
        backend=backend,
    )
    (g_ours,) = torch.autograd.grad(ours.sum(), on_device)
    torch.testing.assert_close(ours.cpu(), ref, rtol=1e-5, atol=1e-5)
    assert ((g_ours.cpu() - g_ref).norm() / g_ref.norm()) < 1e-5


def test_reductions_follow_torchaudio():
    logits, targets, t_len, u_len = random_batch(3, 6, 4, 5, 4)
    ranges = full_window(3, 6, 4, u_len)
    per_utt = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none")
    for reduction, expected in (("mean", per_utt.mean()), ("sum", per_utt.sum())):
        torch.testing.assert_close(
            pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction=reduction), expected
        )
        ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0, reduction=reduction)
        torch.testing.assert_close(expected, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_tiny_lattice_closed_form(device, backend):
    """T=2, U=1: paths (emit@t0, blank@t0, blank@t1) and (blank@t0, emit@t1, blank@t1)."""
    logits = torch.randn(1, 2, 2, 3, device=device)
    lp = logits.log_softmax(-1)[0]
    y = 2
    paths = torch.stack(
        [
            lp[0, 0, y] + lp[0, 1, 0] + lp[1, 1, 0],
            lp[0, 0, 0] + lp[1, 0, y] + lp[1, 1, 0],
        ]
    )
    tensors = [torch.tensor(x, device=device) for x in ([[y]], [[[0, 1], [0, 1]]], [2], [1])]
    loss = pruned_rnnt_loss(logits, *tensors, backend=backend)
    torch.testing.assert_close(loss, -torch.logsumexp(paths, 0))


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_narrow_window_drops_paths_outside_it(device, backend):
    """A window of 2 that moves to [1, 2] at t=1 removes every path still at u=0 there."""
    logits = torch.randn(1, 2, 2, 4, device=device)
    lp = logits.log_softmax(-1)[0]
    tensors = [torch.tensor(x, device=device) for x in ([[1, 3]], [[[0, 1], [1, 2]]], [2], [2])]
    # Only path: emit y1 at (0, u=0), blank to t=1 at u=1, emit y2 at (1, u=1), final blank at u=2.
    expected = -(lp[0, 0, 1] + lp[0, 1, 0] + lp[1, 0, 3] + lp[1, 1, 0])
    loss = pruned_rnnt_loss(logits, *tensors, backend=backend)
    torch.testing.assert_close(loss, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_cuda_and_cpu_agree_on_narrow_windows(backend):
    from espnet_rwkv.ops import bat_ranges

    logits, targets, _, u_len = random_batch(6, 40, 15, 20, 9)
    t_len = torch.tensor([40, 35, 30, 25, 20, 40])
    alpha = torch.rand(6, 40, generator=torch.Generator().manual_seed(9))
    ranges = bat_ranges(alpha, t_len, u_len, 2, 3)
    logits = logits[:, :, :5].contiguous().requires_grad_()
    cpu = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none")
    (g_cpu,) = torch.autograd.grad(cpu.sum(), logits)
    on_gpu = logits.detach().cuda().requires_grad_()
    gpu = pruned_rnnt_loss(
        on_gpu, targets.cuda(), ranges.cuda(), t_len.cuda(), u_len.cuda(), reduction="none", backend=backend
    )
    (g_gpu,) = torch.autograd.grad(gpu.sum(), on_gpu)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    assert ((g_gpu.cpu() - g_cpu).norm() / g_cpu.norm()) < 1e-5


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_gradcheck_float64(device, backend):
    logits, targets, t_len, u_len = random_batch(2, 5, 3, 4, 5, dtype=torch.float64)
    ranges = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])[:, :, None] + torch.arange(3)
    ranges = torch.minimum(ranges, u_len[:, None, None])
    logits = logits[:, :, :3].clone().to(device).requires_grad_()
    targets, ranges, t_len, u_len = (x.to(device) for x in (targets, ranges, t_len, u_len))
    assert torch.autograd.gradcheck(
        lambda x: pruned_rnnt_loss(x, targets, ranges, t_len, u_len, reduction="sum", backend=backend), (logits,)
    )


def test_half_precision_logits_use_float32_math():
    logits, targets, t_len, u_len = random_batch(2, 6, 3, 5, 6)
    ranges = full_window(2, 6, 3, u_len)
    ref = pruned_rnnt_loss(logits.bfloat16().float(), targets, ranges, t_len, u_len)
    ours = pruned_rnnt_loss(logits.bfloat16(), targets, ranges, t_len, u_len)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_targets_longer_than_frames_are_finite(device, backend):
    """RNN-T emits several labels per frame: U > T has paths (torchaudio agrees)."""
    logits, targets, _, _ = random_batch(1, 2, 6, 8, 7)
    t_len, u_len = torch.tensor([2]), torch.tensor([6])
    ours = pruned_rnnt_loss(
        *(x.to(device) for x in (logits, targets, full_window(1, 2, 6, u_len), t_len, u_len)), backend=backend
    ).cpu()
    ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device,backend", BACKENDS)
def test_window_without_a_path_gives_inf_and_zero_gradient(device, backend):
    logits = torch.randn(3, 2, 2, 4, device=device, requires_grad=True)
    targets = torch.tensor([[1, 2, 3]] * 3, device=device)
    # Utterance 0 needs U=3 by the last frame but its window stops at 2; utterance 2's first
    # window starts at u=1, so no path starts at (0, 0).
    ranges = torch.tensor([[[0, 1], [1, 2]], [[0, 1], [1, 2]], [[1, 2], [1, 2]]], device=device)
    t_len, u_len = torch.tensor([2, 2, 2], device=device), torch.tensor([3, 2, 2], device=device)
    loss = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none", backend=backend)
    assert loss[0] == float("inf") and loss[2] == float("inf") and torch.isfinite(loss[1])
    loss[1].backward()
    grad = logits.grad
    assert torch.isfinite(grad).all() and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "ranges": a["ranges"].flip(-1)}, "consecutive labels"),
        (lambda a: {**a, "ranges": a["ranges"].int()}, "int64"),
        (lambda a: {**a, "logit_lengths": torch.tensor([0, 3])}, "logit_lengths must be in"),
        (lambda a: {**a, "target_lengths": torch.tensor([9, 1])}, "target_lengths must be in"),
        (lambda a: {**a, "reduction": "max"}, "reduction must be"),
        (lambda a: {**a, "blank": 9}, "blank must be in"),
        (lambda a: {**a, "backend": "k2"}, "backend must be"),
        (lambda a: {**a, "backend": "cuda"}, "CUDA backend needs CUDA tensors, got cpu"),
    ],
)
def test_bad_input_raises_clear_error(change, message):
    logits, targets, t_len, u_len = random_batch(2, 3, 2, 4, 8)
    kwargs = change(
        dict(
            logits=logits,
            targets=targets,
            ranges=full_window(2, 3, 2, u_len),
            logit_lengths=t_len,
            target_lengths=u_len,
        )
    )
    with pytest.raises(ValueError, match=message):
        pruned_rnnt_loss(**kwargs)


@pytest.mark.gpu
def test_equals_fast_rnnt_on_the_same_windows():
    """k2's standalone pruned loss (fast_rnnt, where installed) on the same windows.

    docs/kernels.md#tests-and-benchmarks
    """
    fast_rnnt = pytest.importorskip("fast_rnnt")
    g = torch.Generator().manual_seed(11)
    B, T, U, V, S = 4, 30, 12, 9, 4
    logits = torch.randn(B, T, S, V, generator=g, device="cpu").cuda().requires_grad_()
    targets = torch.randint(1, V, (B, U), generator=g).cuda()
    t_len = torch.tensor([30, 25, 30, 18]).cuda()
    u_len = torch.tensor([12, 12, 9, 5]).cuda()
    # Windows of S distinct labels that rise from 0 to U_b + 1 - S, the form fast_rnnt takes.
    frames = torch.arange(T).cuda()[None, :]
    start = torch.minimum(frames * (u_len[:, None] + 1 - S) // (t_len[:, None] - 1), u_len[:, None] + 1 - S)
    ranges = start[..., None] + torch.arange(S).cuda()
    boundary = torch.stack([torch.zeros_like(u_len), torch.zeros_like(u_len), u_len, t_len], dim=1)
    ref = fast_rnnt.rnnt_loss_pruned(logits, targets, ranges, termination_symbol=0, boundary=boundary, reduction="none")
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    ours = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none", backend="cuda")
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
    assert ((g_ours - g_ref).norm() / g_ref.norm()) < 1e-5


def test_reads_no_value_on_the_host_off_the_cpu():
    """On the meta device any read of a value (.item(), .tolist(), .cpu()) raises: the wrapper has none."""
    logits = torch.randn(2, 6, 3, 5, device="meta", requires_grad=True)
    targets = torch.randint(1, 5, (2, 4), device="meta")
    ranges = torch.zeros(2, 6, 3, dtype=torch.int64, device="meta")
    lengths = torch.tensor([6, 4], device="meta"), torch.tensor([4, 2], device="meta")
    pruned_rnnt_loss(logits, targets, ranges, *lengths).backward()
    assert logits.grad.shape == logits.shape
