"""BAT: CIF windows, the CIF predictor and the pruned joiner + loss."""

import pytest
import torch
import torchaudio
from torch import nn

from espnet_rwkv.asr.bat_loss import BATLoss
from espnet_rwkv.asr.cif import CifPredictor, rescale_to_targets
from espnet_rwkv.ops import bat_ranges, pruned_rnnt_loss


def check_window_invariants(ranges, t_len, u_len, S):
    start = ranges[..., 0]
    for b in range(ranges.size(0)):
        T_b, U_b = int(t_len[b]), int(u_len[b])
        last = max(U_b - S + 1, 0)
        assert start[b, 0] == 0, "frame 0 must hold u = 0"
        assert start[b, T_b - 1] == last and ranges[b, T_b - 1, -1] == U_b, "last frame must hold U_b"
        steps = start[b, :T_b].diff()
        assert (steps >= 0).all() and (steps <= S - 1).all()
        assert (start[b, T_b:] == last).all(), "padded frames pinned to the end"
        assert (ranges[b] <= U_b).all()


def test_ranges_follow_the_cif_peak_minus_left():
    alpha = torch.full((1, 20), 0.5)  # one label every two frames: peak_t = floor((t + 1) / 2)
    ranges = bat_ranges(alpha, torch.tensor([20]), torch.tensor([10]), left=1, right=3)
    peak = torch.floor(torch.arange(1, 21) * 0.5).long()
    expected = (peak - 1).clamp(0, 10 - 4 + 1)
    assert torch.equal(ranges[0, :, 0], expected)
    check_window_invariants(ranges, torch.tensor([20]), torch.tensor([10]), 4)


