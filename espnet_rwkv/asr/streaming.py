"""Chunk-wise streaming decoding of ESPnet transducer models, exact for RWKV encoders.

ESPnet's own streaming path (``Speech2Text.streaming_decode``) cannot be exact:
its ``OnlineAudioProcessor`` leaves one feature frame out at every window
boundary (it restarts the STFT one hop too late) and pads the final window
with zeros. Here, for RWKV encoders:

- ``ExactAudioProcessor`` returns each feature frame once, as soon as the STFT
  window of that frame has all its samples, equal to the frame of
  full-utterance feature extraction; it keeps only the samples that later
  frames still need;
- the encoder's ``stream_forward`` carries the subsampling's pending input
  frames and every block's token-shift and WKV state;
- ESPnet's beam search continues frame by frame from its hypotheses.

So streaming gives the encoder output of full-utterance decoding (to float
rounding) and the same tokens, whatever the window. Other encoders (ESPnet's
chunk conformer) go through ``Speech2Text.streaming_decode`` unchanged.

Latency an RWKV model adds on top of the decoding window: the subsampling
reads ``receptive_field.lookahead`` feature frames past its own (30 ms for
conv2d by 4, 90 ms VGG-like) and the STFT of a frame reads ``n_fft / 2``
samples past the frame's centre (16 ms at n_fft 512, 16 kHz).
"""
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

import torch
from typeguard import typechecked

from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.layers.global_mvn import GlobalMVN
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.kaldi_fbank import Framing, KaldiFbank

SAMPLE_RATE = 16000
# Labels of the common prefix left in each hypothesis (StreamingRecognizer._shorten_history).
KEEP_LABELS = 8
_PREFERRED_CHECKPOINTS = ("valid.loss.ave.pth", "valid.loss.best.pth")


