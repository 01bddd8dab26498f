"""RWKV encoder for ESPnet's transducer task.

ESPnet's ``Encoder`` is configured by ``input_conf`` (convolutional
subsampling), ``body_conf`` (a list of blocks) and ``main_conf``. This module
adds ``block_type: rwkv`` bodies:

    encoder_conf:
      input_conf: {vgg_like: true, subsampling_factor: 4}
      body_conf:
      - {block_type: rwkv, hidden_size: 256, linear_size: 1024, num_blocks: 12, dropout_rate: 0.1}

``build_encoder`` returns ESPnet's own ``Encoder`` for every other body, so
built-in configs build exactly as without the plugin.
"""
from typing import Any, Dict, List, Optional, Tuple

import torch
from typeguard import typechecked

from espnet2.asr_transducer.encoder.building import build_input_block
from espnet2.asr_transducer.encoder.encoder import Encoder
from espnet2.asr_transducer.utils import TooShortUttError, check_short_utt, make_source_mask

from espnet_rwkv.asr.rwkv_block import RWKVBlock

BLOCK_TYPE = "rwkv"
_BLOCK_OPTIONS = {"block_type", "hidden_size", "linear_size", "num_blocks", "dropout_rate"}
_INPUT_OPTIONS = {"vgg_like", "subsampling_factor", "conv_size"}
_NO_STREAMING_YET = (
    "streaming decoding of rwkv encoders is not available yet; decode full utterances "
    "(leave out --streaming)"
)


@typechecked
def build_encoder(
    input_size: int,
    body_conf: List[Dict[str, Any]],
    input_conf: Dict[str, Any] = {},
    main_conf: Dict[str, Any] = {},
) -> Encoder:
    """ESPnet's ``Encoder(input_size, **encoder_conf)``, with rwkv bodies added."""
    types = [block.get("block_type") for block in body_conf]
    if BLOCK_TYPE not in types:
        return Encoder(input_size, body_conf, input_conf=input_conf, main_conf=main_conf)
    if set(types) != {BLOCK_TYPE}:
        raise ValueError(
            f"encoder_conf.body_conf: rwkv blocks cannot be mixed with other block types, got {types}"
        )
    if main_conf:
        raise ValueError(
            "encoder_conf.main_conf does not apply to rwkv bodies (it configures attention "
            f"and chunk masking); remove it. Got keys {sorted(main_conf)}"
        )
    return RWKVEncoder(input_size, body_conf, input_conf)


def _check_body(body_conf: List[Dict[str, Any]]) -> Tuple[int, int, float, int]:
    """Validate rwkv body blocks -> (hidden_size, linear_size, dropout_rate, total blocks)."""
    sizes = set()
    total = 0
    for i, block in enumerate(body_conf, start=1):
        unknown = set(block) - _BLOCK_OPTIONS
        if unknown:
            raise ValueError(
                f"encoder_conf.body_conf block {i} (rwkv): unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(_BLOCK_OPTIONS)}"
            )
        if "hidden_size" not in block:
            raise ValueError(f"encoder_conf.body_conf block {i} (rwkv): hidden_size is required")
        hidden = block["hidden_size"]
        sizes.add((hidden, block.get("linear_size", 4 * hidden), block.get("dropout_rate", 0.0)))
        num = block.get("num_blocks", 1)
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"encoder_conf.body_conf block {i} (rwkv): num_blocks must be a positive int, got {num!r}")
        total += num
    if len(sizes) != 1:
        raise ValueError(
            "encoder_conf.body_conf: all rwkv blocks must share hidden_size, linear_size and "
            f"dropout_rate, got {sorted(sizes)}"
        )
    hidden, linear, dropout = sizes.pop()
    return hidden, linear, dropout, total


def _input_block_conf(input_conf: Dict[str, Any], hidden_size: int) -> Dict[str, Any]:
    """ESPnet's ConvInput configuration for an input block feeding ``hidden_size``."""
    unknown = set(input_conf) - _INPUT_OPTIONS
    if unknown:
        raise ValueError(f"encoder_conf.input_conf: unknown option(s) {sorted(unknown)}; allowed: {sorted(_INPUT_OPTIONS)}")
    vgg_like = input_conf.get("vgg_like", False)
    factor = input_conf.get("subsampling_factor", 4)
    allowed = (4, 6) if vgg_like else (2, 4, 6)
    if factor not in allowed:
        raise ValueError(f"encoder_conf.input_conf: subsampling_factor must be one of {allowed}, got {factor}")
    conv_size = input_conf.get("conv_size", (64, 128) if vgg_like else hidden_size)
    if vgg_like and isinstance(conv_size, int):
        conv_size = (conv_size, conv_size)
    return {"vgg_like": vgg_like, "subsampling_factor": factor, "conv_size": conv_size, "output_size": hidden_size}


class RWKVEncoder(Encoder):
    """ESPnet transducer encoder with an RWKV body: subsampling, RWKV blocks, final LayerNorm.

    A subclass of ESPnet's ``Encoder`` so that ESPnet's model, inference and
    packing accept it; it has its own blocks and forward.
    """

    @typechecked
    def __init__(self, input_size: int, body_conf: List[Dict[str, Any]], input_conf: Dict[str, Any] = {}):
        torch.nn.Module.__init__(self)
        hidden, linear, dropout, num_blocks = _check_body(body_conf)
        self.embed = build_input_block(input_size, _input_block_conf(input_conf, hidden))
        self.blocks = torch.nn.ModuleList(
            RWKVBlock(hidden, linear, i, num_blocks, dropout) for i in range(num_blocks)
        )
        self.after_norm = torch.nn.LayerNorm(hidden)
        self.output_size = hidden
        # Read by ESPnet's Speech2Text; an RWKV body is causal, never chunk-masked.
        self.dynamic_chunk_training = False

    def forward(self, x: torch.Tensor, x_len: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Features (B, T_in, F), lengths (B,) -> encoder output (B, T_out, C), lengths (B,).

        The body is causal, so padding at the end of shorter utterances never
        reaches their real frames.
        """
        output, lengths, _ = self.forward_with_state(x, x_len)
        return output, lengths

    def forward_with_state(
        self, x: torch.Tensor, x_len: torch.Tensor, states: Optional[List[torch.Tensor]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """As ``forward``, also taking and returning each block's state (B, 5, C).

        The states are those after the batch's last frame, so they continue an
        unpadded input (B = 1 when streaming), not the shorter utterances of a
        padded batch.
        """
        short, limit = check_short_utt(self.embed.subsampling_factor, x.size(1))
        if short:
            raise TooShortUttError(
                f"has {x.size(1)} frames and is too short for subsampling "
                f"(it needs more than {limit} frames)",
                x.size(1),
                limit,
            )
        x, mask = self.embed(x, make_source_mask(x_len))
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new_states.append(state)
        return self.after_norm(x), mask.eq(0).sum(1), new_states

    def reset_cache(self, left_context: int, device: torch.device) -> None:
        raise NotImplementedError(_NO_STREAMING_YET)

    def chunk_forward(self, *args, **kwargs):
        raise NotImplementedError(_NO_STREAMING_YET)
