"""Export an ESPnet RWKV transducer to the three ONNX files of sherpa-onnx's ``lstm`` online model.

sherpa-onnx (``online-lstm-transducer-model.cc``) runs

- ``encoder.onnx``: ``x`` (N, T, F) kaldi fbank frames, ``h`` (L, N, d_model),
  ``c`` (L, N, rnn_hidden_size) -> ``encoder_out`` (N, T', J), ``next_h``,
  ``next_c``; it starts from all-zero states, stacks streams along axis 1, feeds
  windows of ``T`` frames and moves on by ``decode_chunk_len`` frames;
- ``decoder.onnx``: ``y`` (N, context_size) int64 last labels (blank 0 before the
  first) -> ``decoder_out`` (N, J);
- ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) -> ``logit`` (N, V),

and reads ``num_encoder_layers``, ``T``, ``decode_chunk_len``, ``d_model``,
``rnn_hidden_size`` from the encoder's metadata, ``vocab_size`` and
``context_size`` from the decoder's. Here:

- an RWKV block's state (5, C) is ``h``: the time-mix token shift (C), and ``c``:
  WKV a, b, p and the channel-mix token shift (4C). An all-zero WKV state is the
  empty state: a = b = 0 carries no mass whatever p (the graph reads p as
  ``EMPTY_P`` where b = 0; b >= 1 once a frame has been seen, since the
  state is kept relative to its largest exponent);
- the encoder graph holds GlobalMVN, the convolutional subsampling, the blocks,
  the final LayerNorm and the joint network's encoder projection; a window of
  ``T = decode_chunk_len + lookahead`` frames gives exactly the
  ``decode_chunk_len / subsampling`` full-utterance encoder frames of its first
  ``decode_chunk_len`` frames (the subsampling must read no frame before its
  own: ``vgg_like: false``);
- the decoder graph is the stateless decoder (ESPnet's ``stateless``: the last
  label; the plugin's ``stateless_context``: the last ``context_size`` labels)
  with the joint network's decoder projection; the joiner adds, applies the
  joint activation and the output layer.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from espnet2.asr_transducer.decoder.stateless_decoder import StatelessDecoder
from espnet2.layers.global_mvn import GlobalMVN

import espnet_rwkv.espnet  # registers the plugin: the model loads through ESPnet
from espnet_rwkv.asr.context_decoder import ContextDecoder
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.kaldi_fbank import KaldiFbank
from espnet_rwkv.asr.rwkv_block import RWKVBlock
from espnet_rwkv.ops.wkv import EMPTY_P
from espnet_rwkv.ops.wkv.chunk import wkv_chunk_masks

OPSET = 17
SPACE = "\u2581"  # sherpa-onnx reads a leading U+2581 of a token as a space
ONNX_FILES = ("encoder.onnx", "decoder.onnx", "joiner.onnx")
# The features sherpa-onnx computes (its FeatureExtractor and OnlineRecognizer defaults).
SHERPA_FBANK = {
    "fs": 16000,
    "hop": 160,
    "length": 400,
    "snip_edges": False,
    "low_freq": 20.0,
    "high_freq": -400.0,
    "preemph_coeff": 0.97,
    "remove_dc_offset": True,
    "window_type": "povey",
}


class NotExportableError(ValueError):
    """A model that sherpa-onnx's streaming transducer cannot run; says which config key to change."""


@dataclass(frozen=True)
class ChunkGeometry:
    """Encoder windows in feature frames.

    ``T`` frames are read, ``decode_chunk_len`` advanced; ``T - decode_chunk_len`` is the lookahead.
    """

    decode_chunk_len: int
    T: int
    subsampling: int

    @property
    def out_frames(self) -> int:
        return self.decode_chunk_len // self.subsampling


