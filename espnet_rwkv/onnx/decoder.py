"""Streaming transducer decoding of exported ONNX files with numpy, onnxruntime and kaldi-native-fbank only.

The same computation as sherpa-onnx's ``lstm`` online transducer
(``espnet_rwkv.onnx.export``): kaldi fbank frames; an encoder window of ``T``
frames once more than ``T`` frames past the last window's start are ready,
advancing by ``decode_chunk_len``; greedy search (at most one label per
encoder frame, blank 0) or modified beam search (``max_active_paths``
hypotheses, label sequences merged, best by log probability per label). At
the end of a stream, ``tail_padding_s`` of silence is appended (as
sherpa-onnx's examples do) so that the last window covers the last frame.

Imports neither torch nor ESPnet, so it runs where only these three are
installed.
"""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import kaldi_native_fbank as knf
import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16000
SPACE = "\u2581"
REQUIRED = ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt")


class OnnxModelError(ValueError):
    """A model dir that lacks a file or whose files do not fit together."""


@dataclass
class Partial:
    """The best hypothesis after a chunk (fields of ``espnet_rwkv.asr.recognizer.Partial``)."""

    end_s: float
    text: str
    token_int: List[int]
    score: float
    compute_s: float
    is_final: bool


def model_files(model_dir: Union[str, Path], int8: bool = False) -> Dict[str, Path]:
    """Paths of encoder/decoder/joiner (``*.int8.onnx`` with ``int8``) and tokens.txt; a clear error if absent."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise OnnxModelError(f"{model_dir}: not a directory (export one with python -m espnet_rwkv.export_onnx)")
    names = {name: name.replace(".onnx", ".int8.onnx") if int8 else name for name in REQUIRED}
    missing = [names[n] for n in REQUIRED if not (model_dir / names[n]).is_file()]
    if missing:
        raise OnnxModelError(
            f"{model_dir}: missing {', '.join(missing)} (python -m espnet_rwkv.export_onnx writes "
            f"encoder/decoder/joiner.onnx and tokens.txt{', and *.int8.onnx with --int8' if int8 else ''})"
        )
    return {name: model_dir / names[name] for name in REQUIRED}


def read_tokens(path: Path) -> List[str]:
    """tokens.txt (``symbol id`` per line) -> symbols by id."""
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise OnnxModelError(f"{path}:{number}: expected 'symbol id', got {line!r}")
        table[int(parts[1])] = parts[0]
    if sorted(table) != list(range(len(table))):
        raise OnnxModelError(f"{path}: ids must be 0..{len(table) - 1}")
    return [table[i] for i in range(len(table))]


def tokens_to_text(symbols: Sequence[str]) -> str:
    """sherpa-onnx's text: symbols concatenated, ``<unk>`` left out, U+2581 read as a space."""
    return "".join(s.replace(SPACE, " ") for s in symbols if s != "<unk>").strip()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class OnnxTransducer:
    """The three sessions of an exported model, its metadata and tokens.

    Args:
        model_dir: export_onnx's output dir.
        int8: use the ``*.int8.onnx`` files.
        threads: onnxruntime intra-op threads per session.
    """

    def __init__(self, model_dir: Union[str, Path], int8: bool = False, threads: int = 1):
        files = model_files(model_dir, int8)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.encoder, self.decoder, self.joiner = (
            ort.InferenceSession(str(files[name]), options, providers=["CPUExecutionProvider"])
            for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx")
        )
        meta = self.encoder.get_modelmeta().custom_metadata_map
        try:
            self.layers = int(meta["num_encoder_layers"])
            self.T = int(meta["T"])
            self.chunk = int(meta["decode_chunk_len"])
            self.d_model = int(meta["d_model"])
            self.hidden = int(meta["rnn_hidden_size"])
            dmeta = self.decoder.get_modelmeta().custom_metadata_map
            self.vocab_size = int(dmeta["vocab_size"])
            self.context_size = int(dmeta["context_size"])
        except KeyError as e:
            raise OnnxModelError(
                f"{model_dir}: metadata {e} missing; not an espnet_rwkv / sherpa-onnx lstm export"
            ) from None
        self.feature_dim = int(meta.get("feature_dim", 80))
        self.tokens = read_tokens(files["tokens.txt"])
        if len(self.tokens) != self.vocab_size:
            raise OnnxModelError(
                f"{model_dir}: tokens.txt has {len(self.tokens)} tokens, the decoder {self.vocab_size}"
            )
        self.x_name = self.encoder.get_inputs()[0].name

    def initial_states(self) -> Tuple[np.ndarray, np.ndarray]:
        return (
            np.zeros((self.layers, 1, self.d_model), np.float32),
            np.zeros((self.layers, 1, self.hidden), np.float32),
        )

    def encode(self, x: np.ndarray, h: np.ndarray, c: np.ndarray):
        """x (1, T, F) -> encoder_out (1, T', J), next states."""
        names = [i.name for i in self.encoder.get_inputs()]
        return self.encoder.run(None, dict(zip(names, (x, h, c))))

    def decode(self, contexts: np.ndarray) -> np.ndarray:
        """(N, context_size) int64 -> (N, J)."""
        return self.decoder.run(None, {self.decoder.get_inputs()[0].name: contexts})[0]

    def join(self, encoder_out: np.ndarray, decoder_out: np.ndarray) -> np.ndarray:
        """(N, J), (N, J) -> logits (N, V)."""
        names = [i.name for i in self.joiner.get_inputs()]
        return self.joiner.run(None, {names[0]: encoder_out, names[1]: decoder_out})[0]


