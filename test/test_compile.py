"""torch.compile(fullgraph=True) of the RWKV block and the BAT loss: one graph, the eager result.

The fast tests trace with the ``aot_eager`` backend (dynamo and autograd capture, no code
generation); the ``slow`` ones run CPU inductor. Both run the ops' PyTorch backends: the
WKV and lattice loops are unrolled for the traced T.
"""

import pytest
import torch
from test_bat import Joiner, bat_batch

from espnet_rwkv.asr.bat_loss import BATLoss
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.rwkv_block import RWKVBlock, TimeMix
from espnet_rwkv.ops import wkv


def random_block(dtype=torch.float32):
    torch.manual_seed(0)
    block = RWKVBlock(16, 32, 1, 3).to(dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


def assert_same_step(module, compiled, inputs, loss_of):
    """Forward outputs and every gradient (inputs and parameters) of ``compiled`` equal ``module``'s."""
    params = [p for p in module.parameters()]
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad] + params
    ref, out = module(*inputs), compiled(*inputs)
    for a, b in zip(loss_of(ref, parts=True), loss_of(out, parts=True)):
        torch.testing.assert_close(b, a)
    for a, b in zip(torch.autograd.grad(loss_of(ref), leaves), torch.autograd.grad(loss_of(out), leaves)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def block_loss(result, parts=False):
    y, state = result
    return (y, state) if parts else (y * torch.linspace(-1, 1, y.size(-1))).sum() + state.sum()


def test_time_mix_is_three_lerps_and_projections_float64():
    """The addcmul + bmm form against the RWKV-4 definition written out (docs/rwkv.md)."""
    tm = random_block(torch.float64).time_mix
    assert isinstance(tm, TimeMix)
    x, x_prev = torch.randn(2, 7, 16, dtype=torch.float64), torch.randn(2, 16, dtype=torch.float64)
    state = torch.zeros(2, 3, 16, dtype=torch.float64)
    state[:, 2] = -1e38
    out, _, _ = tm(x, x_prev, state)
    shifted = torch.cat([x_prev[:, None], x[:, :-1]], dim=1)
    k = (x * tm.mix_k + shifted * (1 - tm.mix_k)) @ tm.key.weight.T
    v = (x * tm.mix_v + shifted * (1 - tm.mix_v)) @ tm.value.weight.T
    r = (x * tm.mix_r + shifted * (1 - tm.mix_r)) @ tm.receptance.weight.T
    mixed, _ = wkv(tm.time_decay, tm.time_first, k, v, state)
    torch.testing.assert_close(out, (torch.sigmoid(r) * mixed) @ tm.output.weight.T)


def block_inputs():
    x = torch.randn(2, 12, 16, requires_grad=True)
    state = torch.randn(2, 5, 16)
    state[:, 3] = -1.0
    return x, state


def test_block_traces_as_one_graph_and_matches_eager():
    block = random_block()
    assert_same_step(block, torch.compile(block, fullgraph=True, backend="aot_eager"), block_inputs(), block_loss)


@pytest.mark.slow
def test_block_compiled_by_inductor_matches_eager():
    block = random_block()
    assert_same_step(block, torch.compile(block, fullgraph=True), block_inputs(), block_loss)


def bat_loss_value(result, parts=False):
    return (result["loss_transducer"], result["loss_quantity"]) if parts else result["loss"]


def bat_inputs():
    torch.manual_seed(0)
    enc, dec, targets, t_len, u_len = bat_batch(1)
    return enc.requires_grad_(), dec.requires_grad_(), targets, t_len, u_len, Joiner(8, 5, 12, 7)


def test_bat_loss_traces_as_one_graph_and_matches_eager():
    bat = BATLoss(8, left=1, right=2)
    inputs = bat_inputs()
    compiled = torch.compile(bat, fullgraph=True, backend="aot_eager")
    assert_same_step(bat, compiled, inputs, bat_loss_value)


@pytest.mark.slow
def test_bat_loss_compiled_by_inductor_matches_eager():
    bat = BATLoss(8, left=1, right=2)
    assert_same_step(bat, torch.compile(bat, fullgraph=True), bat_inputs(), bat_loss_value)


def test_encoder_compile_option_compiles_blocks_and_keeps_checkpoint_keys():
    body = {"block_type": "rwkv", "hidden_size": 16, "linear_size": 32, "num_blocks": 2}
    eager = RWKVEncoder(40, [body])
    compiled = RWKVEncoder(40, [{**body, "compile": True}])
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert all(block._compiled_call_impl is not None for block in compiled.blocks)
    assert all(block._compiled_call_impl is None for block in eager.blocks)
    with pytest.raises(ValueError, match=r"compile must be true or false, got 'yes'"):
        RWKVEncoder(40, [{**body, "compile": "yes"}])