def check_exportable(model: torch.nn.Module) -> None:
    """Raise ``NotExportableError`` naming the config key and the value to use."""
    frontend = model.frontend
    if not isinstance(frontend, KaldiFbank):
        raise NotExportableError(
            f"frontend: {type(frontend).__name__} computes other features than sherpa-onnx; train with "
            "`frontend: kaldi_fbank` (and `frontend_conf: {hop_length: 160, win_sz: 400}`)"
        )
    got = {
        "fs": frontend.fs,
        "hop": frontend.hop,
        "length": frontend.length,
        "snip_edges": frontend.snip_edges,
        "low_freq": frontend.low_freq,
        "high_freq": frontend.high_freq,
        "preemph_coeff": frontend.preemph_coeff,
        "remove_dc_offset": frontend.remove_dc_offset,
        "window_type": frontend.window_type,
    }
    bad = {key: value for key, value in got.items() if value != SHERPA_FBANK[key]}
    if bad:
        raise NotExportableError(
            f"frontend_conf: sherpa-onnx computes kaldi fbank with {SHERPA_FBANK}; this model has {bad} "
            "(remove those keys from frontend_conf to get sherpa-onnx's values)"
        )
    if model.normalize is not None and not isinstance(model.normalize, GlobalMVN):
        raise NotExportableError(
            f"normalize: {type(model.normalize).__name__} depends on the whole utterance and cannot stream; "
            "use `normalize: global_mvn` (or none)"
        )
    if not isinstance(model.encoder, RWKVEncoder):
        raise NotExportableError(
            f"encoder_conf.body_conf: only `block_type: rwkv` encoders export, got {type(model.encoder).__name__}"
        )
    if model.encoder.receptive_field.pad:
        raise NotExportableError(
            "encoder_conf.input_conf.vgg_like: true pads the subsampling on the left, so a window of sherpa-onnx "
            "cannot give the full-utterance frames; use `vgg_like: false`"
        )
    if not isinstance(model.decoder, (StatelessDecoder, ContextDecoder)):
        raise NotExportableError(
            f"decoder: {type(model.decoder).__name__} keeps a recurrent state that sherpa-onnx's transducer "
            "decoder interface (the last context_size labels) cannot carry; use `decoder: stateless_context`"
        )


def chunk_geometry(encoder: RWKVEncoder, chunk_ms: int) -> ChunkGeometry:
    """Window of ``chunk_ms`` ms of encoder input (10 ms frames)."""
    field = encoder.receptive_field
    if chunk_ms <= 0 or chunk_ms % 10:
        raise ValueError(f"--chunk_ms must be a positive multiple of 10 ms (one feature frame), got {chunk_ms}")
    length = chunk_ms // 10
    if length % field.stride:
        raise ValueError(
            f"--chunk_ms {chunk_ms}: the chunk of {length} frames must be a multiple of the subsampling factor "
            f"{field.stride} (e.g. {field.stride * 10 * max(1, round(length / field.stride))} ms)"
        )
    return ChunkGeometry(length, length + field.lookahead, field.stride)


def _block_weights(block: RWKVBlock) -> Dict[str, torch.Tensor]:
    tm, cm = block.time_mix, block.channel_mix
    return {
        "time_mix": torch.stack([tm.mix_k, tm.mix_v, tm.mix_r])[:, None, None, :],  # (3, 1, 1, C)
        # (3, 1, C, C): one batched MatMul for k, v, r
        "time_in": torch.stack([tm.key.weight.t(), tm.value.weight.t(), tm.receptance.weight.t()])[:, None],
        "time_out": tm.output.weight.t(),
        "channel_mix": torch.stack([cm.mix_k, cm.mix_r])[:, None, None, :],  # (2, 1, 1, C)
        "channel_key": cm.key.weight.t(),
        "channel_receptance": cm.receptance.weight.t(),
        "channel_out": cm.value.weight.t(),
    }


def wkv_batched(k, v, a, b, p, frames, carried):
    """WKV of a batch of chunks: k, v (..., N, t, C); state a, b, p (..., N, 1, C); masks of ``wkv_chunk_masks``.

    ``wkv_chunk``'s weighting, batched, in as few graph nodes as it takes (each costs
    onnxruntime about a microsecond a chunk). A state with b = 0 (all zeros: sherpa-onnx's
    initial state) is the empty one whatever p: p is read as ``EMPTY_P`` there, so that
    frames with u + k far below 0 keep their relative weights (next to a finite p they underflow).
    Unlike ``wkv_chunk`` no weight is floored at e^-80: every exponent is taken relative to
    its row's maximum, so the smallest only underflow to 0.
    Returns y (..., N, t, C) and the new a, b, p (..., N, 1, C).
    """
    p = torch.where(b > 0, p, EMPTY_P)
    e_frames = k.unsqueeze(-3) + frames  # (..., N, t+1, t, C)
    e_state = p + carried  # (..., N, t+1, C)
    q = torch.maximum(e_frames.amax(dim=-2), e_state)
    weight = torch.exp(e_frames - q.unsqueeze(-2))
    weight_state = torch.exp(e_state - q)
    num = (weight * v.unsqueeze(-3)).sum(dim=-2) + weight_state * a
    den = weight.sum(dim=-2) + weight_state * b
    t = frames.size(1)  # of a constant: folded at export
    return (num / den).narrow(-2, 0, t), num.narrow(-2, t, 1), den.narrow(-2, t, 1), q.narrow(-2, t, 1)


