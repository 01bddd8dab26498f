"""The RWKV-BAT training step has no Python loop over time outside the ops.

A loop over frames shows as operator calls that grow with T. With the two ops' loops
(the WKV chunk scan, the lattice DP) replaced by stand-ins of a fixed number of calls,
one training step (forward, backward, Adam) of the ESPnet model must make the same
number of ATen calls at T and at 2T frames.
"""

import importlib

import torch
from test_espnet_glue import build, load_conf

# The packages, not the functions of the same name that espnet_rwkv.ops exports.
WKV = importlib.import_module("espnet_rwkv.ops.wkv")
PRUNED_RNNT = importlib.import_module("espnet_rwkv.ops.pruned_rnnt")


def wkv_stand_in(w, u, k, v, state):
    return torch.sigmoid(k) * v + u, state * 1.0


def lattice_stand_in(blank, emit, start, logit_lengths, target_lengths):
    return blank.flatten(1).logsumexp(dim=1), blank.exp(), emit.exp()


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


def test_step_calls_do_not_grow_with_frames(monkeypatch):
    monkeypatch.setattr(WKV, "wkv_torch", wkv_stand_in)
    monkeypatch.setattr(PRUNED_RNNT, "lattice_forward_backward", lattice_stand_in)
    conf = load_conf("tiny_rwkv.yaml")
    conf["model_conf"] = {"transducer_loss": "bat", "auxiliary_ctc_weight": 0.3}
    model = build(conf).train()
    optimizer = torch.optim.Adam(model.parameters())
    aten_calls_per_step(model, optimizer, 2.0)  # first-step allocations (Adam state)
    # From 2 s: at 1 s one aten::fill_ fewer (a size threshold in the step, constant from 2 s on).
    short, long = (aten_calls_per_step(model, optimizer, seconds) for seconds in (2.0, 4.0))
    assert short == long, f"{short} ATen calls at 2 s, {long} at 4 s"
