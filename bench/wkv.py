"""WKV benchmark on one GPU: ours vs ESPnet's CUDA kernel vs fla's fused_recurrent_rwkv4.

    PYTHONPATH=. python bench/wkv.py --espnet-src <folder> [--profile]

--espnet-src: a folder holding ESPnet's wkv_op.cpp and wkv_cuda.cu (copied from an ESPnet
checkout's espnet2/asr_transducer/decoder/modules/rwkv/cuda/), built here with Tmax set to
the longest T, and run as ESPnet runs them (through a Python autograd.Function like
espnet2's WKVLinearAttention, and y.backward). fla is imported if installed. Prints one
table of median times (ms) of the whole Python call (CUDA events around it, the GPU idle
before) and of the kernels alone (their GPU time summed, torch profiler), the
copy-bandwidth floor measured in the same run and the ratios, then
the streaming step (one chunk with state, measured first in the process) against an empty
kernel launch timed in turn with it, on the host and on the GPU (CUDA graph replay).
--profile first prints the GPU time of each of our kernels (torch profiler) for
bf16 fwd+bwd at B16 T1024 C512.
"""

import argparse
import time

import torch

from espnet_rwkv.ops import wkv
from espnet_rwkv.ops.wkv import empty_state

SHAPES = [(16, 256, 512), (16, 1024, 512), (16, 4096, 512), (16, 16384, 512), (32, 1024, 256)]