class _ExportBlock(torch.nn.Module):
    """One RWKV block over a batch of chunks of ``t`` frames (``StreamingBlock``'s math, batched).

    Tensors carry a leading axis of 1 so that the three time-mix projections are one
    batched MatMul whose Split feeds the WKV without reshapes.
    """

    def __init__(self, block: RWKVBlock, t: int):
        super().__init__()
        with torch.no_grad():
            for name, value in _block_weights(block).items():
                self.register_buffer(name, value.detach().float().clone())
            frames, carried = wkv_chunk_masks(
                -torch.exp(block.time_mix.time_decay.float()), block.time_mix.time_first.float(), t
            )
        self.register_buffer("frames", frames)  # (t+1, t, C)
        self.register_buffer("carried", carried)  # (t+1, C)
        self.norm_time = block.norm_time
        self.norm_channel = block.norm_channel
        self.size = block.size
        self.t = t

    def forward(self, x, h, c):
        """x (1, N, t, C); h (1, N, 1, C) time-mix shift; c (1, N, 1, 4C) a, b, p, channel-mix shift -> new x, h, c."""
        a, b, p, shift_channel = c.split(self.size, dim=-1)
        hn = self.norm_time(x)
        t = self.t
        shifted = torch.cat([h, hn.narrow(-2, 0, t - 1)], dim=-2)
        mixed = shifted + self.time_mix * (hn - shifted)  # (3, N, t, C)
        k, v, r = torch.matmul(mixed, self.time_in).split(1)
        wkv, a, b, p = wkv_batched(k, v, a, b, p, self.frames, self.carried)
        x = x + torch.matmul(torch.sigmoid(r) * wkv, self.time_out)

        g = self.norm_channel(x)
        shifted = torch.cat([shift_channel, g.narrow(-2, 0, t - 1)], dim=-2)
        xk, xr = (shifted + self.channel_mix * (g - shifted)).split(1)
        hidden = torch.relu(torch.matmul(xk, self.channel_key))
        gate = torch.sigmoid(torch.matmul(xr, self.channel_receptance))
        x = x + gate * torch.matmul(hidden * hidden, self.channel_out)
        return x, hn.narrow(-2, t - 1, 1), torch.cat([a, b, p, g.narrow(-2, t - 1, 1)], dim=-1)


class EncoderGraph(torch.nn.Module):
    """sherpa-onnx's encoder: (x (N, T, F), h (L, N, C), c (L, N, 4C)) -> (encoder_out (N, T', J), next_h, next_c)."""

    def __init__(self, model: torch.nn.Module, geometry: ChunkGeometry):
        super().__init__()
        encoder = model.encoder
        normalize = model.normalize
        dim = model.frontend.output_size()
        mean, std = torch.zeros(dim), torch.ones(dim)
        if normalize is not None:
            if normalize.norm_means:
                mean = normalize.mean.detach().float().clone()
            if normalize.norm_vars:
                std = normalize.std.detach().float().clone()
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)
        self.embed = encoder.embed
        self.blocks = torch.nn.ModuleList(_ExportBlock(block, geometry.out_frames) for block in encoder.blocks)
        self.after_norm = encoder.after_norm
        self.projection = model.joint_network.lin_enc
        self.geometry = geometry

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        x = (x - self.mean) * self.inv_std
        out, _ = self.embed(x)
        out = out[None, :, : self.geometry.out_frames]  # (1, N, t, C)
        # One Split per state for all blocks; each block's state stays (1, N, 1, *).
        states = zip(h.unsqueeze(2).split(1), c.unsqueeze(2).split(1))
        next_h, next_c = [], []
        for block, (h_block, c_block) in zip(self.blocks, states):
            out, h_block, c_block = block(out, h_block, c_block)
            next_h.append(h_block)
            next_c.append(c_block)
        encoder_out = self.projection(self.after_norm(out[0]))
        return encoder_out, torch.cat(next_h)[:, :, 0], torch.cat(next_c)[:, :, 0]


def context_size(decoder: torch.nn.Module) -> int:
    """Labels the stateless decoder reads (sherpa-onnx's ``context_size``)."""
    return decoder.context_size if isinstance(decoder, ContextDecoder) else 1


class DecoderGraph(torch.nn.Module):
    """sherpa-onnx's decoder: y (N, context_size) int64 -> decoder_out (N, J)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.decoder = model.decoder
        self.projection = model.joint_network.lin_dec

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        # sherpa-onnx starts a stream from the context [-1, ..., -1, blank]: -1 is "no label", which the
        # decoder reads as blank (both have the zero embedding).
        return self.projection(self.decoder(y.clamp(min=0))[:, -1])


class JoinerGraph(torch.nn.Module):
    """sherpa-onnx's joiner: (encoder_out (N, J), decoder_out (N, J)) -> logit (N, V)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.activation = model.joint_network.joint_activation
        self.output = model.joint_network.lin_out

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.output(self.activation(encoder_out + decoder_out))


