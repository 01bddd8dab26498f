"""Small WKV cases for compute-sanitizer (not a test: it only exercises every kernel path).

    compute-sanitizer --tool memcheck python3 bench/wkv_sanitize.py

fp32 and bf16, forward and backward, with and without a state, C = 37 (plain loads into
shared memory) and C = 64 (16-byte copies), plus a no-grad streaming call.
"""

import torch

from espnet_rwkv.ops import wkv


def main():
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for B, T, C in ((3, 131, 37), (2, 131, 64)):
            for with_state in (False, True):
                td = torch.randn(C, device="cuda", requires_grad=True)
                tf = torch.randn(C, device="cuda", requires_grad=True)
                k = torch.randn(B, T, C, device="cuda", dtype=dtype, requires_grad=True)
                v = torch.randn(B, T, C, device="cuda", dtype=dtype, requires_grad=True)
                state = None
                if with_state:
                    state = torch.rand(B, 3, C, device="cuda").requires_grad_()
                y, s = wkv(td, tf, k, v, state, backend="cuda")
                (y.float().sum() + s.sum()).backward()
                with torch.no_grad():
                    wkv(td, tf, k[:, :16], v[:, :16], s, backend="cuda")
    torch.cuda.synchronize()
    print("wkv_sanitize: done")


if __name__ == "__main__":
    main()
