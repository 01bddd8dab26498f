"""RWKV-4 encoder block: time-mix (token shift + WKV) and channel-mix.

Block (arXiv 2305.13048; used for ASR in arXiv 2309.14758):
    x = x + TimeMix(LN1(x));  x = x + ChannelMix(LN2(x))
Both mixers read the previous frame ("token shift"); with the WKV state that
is everything a block carries from one chunk to the next, a fixed
(B, 5, C) per block whatever the audio length.
"""

from typing import Optional, Tuple

import torch
from torch import nn

from espnet_rwkv.asr.recomputed import mix_project, squared_relu_project
from espnet_rwkv.ops import wkv
from espnet_rwkv.ops.wkv import empty_state
from espnet_rwkv.ops.wkv.chunk import wkv_chunk, wkv_chunk_masks

# Block state layout along dim 1: [time-mix x_prev, wkv a, wkv b, wkv p, channel-mix x_prev].
STATE_ROWS = 5


def initial_block_state(batch: int, size: int, device=None) -> torch.Tensor:
    """State before the first frame, (B, 5, C) float32: zero shifts, empty WKV."""
    shift = torch.zeros(batch, 1, size, device=device)
    return torch.cat([shift, empty_state(batch, size, device), shift], dim=1)


def _channel_ramp(size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float32) / size


class TimeMix(nn.Module):
    """RWKV time-mix: out = W_o(sigmoid(r) * wkv(k, v)), k/v/r from token-shifted input."""

    def __init__(self, size: int, block_id: int, num_blocks: int):
        super().__init__()
        depth = block_id / max(num_blocks - 1, 1)  # 0 at the first block, 1 at the last
        shallow = 1.0 - block_id / num_blocks  # 1 at the first block, towards 0
        ramp = _channel_ramp(size)
        channel = torch.arange(size, dtype=torch.float32) / max(size - 1, 1)
        # RWKV-4 init: decay rates spread from slow to fast across channels,
        # faster in deeper blocks; bonus log(0.3) with a small zigzag.
        self.time_decay = nn.Parameter(-5 + 8 * channel ** (0.7 + 1.3 * depth))
        zigzag = ((torch.arange(size) + 1) % 3 - 1).float() * 0.5
        self.time_first = nn.Parameter(torch.full((size,), torch.log(torch.tensor(0.3)).item()) + zigzag)
        self.mix_k = nn.Parameter(ramp**shallow)
        self.mix_v = nn.Parameter(ramp**shallow + 0.3 * depth)
        self.mix_r = nn.Parameter(ramp ** (0.5 * shallow))
        self.key = nn.Linear(size, size, bias=False)
        self.value = nn.Linear(size, size, bias=False)
        self.receptance = nn.Linear(size, size, bias=False)
        self.output = nn.Linear(size, size, bias=False)
        nn.init.zeros_(self.output.weight)  # each block starts as identity on the residual path

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor, wkv_state: torch.Tensor):
        """x (B, T, C); x_prev (B, C); wkv_state (B, 3, C) -> out (B, T, C), new x_prev, new wkv_state.

        The token-shift mixes are recomputed in backward (``mix_project``), not kept.
        """
        mixes = torch.stack([self.mix_k, self.mix_v, self.mix_r])
        k, v, r = mix_project(x, x_prev, mixes, [self.key.weight, self.value.weight, self.receptance.weight])
        mixed, wkv_state = wkv(self.time_decay, self.time_first, k, v, wkv_state)
        return self.output(torch.sigmoid(r) * mixed), x[:, -1].float(), wkv_state


class ChannelMix(nn.Module):
    """RWKV channel-mix: sigmoid(W_r xr) * W_v(relu(W_k xk)^2)."""

    def __init__(self, size: int, linear_size: int, block_id: int, num_blocks: int):
        super().__init__()
        shallow = 1.0 - block_id / num_blocks
        ramp = _channel_ramp(size)
        self.mix_k = nn.Parameter(ramp**shallow)
        self.mix_r = nn.Parameter(ramp**shallow)
        self.key = nn.Linear(size, linear_size, bias=False)
        self.receptance = nn.Linear(size, size, bias=False)
        self.value = nn.Linear(linear_size, size, bias=False)
        nn.init.zeros_(self.value.weight)

    def forward(self, x: torch.Tensor, x_prev: torch.Tensor):
        """x (B, T, C); x_prev (B, C) -> out (B, T, C), new x_prev.

        The mixes and relu(k)^2 are recomputed in backward (``mix_project``,
        ``squared_relu_project``): the block keeps k, not relu(k) and relu(k)^2.
        """
        mixes = torch.stack([self.mix_k, self.mix_r])
        k, r = mix_project(x, x_prev, mixes, [self.key.weight, self.receptance.weight])
        return torch.sigmoid(r) * squared_relu_project(k, self.value.weight), x[:, -1].float()