@pytest.mark.parametrize("alpha_value", [0.0, 1.0, "random"])
def test_windows_always_admit_a_path(alpha_value):
    g = torch.Generator().manual_seed(0)
    B, T, S = 6, 30, 8
    t_len = torch.tensor([30, 25, 12, 3, 30, 7])
    u_len = torch.tensor([20, 2, 0, 9, 60, 7])
    alpha = torch.rand(B, T, generator=g) if alpha_value == "random" else torch.full((B, T), alpha_value)
    ranges = bat_ranges(alpha, t_len, u_len, left=3, right=5)
    check_window_invariants(ranges, t_len, u_len, S)
    logits = torch.randn(B, T, S, 5, generator=g)
    targets = torch.randint(1, 5, (B, 60), generator=g)
    assert torch.isfinite(pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none")).all()


def test_short_utterance_does_not_shrink_other_windows():
    alpha = torch.rand(2, 15, generator=torch.Generator().manual_seed(1))
    alone = bat_ranges(alpha[:1], torch.tensor([15]), torch.tensor([9]), 3, 5)
    together = bat_ranges(alpha, torch.tensor([15, 15]), torch.tensor([9, 1]), 3, 5)
    assert torch.equal(together[0], alone[0])
    assert together.shape[-1] == 8


def test_unreachable_label_count_is_an_error():
    with pytest.raises(ValueError, match=r"utterance\(s\) \[1\] have more labels \(\[30\]\)"):
        bat_ranges(torch.ones(2, 4), torch.tensor([4, 4]), torch.tensor([2, 30]), 1, 2)


def looped_bat_ranges(cif_alpha, t_len, u_len, left, right):
    """The windows as first written: clamp, then a Python loop over frames for the two path rules."""
    S = left + right
    B, T = cif_alpha.shape
    last_start = (u_len - S + 1).clamp(min=0)
    frames = torch.arange(T)
    valid = frames[None, :] < t_len[:, None]
    proposal = torch.cumsum(cif_alpha.float().masked_fill(~valid, 0.0), dim=1).floor().long() - left
    lowest = (last_start[:, None] - (t_len[:, None] - 1 - frames[None, :]) * (S - 1)).clamp(min=0)
    highest = torch.minimum(frames[None, :] * (S - 1), last_start[:, None])
    start = torch.where(valid, torch.maximum(torch.minimum(proposal, highest), lowest), last_start[:, None])
    monotone = [start[:, 0]]
    for t in range(1, T):
        monotone.append(torch.minimum(torch.maximum(monotone[-1], start[:, t]), monotone[-1] + S - 1))
    return torch.minimum(torch.stack(monotone, dim=1)[..., None] + torch.arange(S), u_len[:, None, None])


@pytest.mark.parametrize("seed", range(20))
def test_ranges_equal_the_frame_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, int(torch.randint(1, 60, (1,), generator=g))
    left, right = int(torch.randint(0, 4, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g))
    S = max(left + right, 2)
    right = S - left
    t_len = torch.randint(1, T + 1, (B,), generator=g)
    t_len[0] = T
    reach = (t_len - 1) * (S - 1) + S - 1
    u_len = (torch.rand(B, generator=g) * (reach + 1)).long().clamp(max=reach)
    # Bursty weights (long silences, then several labels in a frame) make the step limit bind.
    alpha = torch.rand(B, T, generator=g) ** 4 * torch.randint(0, 3 * S, (B, T), generator=g)
    alpha = alpha * (u_len / alpha.sum(1).clamp(min=1e-6))[:, None]
    ranges = bat_ranges(alpha, t_len, u_len, left, right)
    assert torch.equal(ranges, looped_bat_ranges(alpha, t_len, u_len, left, right))
    check_window_invariants(ranges, t_len, u_len, S)


@pytest.mark.parametrize("alpha_value", [0.0, 1.0, 50.0])
def test_ranges_equal_the_frame_loop_at_the_edges(alpha_value):
    t_len = torch.tensor([1, 2, 9, 9, 9])
    u_len = torch.tensor([1, 8, 0, 72, 30])  # one frame; two frames, window ends at U; no label; the most reachable
    alpha = torch.full((5, 9), alpha_value)
    assert torch.equal(bat_ranges(alpha, t_len, u_len, 3, 6), looped_bat_ranges(alpha, t_len, u_len, 3, 6))


def test_ranges_read_no_value_on_the_host():
    """On the meta device any read of a value (.item(), .tolist(), nonzero) raises: none is left."""
    alpha = torch.rand(3, 50, device="meta")
    lengths = [torch.tensor(x, device="meta") for x in ([50, 40, 30], [10, 5, 0])]
    assert bat_ranges(alpha, *lengths, 3, 5).shape == (3, 50, 8)


def test_value_checks_run_on_request_only_off_the_cpu(monkeypatch):
    from espnet_rwkv.ops.checks import CHECK_VALUES_ENV, check_values

    monkeypatch.delenv(CHECK_VALUES_ENV, raising=False)
    assert check_values(torch.zeros(1)) and not check_values(torch.zeros(1, device="meta"))
    monkeypatch.setenv(CHECK_VALUES_ENV, "1")
    assert check_values(torch.zeros(1, device="meta"))


def test_cif_is_causal_and_masks_padding():
    cif = CifPredictor(6, kernel_size=3)
    x = torch.randn(2, 10, 6)
    alpha = cif(x, torch.tensor([10, 7]))
    assert ((alpha[0] > 0) & (alpha[0] < 1)).all() and (alpha[1, 7:] == 0).all()
    changed = x.clone()
    changed[:, 6:] = torch.randn(2, 4, 6)
    torch.testing.assert_close(cif(changed, torch.tensor([10, 7]))[:, :6], alpha[:, :6])


def test_rescale_sums_to_targets_and_quantity_loss_trains_the_cif():
    cif = CifPredictor(4)
    alpha = cif(torch.randn(3, 12, 4), torch.tensor([12, 9, 5]))
    scaled, quantity = rescale_to_targets(alpha, torch.tensor([4, 2, 0]))
    torch.testing.assert_close(scaled.sum(1), torch.tensor([4.0, 2.0, 0.0]))
    torch.testing.assert_close(quantity, (alpha.sum(1) - torch.tensor([4.0, 2.0, 0.0])).abs().mean())
    quantity.backward()
    assert cif.proj.weight.grad.abs().sum() > 0


class Joiner(nn.Module):
    """The attribute names of ESPnet's JointNetwork."""

    def __init__(self, enc, dec, joint, vocab):
        super().__init__()
        self.lin_enc = nn.Linear(enc, joint)
        self.lin_dec = nn.Linear(dec, joint)
        self.joint_activation = nn.Tanh()
        self.lin_out = nn.Linear(joint, vocab)


def bat_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(3, 16, 8, generator=g)
    dec = torch.randn(3, 6, 5, generator=g)
    targets = torch.randint(1, 7, (3, 5), generator=g, dtype=torch.int32)
    return enc, dec, targets, torch.tensor([16, 12, 9]), torch.tensor([5, 3, 0])


def test_window_covering_all_labels_equals_full_joiner_and_torchaudio():
    torch.manual_seed(0)
    joiner = Joiner(8, 5, 12, 7)
    enc, dec, targets, t_len, u_len = bat_batch()
    bat = BATLoss(8, left=0, right=6, quantity_weight=0.0)  # S = 6 = U + 1: nothing pruned
    out = bat(enc, dec, targets, t_len, u_len, joiner)
    full = joiner.lin_out(joiner.joint_activation(joiner.lin_enc(enc)[:, :, None] + joiner.lin_dec(dec)[:, None]))
    ref = torchaudio.functional.rnnt_loss(full, targets, t_len.int(), u_len.int(), blank=0)
    torch.testing.assert_close(out["loss_transducer"], ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-5, atol=1e-5)


def test_autocast_bf16_matches_float32():
    torch.manual_seed(0)
    joiner = Joiner(8, 5, 12, 7)
    enc, dec, targets, t_len, u_len = bat_batch(1)
    bat = BATLoss(8, left=1, right=2)
    ref = bat(enc, dec, targets, t_len, u_len, joiner)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bat(enc, dec, targets, t_len, u_len, joiner)
    assert low["loss_transducer"].dtype == torch.float32
    torch.testing.assert_close(low["loss"], ref["loss"], rtol=2e-2, atol=0)
    low["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in (*joiner.parameters(), *bat.parameters()))
