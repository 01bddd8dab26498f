"""Joiner + transducer loss, forward and backward: full lattice (torchaudio) versus BAT's window.

    python bench/bat_loss.py                # on the GPU, the three shapes of the BAT issue
    python bench/bat_loss.py --device cpu   # a CPU row at a small shape

Joiner: ``Linear(J, V)(tanh(am + lm))`` with am (B, T, J) and lm (B, U+1, J)
given. Full: over (B, T, U+1); BAT: over the (B, T, S) window of
``bat_ranges`` (S = 8: left 3, right 5) from CIF-like weights (U/T per frame
with noise), with our ``pruned_rnnt_loss``; fast_rnnt (k2's standalone pruned
loss), when importable, over the same windows. One process, the same inputs
for all; ratios > 1 favour BAT.
"""

import argparse
import statistics
import time

import torch
import torchaudio

from espnet_rwkv.ops import bat_ranges, pruned_rnnt_loss

try:
    import fast_rnnt
except ImportError:
    fast_rnnt = None

GPU_SHAPES = [(32, 250, 60, 500, 512), (32, 250, 100, 500, 512), (16, 500, 150, 500, 512)]
CPU_SHAPES = [(4, 100, 20, 100, 128)]


def make_inputs(B, T, U, V, J, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    am = torch.randn(B, T, J, generator=g).to(device).requires_grad_()
    lm = torch.randn(B, U + 1, J, generator=g).to(device).requires_grad_()
    out = torch.nn.Linear(J, V).to(device)
    targets = torch.randint(1, V, (B, U), generator=g, dtype=torch.int32).to(device)
    t_len = torch.full((B,), T, dtype=torch.int32, device=device)
    u_len = torch.full((B,), U, dtype=torch.int32, device=device)
    alpha = (U / T + 0.1 * torch.randn(B, T, generator=g)).clamp(min=0).to(device)
    ranges = bat_ranges(alpha, t_len, u_len, left=3, right=5)
    # Windows of S distinct labels (none past U): the form fast_rnnt accepts, given to both.
    S = ranges.size(-1)
    ranges = ranges[..., :1].clamp(max=U + 1 - S) + torch.arange(S, device=device)
    return am, lm, out, targets, t_len, u_len, ranges


def full_step(am, lm, out, targets, t_len, u_len, ranges):
    logits = out(torch.tanh(am[:, :, None] + lm[:, None]))
    loss = torchaudio.functional.rnnt_loss(logits, targets, t_len, u_len, blank=0)
    loss.backward()
    return loss


def window_logits(am, lm, out, ranges):
    B, T, S = ranges.shape
    lm_window = lm.gather(1, ranges.reshape(B, T * S, 1).expand(-1, -1, lm.size(-1))).reshape(B, T, S, -1)
    return out(torch.tanh(am[:, :, None] + lm_window))


def bat_step(am, lm, out, targets, t_len, u_len, ranges):
    loss = pruned_rnnt_loss(window_logits(am, lm, out, ranges), targets, ranges, t_len, u_len)
    loss.backward()
    return loss


def fast_rnnt_step(am, lm, out, targets, t_len, u_len, ranges):
    boundary = torch.stack([torch.zeros_like(u_len), torch.zeros_like(u_len), u_len, t_len], dim=1).long()
    loss = fast_rnnt.rnnt_loss_pruned(
        window_logits(am, lm, out, ranges),
        targets.long(),
        ranges,
        termination_symbol=0,
        boundary=boundary,
        reduction="mean",
    )
    loss.backward()
    return loss


def measure(step, inputs, device, reps):
    """Median ms, and peak extra memory in MB on CUDA (None on CPU)."""
    for _ in range(3):
        step(*inputs)
    times, peak = [], None
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(*inputs)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            step(*inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), peak


def cell(table, name, fmt):
    """table[name] formatted, or "-" where not measured (no fast_rnnt, memory on a CPU)."""
    return fmt.format(table[name]) if table.get(name) is not None else "-"


def ratio(table, name):
    """table[name] over BAT's figure: > 1 means BAT is faster or lighter."""
    return f"{table[name] / table['bat']:.2f}x" if table.get(name) is not None else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    shapes = GPU_SHAPES if args.device == "cuda" else CPU_SHAPES
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"# joiner + loss fwd+bwd, {name}, torch {torch.__version__}, median of {args.reps}")
    print(f"# fast_rnnt: {str(fast_rnnt.__file__) if fast_rnnt else 'not importable'}")
    print(
        "| B, T, U, V, J | full ms | BAT ms | fast_rnnt ms | time full/BAT | time fast_rnnt/BAT "
        "| full MB | BAT MB | fast_rnnt MB | memory full/BAT | loss full, BAT, fast_rnnt |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    steps = {"full": full_step, "bat": bat_step}
    if fast_rnnt is not None:
        steps["fast_rnnt"] = fast_rnnt_step
    for shape in shapes:
        inputs = make_inputs(*shape, args.device)
        loss, ms, mb = {}, {}, {}
        for name, step in steps.items():
            loss[name] = f"{step(*inputs).item():.2f}"
            ms[name], mb[name] = measure(step, inputs, args.device, args.reps)
        print(
            f"| {', '.join(map(str, shape))} | {ms['full']:.1f} | {ms['bat']:.1f} "
            f"| {cell(ms, 'fast_rnnt', '{:.1f}')} | {ratio(ms, 'full')} | {ratio(ms, 'fast_rnnt')} "
            f"| {cell(mb, 'full', '{:.0f}')} | {cell(mb, 'bat', '{:.0f}')} | {cell(mb, 'fast_rnnt', '{:.0f}')} "
            f"| {ratio(mb, 'full')} | {loss['full']}, {loss['bat']}, {loss.get('fast_rnnt', '-')} |"
        )


if __name__ == "__main__":
    main()
