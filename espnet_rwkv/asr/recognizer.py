"""Chunk-wise streaming decoding of ESPnet transducer models, exact for RWKV encoders (docs/streaming.md).

ESPnet's own streaming path (``Speech2Text.streaming_decode``) cannot be exact:
its ``OnlineAudioProcessor`` leaves one feature frame out at every window
boundary and pads the final window with zeros. Here, for RWKV encoders:

- ``ExactAudioProcessor`` (espnet_rwkv.asr.features) returns each feature frame
  once, equal to the frame of full-utterance feature extraction;
- the encoder's ``stream_forward`` carries the subsampling's pending input
  frames and every block's token-shift and WKV state;
- ESPnet's beam search continues frame by frame from its hypotheses, their
  shared label prefix kept out of it between windows (espnet_rwkv.asr.beam_history).

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
from espnet2.bin.asr_transducer_inference import Speech2Text
from typeguard import typechecked

from espnet_rwkv.asr.beam_history import LabelHistory
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.features import ExactAudioProcessor

SAMPLE_RATE = 16000
_PREFERRED_CHECKPOINTS = ("valid.loss.ave.pth", "valid.loss.best.pth")


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
        if not self.exact:
            # Measured with subsampling by 4 (hop 10 ms): a window of 80 ms fails, 84 ms and more decode.
            least = 2 * speech2text.asr_model.encoder.embed.subsampling_factor * speech2text.audio_processor.hop_sz
            if self.window <= least:
                raise ValueError(
                    f"ESPnet's streaming path ({type(speech2text.asr_model.encoder).__name__}) needs a decoding "
                    f"window (--chunk_ms) over {1000 * least / SAMPLE_RATE:g} ms, "
                    f"got {1000 * self.window / SAMPLE_RATE:g} ms"
                )
        self.history = LabelHistory(speech2text)  # shortened between windows (beam_history)
        self.features = ExactAudioProcessor(speech2text.asr_model) if self.exact else None
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self.pending = torch.zeros(0)
        self.samples_done = 0
        self.hyps = []
        self.history.reset()
        self.speech2text.reset_streaming_cache()
        if self.exact:
            self.features.reset()

    def accept(self, samples: torch.Tensor) -> List[Partial]:
        """Audio samples (S,) float at 16 kHz -> one Partial per decoding window completed."""
        _check_samples(samples)
        self.pending = torch.cat([self.pending, samples.float()])
        partials = []
        with self._reset_on_error():
            while self.pending.numel() >= self._next_window():
                size = self._next_window()
                window, self.pending = self.pending[:size], self.pending[size:]
                partials.append(self._decode(window, is_final=False))
        return partials

    @contextlib.contextmanager
    def _reset_on_error(self):
        """A stream that failed is over: the next audio starts a new one (no stale audio or hypotheses)."""
        try:
            yield
        except BaseException:
            self.reset()
            raise

    def _next_window(self) -> int:
        """Samples of the next decoding window.

        ESPnet's chunk conformer fails ("invalid storage offset -1") on a
        first window that leaves it no encoder frame (160 ms with subsampling
        by 4: it trims the first and last subsampled frame of every window);
        on ESPnet's path the first window is two windows long.
        """
        return self.window * (2 if not self.exact and self.samples_done == 0 else 1)

    def finish(self) -> Partial:
        """Decode the rest of the stream -> the final best hypothesis; then (also on error) start a new stream."""
        with self._reset_on_error():
            partial = self._decode(self.pending, is_final=True)
        self.reset()
        return partial

    def _decode(self, window: torch.Tensor, is_final: bool) -> Partial:
        start = time.perf_counter()
        with torch.inference_mode():
            if is_final:  # the final sort (score_norm) and the caller see whole label sequences
                self.history.restore()
            if self.exact:
                self._decode_exact(window, is_final)
            else:
                self.hyps = self.speech2text.streaming_decode(window, is_final=is_final)
            if not is_final:
                self.history.shorten()
            text, token_int, score = "", [], 0.0
            if self.hyps:  # none before the first encoder frame
                best = self.hyps[0] if is_final else max(self.hyps, key=lambda hyp: hyp.score)
                best = dataclasses.replace(best, yseq=self.history.full(best.yseq))
                text, _, token_int, _ = self.speech2text.hypotheses_to_results([best])[0]
                score = best.score
        self.samples_done += window.numel()
        return Partial(
            self.samples_done / SAMPLE_RATE, text or "", token_int, score, time.perf_counter() - start, is_final
        )

    def _decode_exact(self, window: torch.Tensor, is_final: bool) -> None:
        s2t = self.speech2text
        feats = self.features(window, is_final)
        self._check_finite(feats, "features", window)
        enc_out = s2t.asr_model.encoder.stream_forward(feats, is_final)
        # ESPnet's beam search never ends on NaN scores: refuse them before it.
        self._check_finite(enc_out, "encoder outputs", window)
        if enc_out.size(1) or is_final:
            self.hyps = s2t.beam_search(enc_out[0], is_final=is_final)

    def _check_finite(self, values: torch.Tensor, what: str, window: torch.Tensor) -> None:
        if not torch.isfinite(values).all():
            start = self.samples_done / SAMPLE_RATE
            raise ValueError(
                f"NaN or infinite {what} in the window {start:.2f} s to {start + window.numel() / SAMPLE_RATE:.2f} s "
                "(samples far outside [-1, 1]?)"
            )

    @property
    def state_nbytes(self) -> int:
        """Bytes of audio, feature frames and encoder state carried between windows (RWKV only)."""
        if not self.exact:
            raise ValueError("state_nbytes is only known for the exact (RWKV) path")
        return (
            self.pending.nbytes
            + self.features.state_nbytes
            + self.speech2text.asr_model.encoder.streaming_state_nbytes()
        )


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
