"""RWKV encoder for ESPnet's transducer task.

ESPnet's ``Encoder`` is configured by ``input_conf`` (convolutional
subsampling), ``body_conf`` (a list of blocks) and ``main_conf``. This module
adds ``block_type: rwkv`` bodies:

    encoder_conf:
      input_conf: {vgg_like: true, subsampling_factor: 4}
      body_conf:
      - {block_type: rwkv, hidden_size: 256, linear_size: 1024, num_blocks: 12, dropout_rate: 0.1}

(``compile: true`` in the block compiles each block with ``torch.compile``.)

``build_encoder`` returns ESPnet's own ``Encoder`` for every other body, so
built-in configs build exactly as without the plugin.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from espnet2.asr_transducer.encoder.building import build_input_block
from espnet2.asr_transducer.encoder.encoder import Encoder
from espnet2.asr_transducer.utils import TooShortUttError
from typeguard import typechecked

from espnet_rwkv.asr.encoder_config import check_body, input_block_conf
from espnet_rwkv.asr.receptive_field import receptive_field
from espnet_rwkv.asr.rwkv_block import RWKVBlock, StreamingBlock, initial_block_state
from espnet_rwkv.ops import extension

BLOCK_TYPE = "rwkv"


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
        raise ValueError(f"encoder_conf.body_conf: rwkv blocks cannot be mixed with other block types, got {types}")
    if main_conf:
        raise ValueError(
            "encoder_conf.main_conf does not apply to rwkv bodies (it configures attention "
            f"and chunk masking); remove it. Got keys {sorted(main_conf)}"
        )
    return RWKVEncoder(input_size, body_conf, input_conf)


class RWKVEncoder(Encoder):
    """ESPnet transducer encoder with an RWKV body: subsampling, RWKV blocks, final LayerNorm.

    A subclass of ESPnet's ``Encoder`` so that ESPnet's model, inference and
    packing accept it; it has its own blocks and forward.
    """

    @typechecked
    def __init__(self, input_size: int, body_conf: List[Dict[str, Any]], input_conf: Dict[str, Any] = {}):
        torch.nn.Module.__init__(self)
        hidden, linear, dropout, compile_blocks, num_blocks = check_body(body_conf)
        self.embed = build_input_block(input_size, input_block_conf(input_conf, hidden))
        self.blocks = torch.nn.ModuleList(RWKVBlock(hidden, linear, i, num_blocks, dropout) for i in range(num_blocks))
        self.compiled = compile_blocks
        if compile_blocks:
            for block in self.blocks:
                block.compile(fullgraph=True)  # in place: parameter names and checkpoints unchanged
        self.after_norm = torch.nn.LayerNorm(hidden)
        self.input_size = input_size
        # Input frames that each subsampled frame reads; what streaming must wait for.
        self.receptive_field = receptive_field(self.embed.conv)
        self.min_input_frames = min_input_frames(self.embed)
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
        self._check_frames(x.size(1))
        if not self.training:  # inference: a NaN reaching a beam search would never let it end
            _check_finite_features(x, 0)
        # ESPnet's make_source_mask, sized by the padded input (its lengths.max() is a host sync on CUDA).
        mask = torch.arange(x.size(1), device=x.device)[None, :] >= x_len[:, None]
        x, mask = self.embed(x, mask)
        if self.compiled:  # the kernels load (and build) here: a compiled graph cannot
            extension.usable("wkv", x.device)
        states = states or [None] * len(self.blocks)
        new_states = []
        for block, state in zip(self.blocks, states):
            x, state = block(x, state)
            new_states.append(state)
        return self.after_norm(x), mask.eq(0).sum(1), new_states

    def _check_frames(self, frames: int) -> None:
        if frames < self.min_input_frames:
            raise TooShortUttError(
                f"has {frames} feature frames and is too short for subsampling "
                f"(it needs at least {self.min_input_frames})",
                frames,
                self.min_input_frames,
            )

    # Streaming (docs/streaming.md). Two callers, two protocols:
    # - ``stream_forward``: the exact path (espnet_rwkv.asr.recognizer). Each call
    #   brings only feature frames not given before; outputs equal ``forward``'s.
    # - ``chunk_forward``: ESPnet's ``Speech2Text(streaming=True)``, whose
    #   OnlineAudioProcessor repeats the previous window's last frames at the
    #   start of each window; they are dropped, the rest is streamed.

    def reset_cache(self, left_context: int, device: torch.device) -> None:
        """Start a new stream on ``device``, with the blocks' weights as they are now.

        ``left_context`` (ESPnet's attention window, in encoder frames) does not
        apply: the RWKV state summarizes all of the past in a fixed size.
        """
        self._cache = _StreamCache(
            feats=torch.zeros(1, 0, self.input_size, device=device),
            blocks=[StreamingBlock(block) for block in self.blocks],
            block_states=[initial_block_state(1, self.output_size, device)[0] for _ in self.blocks],
        )

    def stream_forward(self, x: torch.Tensor, is_final: bool) -> torch.Tensor:
        """Next feature frames (1, T_in, F) -> the encoder frames they complete (1, T_out, C).

        Concatenated over a stream, the outputs equal ``forward`` on all the
        features at once (to float rounding). An output frame is returned as
        soon as every input frame that the subsampling reads for it has been
        given (``receptive_field``); ``is_final`` ends the stream and returns
        the frames that read past its end (zero padding, partial pooling), then
        starts a new stream as ``reset_cache`` does.

        Raises:
            TooShortUttError: when ``is_final`` and the whole stream had too few
                frames for the subsampling, as ``forward`` would.
        """
        if self.training:
            raise RuntimeError("RWKVEncoder streaming is for inference: call .eval() first")
        cache = self._stream_cache()
        field = self.receptive_field
        feats = torch.cat([cache.feats, x], dim=1)
        frames_in = cache.frames_in + x.size(1)
        first = cache.frames_out
        if is_final:
            self._check_frames(frames_in)
            end = int(self.embed.get_output_lengths(torch.tensor(frames_in)))
        else:
            # Outputs t with stride*t - pad + size - 1 <= frames_in - 1 are complete.
            end = max(first, (frames_in - field.size + field.pad) // field.stride + 1)

        out = feats.new_zeros(1, 0, self.output_size)
        if end > first:
            base = cache.feats_start // field.stride  # global index of the buffer's output 0
            out, _ = self.embed(feats)
            out = out[:, first - base : end - base]
            if out.size(1) != end - first:
                raise RuntimeError(f"subsampling gave {out.size(1)} frames where {end - first} were due")
            out = out[0]
            for i, block in enumerate(cache.blocks):
                out, cache.block_states[i] = block(out, cache.block_states[i])
            out = self.after_norm(out)[None]

        if is_final:
            self.reset_cache(0, x.device)
            return out
        # Keep the input frames from the stride-aligned start of output end's receptive field.
        start = max(0, (field.stride * end - field.pad) // field.stride * field.stride)
        cache.feats = feats[:, start - cache.feats_start :]
        cache.feats_start, cache.frames_in, cache.frames_out = start, frames_in, end
        return out

    def chunk_forward(
        self,
        x: torch.Tensor,
        x_len: torch.Tensor,
        processed_frames: torch.Tensor,
        left_context: int = 32,
    ) -> torch.Tensor:
        """ESPnet's streaming call: a window (1, T_in, F) from OnlineAudioProcessor -> (1, T_out, C).

        OnlineAudioProcessor starts every window after the first with the last
        ``2 * subsampling_factor + 3`` frames of the window before (all of it
        if shorter); those are dropped and the rest streamed (``stream_forward``).
        ESPnet's windows leave out one feature frame at every boundary and pad
        the final window with zeros, and ESPnet never says which window is the
        final one, so this path cannot be exact: ``espnet_rwkv.asr.recognizer``
        is. ``x_len`` (= T_in), ``processed_frames`` and ``left_context`` are
        not needed.
        """
        cache = self._stream_cache()
        overlap = min(2 * self.embed.subsampling_factor + 3, cache.espnet_window)
        cache.espnet_window = x.size(1)
        _check_finite_features(x[:, overlap:], cache.frames_in)
        return self.stream_forward(x[:, overlap:], is_final=False)

    def streaming_state_nbytes(self) -> int:
        """Bytes carried between chunks: pending input frames and the block states."""
        cache = self._stream_cache()
        return cache.feats.nbytes + sum(state.nbytes for state in cache.block_states)

    def _stream_cache(self) -> "_StreamCache":
        cache = getattr(self, "_cache", None)
        if cache is None:
            raise RuntimeError("RWKVEncoder: call reset_cache(left_context, device) before streaming")
        return cache


def _check_finite_features(x: torch.Tensor, first_frame: int) -> None:
    """Refuse NaN or infinite features (B, T, F), ``first_frame`` the stream index of frame 0."""
    bad = ~torch.isfinite(x).all(dim=-1)  # (B, T)
    if bad.any():
        frame = first_frame + int(bad.any(dim=0).int().argmax())
        raise ValueError(
            f"NaN or infinite features from feature frame {frame} on (samples far outside [-1, 1]?): "
            "no decoding can be trusted from there"
        )


def min_input_frames(embed: torch.nn.Module) -> int:
    """Fewest feature frames from which ESPnet's ``ConvInput`` makes an encoder frame.

    Not ESPnet's ``check_short_utt`` bound, which is off for some subsamplings
    (it refuses 8 to 10 frames that VGG-like subsampling by 6 takes, and
    accepts 3 to 6 that conv2d subsampling by 2 cannot take).
    """
    frames = 1
    while embed.get_output_lengths(torch.tensor(frames)) < 1:
        frames += 1
    return frames


@dataclass
class _StreamCache:
    """What an RWKV encoder carries from one chunk to the next (batch 1)."""

    feats: torch.Tensor  # (1, n, F) input frames not yet consumed, from global frame feats_start
    blocks: List[StreamingBlock]  # the blocks' inference form, weights as at reset_cache
    block_states: List[torch.Tensor]  # per block (5, C)
    feats_start: int = 0  # global index of feats[:, 0]; a multiple of the subsampling stride
    frames_in: int = 0  # input frames received
    frames_out: int = 0  # output frames returned
    espnet_window: int = 0  # length of ESPnet's previous window (chunk_forward only)