class ExactAudioProcessor:
    """Streamed features equal to the model's full-utterance features.

    Frame g of a centred STFT (hop h, n_fft N) reads samples
    ``h*g - N/2 ... h*g + N/2 - 1``; reflection padding applies only before
    sample 0 and after the last sample (frame 0's left reflection reads sample
    N/2). A frame is returned once its samples are in, or at the end of the
    stream. The model's feature extractor runs on
    a buffer starting at a frame boundary ``m = ceil(N/2 / h)`` frames before
    the next frame due, so its left padding never reaches a returned frame.

    Args:
        model: ESPnet transducer model with a ``DefaultFrontend`` (its
            multi-channel enhancement never runs on mono audio) or a
            ``kaldi_fbank`` front end (its own framing, ``Framing``), and
            ``global_mvn`` or no normalization (per-utterance normalization
            cannot stream exactly).
    """

    @typechecked
    def __init__(self, model: torch.nn.Module):
        frontend = model.frontend
        if model.normalize is not None and not isinstance(model.normalize, GlobalMVN):
            raise ValueError(
                f"exact streaming needs global_mvn or no normalization, got {type(model.normalize).__name__} "
                "(it depends on the whole utterance)"
            )
        framing = _framing(frontend)
        self.model = model
        self.hop = framing.hop
        # Frame g reads samples hop*g - pad ... hop*g - pad + n_fft - 1.
        self.n_fft = framing.length
        self.pad = framing.lead
        self.min_samples = framing.min_samples
        self.margin = -(-self.pad // self.hop)
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.samples = torch.zeros(0)
        self.samples_start = 0  # global index of samples[0]; a multiple of hop
        self.frames_out = 0

    def __call__(self, samples: torch.Tensor, is_final: bool) -> torch.Tensor:
        """Next samples (S,) float -> the feature frames they complete (1, T, F), normalized.

        ``is_final`` ends the stream (the last frames, with end padding) and
        starts a new one.
        """
        buf = torch.cat([self.samples, samples.to(self.samples.dtype)])
        total = self.samples_start + buf.numel()
        base = self.samples_start // self.hop  # global index of the buffer's frame 0
        first = self.frames_out
        if is_final:
            feats = self._features(buf) if buf.numel() >= self.min_samples else None
            end = base + (feats.size(1) if feats is not None else 0)
        else:
            end = max(first, (total + self.pad - self.n_fft) // self.hop + 1)
            if buf.numel() < self.min_samples:  # e.g. frame 0's reflection padding reads sample n_fft / 2
                end = first
            feats = self._features(buf) if end > first else None
        if feats is None:
            feats = torch.zeros(1, 0, self.model.frontend.output_size(), device=self._device())
        feats = feats[:, first - base: end - base]
        if is_final:
            self.reset()
            return feats
        start = max(0, end - self.margin) * self.hop
        self.samples = buf[start - self.samples_start:]
        self.samples_start, self.frames_out = start, end
        return feats

    def _features(self, samples: torch.Tensor) -> torch.Tensor:
        """(S,) -> (1, T, F): the model's front end and normalization."""
        speech = samples[None].to(self._device())
        lengths = torch.tensor([speech.size(1)], device=speech.device)
        feats, lengths = self.model._extract_feats(speech, lengths)
        if self.model.normalize is not None:
            feats, _ = self.model.normalize(feats, lengths)
        return feats

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def state_nbytes(self) -> int:
        """Bytes of audio carried between calls."""
        return self.samples.nbytes


def _framing(frontend) -> Framing:
    """Which samples each feature frame reads: a kaldi_fbank front end says; DefaultFrontend's STFT."""
    if isinstance(frontend, KaldiFbank):
        return frontend.framing
    if not isinstance(frontend, DefaultFrontend) or frontend.stft is None:
        raise ValueError(f"exact streaming needs ESPnet's DefaultFrontend with an STFT or kaldi_fbank, got {frontend!r}")
    stft = frontend.stft
    pad = stft.n_fft // 2 if stft.center else 0
    return Framing(stft.hop_length, pad, stft.n_fft, pad + 1)


@dataclass
class Partial:
    """The best hypothesis after a decoding window."""

    end_s: float  # audio decoded so far, seconds
    text: str
    token_int: List[int]
    score: float  # its log probability
    compute_s: float  # time spent on this window
    is_final: bool


class StreamingRecognizer:
    """Decode audio chunk by chunk with a ``Speech2Text(streaming=True, decoding_window=...)``.

    Audio is decoded every ``decoding_window`` ms. RWKV encoders take the exact
    path (module docstring); any other encoder goes through ESPnet's
    ``Speech2Text.streaming_decode``.
    """

    @typechecked
    def __init__(self, speech2text: Speech2Text):
        if not speech2text.streaming:
            raise ValueError("StreamingRecognizer needs a Speech2Text built with streaming=True")
        self.speech2text = speech2text
        self.window = speech2text.audio_processor.decoding_samples
        self.exact = isinstance(speech2text.asr_model.encoder, RWKVEncoder)
        self.features = ExactAudioProcessor(speech2text.asr_model) if self.exact else None
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.pending = torch.zeros(0)
        self.samples_done = 0
        self.hyps = []
        self.committed = []  # labels every hypothesis shares, taken out of their yseq
        self.speech2text.reset_streaming_cache()
        if self.exact:
            self.features.reset()

    def accept(self, samples: torch.Tensor) -> List[Partial]:
        """Audio samples (S,) float at 16 kHz -> one Partial per decoding window completed."""
        _check_samples(samples)
        self.pending = torch.cat([self.pending, samples.float()])
        partials = []
        while self.pending.numel() >= self._next_window():
            size = self._next_window()
            window, self.pending = self.pending[:size], self.pending[size:]
            partials.append(self._decode(window, is_final=False))
        return partials

    def _next_window(self) -> int:
        """Samples of the next decoding window.

        ESPnet's chunk conformer fails ("invalid storage offset -1") on a
        first window that leaves it no encoder frame (160 ms with subsampling
        by 4: it trims the first and last subsampled frame of every window);
        on ESPnet's path the first window is two windows long.
        """
        return self.window * (2 if not self.exact and self.samples_done == 0 else 1)

    def finish(self) -> Partial:
        """Decode the rest of the stream -> the final best hypothesis; then start a new stream."""
        partial = self._decode(self.pending, is_final=True)
        self.reset()
        return partial

    def _decode(self, window: torch.Tensor, is_final: bool) -> Partial:
        start = time.perf_counter()
        with torch.inference_mode():
            if is_final:  # the final sort (score_norm) and the caller see whole label sequences
                self._restore_history()
            if self.exact:
                self._decode_exact(window, is_final)
            else:
                self.hyps = self.speech2text.streaming_decode(window, is_final=is_final)
            if not is_final:
                self._shorten_history()
            text, token_int, score = "", [], 0.0
            if self.hyps:  # none before the first encoder frame
                best = self.hyps[0] if is_final else max(self.hyps, key=lambda hyp: hyp.score)
                best = dataclasses.replace(best, yseq=best.yseq[:1] + self.committed + best.yseq[1:])
                text, _, token_int, _ = self.speech2text.hypotheses_to_results([best])[0]
                score = best.score
        self.samples_done += window.numel()
        return Partial(
            self.samples_done / SAMPLE_RATE, text or "", token_int, score, time.perf_counter() - start, is_final
        )

    def _decode_exact(self, window: torch.Tensor, is_final: bool) -> None:
        s2t = self.speech2text
        feats = self.features(window, is_final)
        enc_out = s2t.asr_model.encoder.stream_forward(feats, is_final)
        if enc_out.size(1) or is_final:
            self.hyps = s2t.beam_search(enc_out[0], is_final=is_final)

    def _shorten_history(self) -> None:
        """Keep each hypothesis's label sequence short, so that a window's cost does not grow.

        ESPnet's beam search copies a hypothesis's whole label sequence at every
        expansion, and its decoders key a cache of their outputs by the whole
        sequence ("0_5_9") and keep every prefix ever scored: per frame, work and
        memory would grow with the transcript. All live hypotheses extend one
        common prefix, and the default search without an LM reads only the
        last label and the decoder state, so that prefix (less ``KEEP_LABELS``)
        moves to ``self.committed``: the same hypotheses and scores. The
        decoder's cache keeps the outputs of live hypotheses only.
        """
        search = self.speech2text.beam_search
        hyps = search.search_cache or []
        cut = 0
        if hyps and search.search_algorithm == search.default_beam_search and not search.use_lm:
            first = hyps[0].yseq
            common = min(len(hyp.yseq) for hyp in hyps) - 1
            for hyp in hyps[1:]:
                common = next((i for i in range(common) if hyp.yseq[1 + i] != first[1 + i]), common)
            cut = max(common - KEEP_LABELS, 0)
            self.committed += first[1: 1 + cut]
        self._rewrite_label_sequences(lambda yseq: yseq[:1] + yseq[1 + cut:])

    def _restore_history(self) -> None:
        """Put ``self.committed`` back in front of every hypothesis's labels."""
        committed, self.committed = self.committed, []
        self._rewrite_label_sequences(lambda yseq: yseq[:1] + committed + yseq[1:])

    def _rewrite_label_sequences(self, rewrite) -> None:
        """yseq = rewrite(yseq) for the live hypotheses; the decoder's cached outputs of
        those, and only those, stay, under their new keys."""
        decoder = self.speech2text.asr_model.decoder
        old = getattr(decoder, "score_cache", None)
        cache = {}
        for hyp in self.speech2text.beam_search.search_cache or []:
            key = "_".join(map(str, hyp.yseq))
            hyp.yseq = rewrite(hyp.yseq)
            if old and key in old:
                cache["_".join(map(str, hyp.yseq))] = old[key]
        if old is not None:
            decoder.score_cache = cache

    @property
    def state_nbytes(self) -> int:
        """Bytes of audio, feature frames and encoder state carried between windows (RWKV only)."""
        if not self.exact:
            raise ValueError("state_nbytes is only known for the exact (RWKV) path")
        return self.pending.nbytes + self.features.state_nbytes + self.speech2text.asr_model.encoder.streaming_state_nbytes()


def _check_samples(samples: torch.Tensor) -> None:
    if samples.dim() != 1:
        raise ValueError(f"audio must be mono samples (S,), got shape {tuple(samples.shape)}")
    if not samples.is_floating_point():
        raise TypeError(f"audio samples must be float, got {samples.dtype}")
    bad = (~torch.isfinite(samples)).nonzero()
    if bad.numel():
        raise ValueError(f"audio has {bad.numel()} NaN or infinite samples (first at sample {int(bad[0])})")


@typechecked
def load_speech2text(
    model: Union[str, Path],
    decoding_window: int,
    model_file: Optional[Union[str, Path]] = None,
    **kwargs,
) -> Speech2Text:
    """A streaming ``Speech2Text`` from a packed model (asr.sh's zip) or a recipe's exp dir.

    Args:
        model: a ``.zip`` from ``espnet2.bin.pack`` or an ``exp/asr_*`` dir with
            ``config.yaml`` and checkpoints (paths in its config are relative to
            the recipe dir, two levels up).
        decoding_window: ms of audio per decoding step.
        model_file: checkpoint of an exp dir; default ``valid.loss.ave.pth``,
            then ``valid.loss.best.pth``, then its only ``*.pth``.
        kwargs: more ``Speech2Text`` options (``beam_size``, ``left_context``, ...).
    """
    model = Path(model)
    kwargs.update(streaming=True, decoding_window=decoding_window)
    if model.is_file() and model.suffix == ".zip":
        return Speech2Text.from_pretrained(model_tag=str(model), **kwargs)
    if not (model / "config.yaml").is_file():
        raise FileNotFoundError(f"{model}: neither a packed model (.zip) nor an exp dir with config.yaml")
    model = model.resolve()
    model_file = Path(model_file).resolve() if model_file else _checkpoint(model)
    with contextlib.chdir(model.parents[1]):
        return Speech2Text(asr_train_config=model / "config.yaml", asr_model_file=model_file, **kwargs)


def _checkpoint(exp_dir: Path) -> Path:
    for name in _PREFERRED_CHECKPOINTS:
        if (exp_dir / name).is_file():
            return exp_dir / name
    found = sorted(exp_dir.glob("*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{exp_dir}: no {' or '.join(_PREFERRED_CHECKPOINTS)}, and {len(found)} other *.pth "
            f"({[p.name for p in found]}); name one with --model_file"
        )
    return found[0]