def median_ms(fn, make_inputs, reps=30, warmup=5):
    """Median of CUDA-event times of fn(*inputs), fresh random inputs each rep."""
    times = []
    for i in range(warmup + reps):
        args = make_inputs()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth():
    """Device-to-device copy bandwidth in bytes/ms (read + write counted)."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), lambda: ())
    return 2 * src.numel() * 4 / ms


def make(B, T, C, dtype, grad):
    def inputs():
        td = torch.randn(C, device="cuda", requires_grad=grad)
        tf = torch.randn(C, device="cuda", requires_grad=grad)
        k = torch.randn(B, T, C, device="cuda", dtype=dtype, requires_grad=grad)
        v = torch.randn(B, T, C, device="cuda", dtype=dtype, requires_grad=grad)
        gy = torch.randn(B, T, C, device="cuda", dtype=dtype)
        return td, tf, k, v, gy

    return inputs


def ours(td, tf, k, v, gy):
    y, _ = wkv(td, tf, k, v, backend="cuda")
    if gy is not None and k.requires_grad:
        y.backward(gy)


def fla_fn(td, tf, k, v, gy):
    from fla.ops.rwkv4 import fused_recurrent_rwkv4

    B, _, C = k.shape
    state = torch.zeros(B, 3, 1, C, device="cuda", dtype=k.dtype)
    state[:, 2] = -1e38
    y, _ = fused_recurrent_rwkv4(td, tf, k, v, state)
    if k.requires_grad:
        y.backward(gy)


def espnet_fn(ext):
    """ESPnet's kernels as ESPnet runs them: through a Python autograd.Function doing what
    espnet2's ``WKVLinearAttention`` does (w = -exp(time_decay), contiguous inputs, output and
    gradients allocated by torch, per-batch parameter gradients summed), and y.backward(gy)."""

    class ESPnetWKV(torch.autograd.Function):
        @staticmethod
        def forward(ctx, td, tf, k, v):
            w, u = -torch.exp(td.contiguous()), tf.contiguous()
            k, v = k.contiguous(), v.contiguous()
            y = torch.empty_like(k, memory_format=torch.contiguous_format)
            ext.forward(w, u, k, v, y)
            ctx.save_for_backward(w, u, k, v, y)
            return y

        @staticmethod
        def backward(ctx, gy):
            w, u, k, v, y = ctx.saved_tensors
            B, _, C = k.shape
            gw = torch.empty(B, C, device=k.device, dtype=w.dtype)
            gu = torch.empty(B, C, device=k.device, dtype=w.dtype)
            gk, gv = torch.empty_like(k), torch.empty_like(v)
            ext.backward(w, u, k, v, y, gy.contiguous(), gw, gu, gk, gv)
            return gw.sum(0), gu.sum(0), gk, gv

    def run(td, tf, k, v, gy):
        y = ESPnetWKV.apply(td, tf, k, v)
        if k.requires_grad:
            y.backward(gy)

    return run


def load_espnet(src, tmax):
    from torch.utils.cpp_extension import load

    return load(
        name=f"espnet_wkv_{tmax}",
        sources=[f"{src}/wkv_op.cpp", f"{src}/wkv_cuda.cu"],
        extra_cuda_cflags=[
            "-t 4",
            "-std=c++17",
            "--maxrregcount 60",
            "--use_fast_math",
            "-O3",
            "-Xptxas -O3",
            "--extra-device-vectorization",
            f"-DTmax={tmax}",
        ],
        verbose=False,
    )


def host_us(fn, n=400):
    """Wall time per call of n back-to-back calls, synchronised once (launch-bound regime)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def in_turn(measure, fn, ref, rounds):
    """Medians of measure(fn) and measure(ref) taken in turn, so that both see the same host."""
    ours, refs = [], []
    for _ in range(rounds):
        refs.append(measure(ref))
        ours.append(measure(fn))
    return sorted(ours)[rounds // 2], sorted(refs)[rounds // 2]


def graph_gpu_us(fn, n=200):
    """GPU time per call of fn, replayed from a CUDA graph of n calls: no host launch cost."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def kernel_ms(fn, make_inputs, reps=10):
    """Median over calls of the summed GPU time of every kernel fn(*inputs) launches (torch
    profiler): the GPU's work without the host's launch and autograd time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn(*make_inputs())
    per_call = []
    for _ in range(reps):
        args = make_inputs()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(*args)
            torch.cuda.synchronize()
        per_call.append(sum(e.device_time_total for e in prof.key_averages()) / 1e3)
    return sorted(per_call)[reps // 2]


def profile(B=16, T=1024, C=512, dtype=torch.bfloat16, reps=20):
    """Mean GPU time per call of each kernel in our fwd+bwd, from the torch profiler."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    inputs = [make(B, T, C, dtype, True)() for _ in range(reps)]
    ours(*inputs[0])
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for args in inputs[1:]:
            ours(*args)
        torch.cuda.synchronize()
    print(f"# kernels of fwd+bwd, B{B} T{T} C{C} {str(dtype)[6:]}, mean us per call over {reps - 1} calls")
    for event in sorted(prof.key_averages(), key=lambda e: -e.device_time_total):
        if event.device_time_total > 0:
            print(f"#   {event.device_time_total / (reps - 1):8.1f}  {event.key[:90]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--espnet-src", default=None, help="folder with ESPnet's wkv_op.cpp, wkv_cuda.cu")
    parser.add_argument("--profile", action="store_true", help="print our kernels' GPU times first")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}")
    # A streaming process has not run the profiler nor cached gigabytes of blocks: on the H200
    # machine, measured after the table, the same step and empty launch took twice as long.
    streaming = streaming_step()
    if args.profile:
        profile()
    bw = copy_bandwidth()
    print(f"# copy bandwidth {bw / 1e9:.3f} TB/s (device-to-device, read+write)")
    espnet = load_espnet(args.espnet_src, max(T for _, T, _ in SHAPES)) if args.espnet_src else None
    try:
        import fla.ops.rwkv4  # noqa: F401

        has_fla = True
    except ImportError:
        has_fla = False
    espnet_run = espnet_fn(espnet) if espnet is not None else None
    wkv(*make(1, 4, 32, torch.float32, False)()[:4], backend="cuda")  # build/load our extension

    print(
        "| B | T | C | dtype | ours fwd | ours fwd+bwd | ESPnet fwd+bwd | fla fwd+bwd | ESPnet/ours | fla/ours "
        "| ours kernels | ESPnet kernels | fla kernels | ESPnet/ours kernels | fla/ours kernels | floor "
        "| floor/ours kernels | floor/ours |"
    )
    print("|" + "---|" * 18)
    for B, T, C in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            grad_inputs = make(B, T, C, dtype, True)
            fwd = median_ms(ours, make(B, T, C, dtype, False))
            both = median_ms(ours, grad_inputs)
            both_k = kernel_ms(ours, grad_inputs)
            esp = esp_k = fl = fl_k = None
            if espnet_run is not None and dtype == torch.float32:  # ESPnet's kernel is fp32-only
                esp = median_ms(espnet_run, grad_inputs)
                esp_k = kernel_ms(espnet_run, grad_inputs)
            if has_fla:
                fl = median_ms(fla_fn, grad_inputs)
                fl_k = kernel_ms(fla_fn, grad_inputs)
            floor = 8 * B * T * C * torch.finfo(dtype).bits / 8 / bw

            def f(x):
                return "-" if x is None else f"{x:.3f}"

            def r(x, ref):
                return "-" if x is None else f"{x / ref:.2f}"

            print(
                f"| {B} | {T} | {C} | {str(dtype)[6:]} | {fwd:.3f} | {both:.3f} | {f(esp)} | {f(fl)} "
                f"| {r(esp, both)} | {r(fl, both)} | {both_k:.3f} | {f(esp_k)} | {f(fl_k)} | {r(esp_k, both_k)} "
                f"| {r(fl_k, both_k)} | {floor:.3f} | {floor / both_k:.0%} | {floor / both:.0%} |"
            )

    print()
    print(
        "Streaming step, fp32, one chunk with carried state, no grad, against an empty kernel launch "
        "(torch.cuda._sleep(0)) timed in turn with it, first in the process. Host: us per call, 5 rounds of "
        "400 calls back to back each; GPU: us per call replayed from a CUDA graph of 200 calls, 3 rounds; "
        "medians"
    )
    print("| B | T | C | wkv() host | empty host | wkv() / empty | kernel GPU | empty GPU | kernel / empty |")
    print("|---|---|---|---|---|---|---|---|---|")
    for B, T, C, h, he, g, ge in streaming:
        print(f"| {B} | {T} | {C} | {h:.1f} | {he:.1f} | {h / he:.2f} | {g:.1f} | {ge:.1f} | {g / ge:.2f} |")


def streaming_step():
    """(B, T, C, host us, empty host us, GPU us, empty GPU us) of the streaming step's rows."""
    empty = lambda: torch.cuda._sleep(0)  # noqa: E731
    rows = []
    for B in (1, 16, 64):
        for T in (8, 16, 32):
            C = 512
            td, tf, k, v, _ = make(B, T, C, torch.float32, False)()
            state = empty_state(B, C, "cuda")
            with torch.no_grad():
                step = lambda: wkv(td, tf, k, v, state)  # noqa: E731, B023 (used within this iteration)
                h, he = in_turn(host_us, step, empty, rounds=5)
                g, ge = in_turn(graph_gpu_us, step, empty, rounds=3)
            rows.append((B, T, C, h, he, g, ge))
    return rows


if __name__ == "__main__":
    main()
