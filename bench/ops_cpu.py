"""CPU forward+backward time of the ops: the C++ kernels (backend "cpu") against the PyTorch backends.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/ops_cpu.py [--repeats 20]

WKV at (B, T, C) = (8, 100, 144) and the pruned RNN-T loss at (B, T, S, V) = (8, 100, 4, 260)
(the demo encoder's frames after subsampling); median of --repeats calls after two warm-ups,
each backend timed in two interleaved rounds, the lower median kept. On a shared
machine with busy cores, OpenMP's spinning threads make multi-threaded timings noisy by
several times: OMP_NUM_THREADS=1 gives repeatable numbers.
"""

import argparse
import statistics
import time

import torch

from espnet_rwkv.ops import bat_ranges, extension, pruned_rnnt_loss, wkv


def median_ms(fn, repeats):
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def wkv_step(backend, B=8, T=100, C=144):
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(C, generator=g), torch.randn(C, generator=g)]
    leaves += [torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)]
    leaves = [t.requires_grad_() for t in leaves]

    def step():
        y, state = wkv(*leaves, backend=backend)
        (y.sum() + state[:, :2].sum()).backward()

    return step


def pruned_step(backend, B=8, T=100, S=4, V=260):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, S, V, generator=g, requires_grad=True)
    u_len = torch.randint(10, 30, (B,), generator=g)
    targets = torch.randint(1, V, (B, int(u_len.max())), generator=g)
    t_len = torch.full((B,), T)
    ranges = bat_ranges(torch.rand(B, T, generator=g), t_len, u_len, S // 2, S - S // 2)

    def step():
        pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, backend=backend).backward()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for op in extension.KERNEL_OPS:
        extension.load(op, "cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| op, forward+backward | PyTorch backend (ms) | C++ CPU kernel (ms) | speed-up |")
    print("|---|---:|---:|---:|")
    for name, make in (("wkv (8, 100, 144)", wkv_step), ("pruned_rnnt_loss (8, 100, 4, 260)", pruned_step)):
        rounds = [[median_ms(make(backend), args.repeats) for backend in ("torch", "cpu")] for _ in range(2)]
        torch_ms, cpp_ms = (min(times) for times in zip(*rounds))
        print(f"| {name} | {torch_ms:.2f} | {cpp_ms:.2f} | {torch_ms / cpp_ms:.1f}x |")


if __name__ == "__main__":
    main()