def sherpa_tokens(token_list: List[str]) -> str:
    """tokens.txt of sherpa-onnx: ``symbol id`` per line; ESPnet's ``<space>`` becomes U+2581 (a space)."""
    lines = []
    for i, token in enumerate(token_list):
        token = SPACE if token == "<space>" else token
        if not token or any(ch.isspace() for ch in token):
            raise NotExportableError(f"token_list: token {i} ({token!r}) is empty or has white space")
        lines.append(f"{token} {i}")
    return "\n".join(lines) + "\n"


def _add_metadata(path: Path, meta: Dict[str, object]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(model, str(path))


def _export(
    module: torch.nn.Module,
    args: Tuple,
    path: Path,
    inputs: List[str],
    outputs: List[str],
    dynamic_axes: Dict[str, Dict[int, str]],
) -> None:
    torch.onnx.export(
        module,
        args,
        str(path),
        input_names=inputs,
        output_names=outputs,
        dynamic_axes=dynamic_axes,
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )


def export_model(
    model: torch.nn.Module,
    token_list: List[str],
    output_dir: Union[str, Path],
    chunk_ms: int = 320,
    int8: bool = False,
    model_kind: str = "rwkv_transducer",
) -> Dict[str, Path]:
    """Write encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt (and ``*.int8.onnx``) -> their paths."""
    check_exportable(model)
    model = model.eval()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    geometry = chunk_geometry(encoder, chunk_ms)
    L, C = len(encoder.blocks), encoder.output_size
    feat_dim = model.frontend.output_size()
    joint_dim = model.joint_network.lin_enc.out_features
    vocab = model.joint_network.lin_out.out_features
    if vocab != len(token_list):
        raise NotExportableError(f"token_list has {len(token_list)} tokens, the joint network {vocab} outputs")

    paths = {name: output_dir / name for name in ONNX_FILES}
    with torch.no_grad():
        x = torch.zeros(1, geometry.T, feat_dim)
        h, c = torch.zeros(L, 1, C), torch.zeros(L, 1, 4 * C)
        _export(
            EncoderGraph(model, geometry).eval(),
            (x, h, c),
            paths["encoder.onnx"],
            ["x", "h", "c"],
            ["encoder_out", "next_h", "next_c"],
            {
                "x": {0: "N"},
                "h": {1: "N"},
                "c": {1: "N"},
                "encoder_out": {0: "N"},
                "next_h": {1: "N"},
                "next_c": {1: "N"},
            },
        )
        _export(
            DecoderGraph(model).eval(),
            (torch.zeros(1, context_size(model.decoder), dtype=torch.int64),),
            paths["decoder.onnx"],
            ["y"],
            ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}},
        )
        _export(
            JoinerGraph(model).eval(),
            (torch.zeros(1, joint_dim), torch.zeros(1, joint_dim)),
            paths["joiner.onnx"],
            ["encoder_out", "decoder_out"],
            ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}},
        )
    common = {"espnet_rwkv_version": espnet_rwkv.__version__, "model_kind": model_kind}
    metadata = {
        "encoder.onnx": {
            "model_type": "lstm",
            "num_encoder_layers": L,
            "T": geometry.T,
            "decode_chunk_len": geometry.decode_chunk_len,
            "d_model": C,
            "rnn_hidden_size": 4 * C,
            "subsampling_factor": geometry.subsampling,
            "feature_dim": feat_dim,
            "sample_rate": model.frontend.fs,
            "state_layout": "h: time-mix shift; c: wkv a, b, p, channel-mix shift",
            **common,
        },
        "decoder.onnx": {"vocab_size": vocab, "context_size": context_size(model.decoder), **common},
        "joiner.onnx": {"joiner_dim": joint_dim, **common},
    }
    for name, meta in metadata.items():
        _add_metadata(paths[name], meta)
    paths["tokens.txt"] = output_dir / "tokens.txt"
    paths["tokens.txt"].write_text(sherpa_tokens(token_list), encoding="utf-8")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for name in ONNX_FILES:
            target = output_dir / name.replace(".onnx", ".int8.onnx")
            quantize_dynamic(str(paths[name]), str(target), weight_type=QuantType.QInt8)
            _add_metadata(target, metadata[name])
            paths[target.name] = target
    logging.info(f"exported {sorted(p.name for p in paths.values())} to {output_dir} ({geometry})")
    return paths


def load_model(model: Union[str, Path], model_file: Optional[Union[str, Path]] = None):
    """(ESPnet transducer model, token list) of a packed zip or an exp dir (as ``espnet_rwkv.stream``)."""
    from espnet_rwkv.asr.recognizer import load_speech2text

    speech2text = load_speech2text(model, 320, model_file=model_file, beam_size=1, device="cpu")
    return speech2text.asr_model.eval(), list(speech2text.asr_model.token_list)
