"""Pruned RNN-T loss against torchaudio's full loss, a closed form and gradcheck."""
import pytest
import torch
import torchaudio

from conftest import DEVICES
from espnet_rwkv.ops import pruned_rnnt_loss


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,T,U,V,seed", [(4, 9, 5, 7, 0), (3, 1, 3, 5, 1), (5, 20, 12, 30, 2), (2, 4, 0, 3, 3)])
def test_full_window_equals_torchaudio(B, T, U, V, seed, device):
    """The reference is torchaudio on the CPU: its CUDA kernel disagrees with its own CPU result
    for batches with T = 1 or U = 0 (seen with torchaudio 2.11 on an H100)."""
    logits, targets, t_len, u_len = random_batch(B, T, U, V, seed)
    logits.requires_grad_()
    ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0, reduction="none")
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    on_device = logits.detach().to(device).requires_grad_()
    ours = pruned_rnnt_loss(on_device, targets.to(device), full_window(B, T, U, u_len).to(device),
                            t_len.to(device), u_len.to(device), reduction="none")
    g_ours, = torch.autograd.grad(ours.sum(), on_device)
    torch.testing.assert_close(ours.cpu(), ref, rtol=1e-5, atol=1e-5)
    assert ((g_ours.cpu() - g_ref).norm() / g_ref.norm()) < 1e-5


def test_reductions_follow_torchaudio():
    logits, targets, t_len, u_len = random_batch(3, 6, 4, 5, 4)
    ranges = full_window(3, 6, 4, u_len)
    per_utt = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none")
    for reduction, expected in (("mean", per_utt.mean()), ("sum", per_utt.sum())):
        torch.testing.assert_close(pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction=reduction), expected)
        ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0, reduction=reduction)
        torch.testing.assert_close(expected, ref, rtol=1e-5, atol=1e-5)


def test_tiny_lattice_closed_form():
    """T=2, U=1: paths (emit@t0, blank@t0, blank@t1) and (blank@t0, emit@t1, blank@t1)."""
    logits = torch.randn(1, 2, 2, 3)
    lp = logits.log_softmax(-1)[0]
    y = 2
    paths = torch.stack([
        lp[0, 0, y] + lp[0, 1, 0] + lp[1, 1, 0],
        lp[0, 0, 0] + lp[1, 0, y] + lp[1, 1, 0],
    ])
    loss = pruned_rnnt_loss(logits, torch.tensor([[y]]), torch.tensor([[[0, 1], [0, 1]]]), torch.tensor([2]), torch.tensor([1]))
    torch.testing.assert_close(loss, -torch.logsumexp(paths, 0))


def test_narrow_window_drops_paths_outside_it():
    """A window of 2 that moves to [1, 2] at t=1 removes every path still at u=0 there."""
    logits = torch.randn(1, 2, 2, 4)
    lp = logits.log_softmax(-1)[0]
    targets = torch.tensor([[1, 3]])
    ranges = torch.tensor([[[0, 1], [1, 2]]])
    # Only path: emit y1 at (0, u=0), blank to t=1 at u=1, emit y2 at (1, u=1), final blank at u=2.
    expected = -(lp[0, 0, 1] + lp[0, 1, 0] + lp[1, 0, 3] + lp[1, 1, 0])
    loss = pruned_rnnt_loss(logits, targets, ranges, torch.tensor([2]), torch.tensor([2]))
    torch.testing.assert_close(loss, expected)


@pytest.mark.gpu
def test_cuda_and_cpu_agree_on_narrow_windows():
    from espnet_rwkv.ops import bat_ranges

    logits, targets, _, u_len = random_batch(6, 40, 15, 20, 9)
    t_len = torch.tensor([40, 35, 30, 25, 20, 40])
    alpha = torch.rand(6, 40, generator=torch.Generator().manual_seed(9))
    ranges = bat_ranges(alpha, t_len, u_len, 2, 3)
    logits = logits[:, :, :5].contiguous().requires_grad_()
    cpu = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none")
    g_cpu, = torch.autograd.grad(cpu.sum(), logits)
    on_gpu = logits.detach().cuda().requires_grad_()
    gpu = pruned_rnnt_loss(on_gpu, targets.cuda(), ranges.cuda(), t_len.cuda(), u_len.cuda(), reduction="none")
    g_gpu, = torch.autograd.grad(gpu.sum(), on_gpu)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
    assert ((g_gpu.cpu() - g_cpu).norm() / g_cpu.norm()) < 1e-5


def test_gradcheck_float64():
    logits, targets, t_len, u_len = random_batch(2, 5, 3, 4, 5, dtype=torch.float64)
    ranges = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])[:, :, None] + torch.arange(3)
    ranges = torch.minimum(ranges, u_len[:, None, None])
    logits = logits[:, :, :3].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: pruned_rnnt_loss(x, targets, ranges, t_len, u_len, reduction="sum"), (logits,)
    )


def test_half_precision_logits_use_float32_math():
    logits, targets, t_len, u_len = random_batch(2, 6, 3, 5, 6)
    ranges = full_window(2, 6, 3, u_len)
    ref = pruned_rnnt_loss(logits.bfloat16().float(), targets, ranges, t_len, u_len)
    ours = pruned_rnnt_loss(logits.bfloat16(), targets, ranges, t_len, u_len)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref)


def test_targets_longer_than_frames_are_finite():
    """RNN-T emits several labels per frame: U > T has paths (torchaudio agrees)."""
    logits, targets, _, _ = random_batch(1, 2, 6, 8, 7)
    t_len, u_len = torch.tensor([2]), torch.tensor([6])
    ours = pruned_rnnt_loss(logits, targets, full_window(1, 2, 6, u_len), t_len, u_len)
    ref = torchaudio.functional.rnnt_loss(logits, targets, t_len.int(), u_len.int(), blank=0)
    assert torch.isfinite(ours)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_window_without_a_path_gives_inf_and_zero_gradient():
    logits = torch.randn(2, 2, 2, 4, requires_grad=True)
    targets = torch.tensor([[1, 2, 3], [1, 2, 3]])
    # Utterance 0 needs U=3 by the last frame but its window stops at 2.
    ranges = torch.tensor([[[0, 1], [1, 2]], [[0, 1], [1, 2]]])
    loss = pruned_rnnt_loss(logits, targets, ranges, torch.tensor([2, 2]), torch.tensor([3, 2]), reduction="none")
    assert loss[0] == float("inf") and torch.isfinite(loss[1])
    loss[1].backward()
    grad = logits.grad
    assert torch.isfinite(grad).all() and grad[0].abs().sum() == 0


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda a: {**a, "ranges": a["ranges"].flip(-1)}, "consecutive labels"),
        (lambda a: {**a, "ranges": a["ranges"].int()}, "int64"),
        (lambda a: {**a, "logit_lengths": torch.tensor([0, 3])}, "logit_lengths must be in"),
        (lambda a: {**a, "target_lengths": torch.tensor([9, 1])}, "target_lengths must be in"),
        (lambda a: {**a, "reduction": "max"}, "reduction must be"),
        (lambda a: {**a, "blank": 9}, "blank must be in"),
    ],
)
def test_bad_input_raises_clear_error(change, message):
    logits, targets, t_len, u_len = random_batch(2, 3, 2, 4, 8)
    kwargs = change(dict(logits=logits, targets=targets, ranges=full_window(2, 3, 2, u_len),
                         logit_lengths=t_len, target_lengths=u_len))
    with pytest.raises(ValueError, match=message):
        pruned_rnnt_loss(**kwargs)