def fbank_options(feature_dim: int = 80) -> "knf.FbankOptions":
    """sherpa-onnx's feature options."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = feature_dim
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    return opts


class OnnxStreamingRecognizer:
    """Feed 16 kHz float samples in [-1, 1]; get the best hypothesis after each decoding chunk.

    Args:
        model: an ``OnnxTransducer``.
        decoding_method: "greedy_search" or "modified_beam_search".
        max_active_paths: hypotheses kept by modified beam search.
        tail_padding_s: silence appended at the end of each stream (None: enough for the
            last window to cover the last frame).
    """

    def __init__(
        self,
        model: OnnxTransducer,
        decoding_method: str = "greedy_search",
        max_active_paths: int = 4,
        tail_padding_s: Optional[float] = None,
    ):
        if decoding_method not in ("greedy_search", "modified_beam_search"):
            raise ValueError(f"decoding_method must be greedy_search or modified_beam_search, got {decoding_method!r}")
        self.model = model
        self.method = decoding_method
        self.max_active_paths = max_active_paths
        frames = model.T + model.chunk + 1
        self.tail_padding = int(round((tail_padding_s if tail_padding_s is not None else frames / 100) * SAMPLE_RATE))
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.fbank = knf.OnlineFbank(fbank_options(self.model.feature_dim))
        self.processed = 0  # feature frames the windows have moved past
        self.samples = 0
        self.h, self.c = self.model.initial_states()
        blank = [0] * self.model.context_size
        self.hyps: Dict[Tuple[int, ...], float] = {tuple(blank): 0.0}  # label sequence -> log prob
        self.decoder_out = None  # greedy: decoder output of the best sequence

    def accept(self, samples: np.ndarray) -> List[Partial]:
        """Samples (S,) float32 -> one Partial per encoder window decoded (may be none)."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be mono samples (S,), got shape {samples.shape}")
        start = time.perf_counter()
        self.fbank.accept_waveform(SAMPLE_RATE, samples)
        self.samples += samples.size
        partials = self._run(is_final=False)
        if partials:
            partials[0].compute_s += time.perf_counter() - start - sum(p.compute_s for p in partials)
        return partials

    def finish(self) -> Partial:
        """Tail padding, the remaining windows -> the final best hypothesis; then a new stream."""
        start = time.perf_counter()
        self.fbank.accept_waveform(SAMPLE_RATE, np.zeros(self.tail_padding, np.float32))
        self.fbank.input_finished()
        self._run(is_final=True)
        best = self._best()
        partial = Partial(
            self.samples / SAMPLE_RATE,
            self._text(best),
            list(best[self.model.context_size :]),
            self.hyps[best],
            time.perf_counter() - start,
            True,
        )
        self.reset()
        return partial

    def _run(self, is_final: bool) -> List[Partial]:
        partials = []
        m = self.model
        while self.processed + m.T < self.fbank.num_frames_ready:  # sherpa-onnx's IsReady
            start = time.perf_counter()
            x = np.stack([self.fbank.get_frame(self.processed + i) for i in range(m.T)])[None].astype(np.float32)
            self.fbank.pop(m.chunk)  # frames before the next window (absolute indices stay)
            self.processed += m.chunk
            encoder_out, self.h, self.c = m.encode(x, self.h, self.c)
            if self.method == "greedy_search":
                self._greedy(encoder_out[0])
            else:
                self._beam(encoder_out[0])
            best = self._best()
            partials.append(
                Partial(
                    min(self.processed * 0.01, self.samples / SAMPLE_RATE),
                    self._text(best),
                    list(best[m.context_size :]),
                    self.hyps[best],
                    time.perf_counter() - start,
                    False,
                )
            )
        return partials

    def _greedy(self, encoder_out: np.ndarray) -> None:
        m = self.model
        ((ys, score),) = self.hyps.items()
        ys = list(ys)
        if self.decoder_out is None:
            self.decoder_out = m.decode(np.array([ys[-m.context_size :]], np.int64))
        for t in range(encoder_out.shape[0]):
            logits = m.join(encoder_out[t : t + 1], self.decoder_out)[0]
            y = int(logits.argmax())
            score += float(_log_softmax(logits)[y])
            if y != 0:
                ys.append(y)
                self.decoder_out = m.decode(np.array([ys[-m.context_size :]], np.int64))
        self.hyps = {tuple(ys): score}

    def _beam(self, encoder_out: np.ndarray) -> None:
        m = self.model
        for t in range(encoder_out.shape[0]):
            prev = list(self.hyps.items())
            contexts = np.array([ys[-m.context_size :] for ys, _ in prev], np.int64)
            decoder_out = m.decode(contexts)
            logp = _log_softmax(m.join(np.repeat(encoder_out[t : t + 1], len(prev), axis=0), decoder_out))
            logp += np.array([score for _, score in prev], np.float32)[:, None]
            flat = logp.reshape(-1)
            k = min(self.max_active_paths, flat.size)
            top = np.argpartition(-flat, k - 1)[:k]
            top = top[np.argsort(-flat[top], kind="stable")]
            hyps: Dict[Tuple[int, ...], float] = {}
            for i in top:
                index, token = divmod(int(i), m.vocab_size)
                ys = prev[index][0] + ((token,) if token != 0 else ())
                score = float(flat[i])
                hyps[ys] = float(np.logaddexp(hyps[ys], score)) if ys in hyps else score
            self.hyps = hyps

    def _best(self) -> Tuple[int, ...]:
        if self.method == "greedy_search":
            return next(iter(self.hyps))
        return max(self.hyps, key=lambda ys: self.hyps[ys] / len(ys))  # sherpa-onnx: length-normalized

    def _text(self, ys: Sequence[int]) -> str:
        return tokens_to_text([self.model.tokens[i] for i in ys[self.model.context_size :]])


def decode_samples(recognizer: OnnxStreamingRecognizer, samples: np.ndarray, chunk: int) -> Partial:
    """Stream ``samples`` in pieces of ``chunk`` -> the final Partial."""
    for start in range(0, samples.size, chunk):
        recognizer.accept(samples[start : start + chunk])
    return recognizer.finish()


def chunk_ms(model: OnnxTransducer) -> int:
    """The decoding window of an export (``decode_chunk_len`` frames of 10 ms)."""
    return model.chunk * 10
