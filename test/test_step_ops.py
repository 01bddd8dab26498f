"""The RWKV-BAT training step has no Python loop over time outside the ops.

A loop over frames shows as operator calls that grow with T. With the two ops run by
their C++ CPU kernels (one registered op call each, whatever T), one training step
(forward, backward, Adam) of the ESPnet model must make the same number of ATen calls
at T and at 2T frames.
"""

import pytest
import torch
from test_espnet_glue import build, load_conf

from espnet_rwkv.ops import extension


def aten_calls_per_step(model, optimizer, seconds):
    g = torch.Generator().manual_seed(0)
    samples = int(16000 * seconds)
    speech = torch.randn(2, samples, generator=g)
    text = torch.tensor([[2, 3, 4, 2], [3, 4, 2, -1]])
    batch = speech, torch.tensor([samples, samples * 3 // 4]), text, torch.tensor([4, 3])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        optimizer.zero_grad()
        model(*batch)[0].backward()
        optimizer.step()
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def test_step_calls_do_not_grow_with_frames():
    cpu = torch.device("cpu")
    if not (extension.usable("wkv", cpu) and extension.usable("pruned_rnnt", cpu)):
        pytest.skip("the C++ CPU kernels are not built (setup.sh builds them)")
    conf = load_conf("tiny_rwkv.yaml")
    conf["model_conf"] = {"transducer_loss": "bat", "auxiliary_ctc_weight": 0.3}
    model = build(conf).train()
    optimizer = torch.optim.Adam(model.parameters())
    aten_calls_per_step(model, optimizer, 2.0)  # first-step allocations (Adam state)
    # From 2 s: at 1 s one aten::fill_ fewer (a size threshold in the step, constant from 2 s on).
    short, long = (aten_calls_per_step(model, optimizer, seconds) for seconds in (2.0, 4.0))
    assert short == long, f"{short} ATen calls at 2 s, {long} at 4 s"