class RWKVBlock(nn.Module):
    """One RWKV-4 block with pre-norm residuals and dropout on each branch.

    Args:
        size: model dimension C.
        linear_size: channel-mix hidden dimension.
        block_id: index of this block (0-based), for the depth-dependent init.
        num_blocks: number of blocks in the stack.
        dropout_rate: dropout on each branch output.
    """

    def __init__(self, size: int, linear_size: int, block_id: int, num_blocks: int, dropout_rate: float = 0.0):
        super().__init__()
        self.size = size
        self.norm_time = nn.LayerNorm(size)
        self.norm_channel = nn.LayerNorm(size)
        self.time_mix = TimeMix(size, block_id, num_blocks)
        self.channel_mix = ChannelMix(size, linear_size, block_id, num_blocks)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C); state (B, 5, C) float32 from the previous chunk or None -> (y, new state)."""
        if state is None:
            state = initial_block_state(x.size(0), self.size, x.device)
        out, time_prev, wkv_state = self.time_mix(self.norm_time(x), state[:, 0], state[:, 1:4])
        x = x + self.dropout(out)
        out, channel_prev = self.channel_mix(self.norm_channel(x), state[:, 4])
        x = x + self.dropout(out)
        return x, torch.cat([time_prev[:, None], wkv_state, channel_prev[:, None]], dim=1)


class StreamingBlock:
    """Inference-only form of an ``RWKVBlock`` for short chunks of one stream.

    Same function as ``RWKVBlock.forward`` in eval mode (to float rounding),
    in about a third of the operator calls, which is what a chunk of a few
    frames costs on a CPU: time-mix's three token-shift mixes are one
    ``addcmul`` and its k, v, r one ``bmm``; channel-mix's two mixes one
    ``addcmul``; WKV over a chunk of T frames is one (T+1, T, C) masked
    weighting (``wkv_chunk``) instead of the op's chunked scan; no module
    calls, no dropout, no autograd.

    The weights are taken when this is built: build it again after the
    parameters change (``RWKVEncoder.reset_cache`` does, once per stream).

    Args:
        block: the block to mirror.
    """

    def __init__(self, block: RWKVBlock):
        tm, cm = block.time_mix, block.channel_mix
        with torch.no_grad():
            self.time_mix = torch.stack([tm.mix_k, tm.mix_v, tm.mix_r])[:, None, :]  # (3, 1, C)
            self.time_in = torch.stack([tm.key.weight.t(), tm.value.weight.t(), tm.receptance.weight.t()])  # (3, C, C)
            self.time_out = tm.output.weight.t().contiguous()  # (C, C)
            self.channel_mix = torch.stack([cm.mix_k, cm.mix_r])[:, None, :]  # (2, 1, C)
            self.channel_key = cm.key.weight.t().contiguous()  # (C, H)
            self.channel_receptance = cm.receptance.weight.t().contiguous()  # (C, C)
            self.channel_out = cm.value.weight.t().contiguous()  # (H, C)
            self.decay = -torch.exp(tm.time_decay.float())
            self.bonus = tm.time_first.float().clone()
        self.norm_time = block.norm_time
        self.norm_channel = block.norm_channel
        self.size = block.size
        self._wkv_masks = {}

    def __call__(self, x: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (T, C) float32, T >= 1; state (5, C) -> (y (T, C), new state (5, C)); layout of ``RWKVBlock``."""
        C = self.size
        norm = self.norm_time
        h = torch.nn.functional.layer_norm(x, (C,), norm.weight, norm.bias, norm.eps)
        shifted = torch.cat([state[:1], h[:-1]])
        k, v, r = torch.bmm(torch.addcmul(shifted, self.time_mix, h - shifted), self.time_in)
        mixed, wkv_state = wkv_chunk(k, v, state[1:4], *self._masks(x.size(0)))
        x = torch.addmm(x, torch.sigmoid(r) * mixed, self.time_out)

        norm = self.norm_channel
        g = torch.nn.functional.layer_norm(x, (C,), norm.weight, norm.bias, norm.eps)
        shifted = torch.cat([state[4:], g[:-1]])
        xk, xr = torch.addcmul(shifted, self.channel_mix, g - shifted)
        hidden = torch.relu(xk @ self.channel_key).square()
        x = torch.addcmul(x, torch.sigmoid(xr @ self.channel_receptance), hidden @ self.channel_out)
        return x, torch.cat([h[-1:], wkv_state, g[-1:]])

    def _masks(self, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if T not in self._wkv_masks:
            self._wkv_masks[T] = wkv_chunk_masks(self.decay, self.bonus, T)
        return self._wkv_masks[T]
