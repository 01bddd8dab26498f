"""Streamed features equal to full-utterance feature extraction (docs/streaming.md).

ESPnet's ``OnlineAudioProcessor`` (its ``Speech2Text.streaming_decode`` path)
leaves one feature frame out at every window boundary (it restarts the STFT one
hop too late) and pads the final window with zeros. ``ExactAudioProcessor``
returns each feature frame once, as soon as the STFT window of that frame has
all its samples, equal to the frame of full-utterance feature extraction; it
keeps only the samples that later frames still need.
"""

import torch
from espnet2.asr.frontend.default import DefaultFrontend
from espnet2.layers.global_mvn import GlobalMVN
from typeguard import typechecked

from espnet_rwkv.asr.kaldi_fbank import Framing, KaldiFbank


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
        feats = feats[:, first - base : end - base]
        if is_final:
            self.reset()
            return feats
        start = max(0, end - self.margin) * self.hop
        self.samples = buf[start - self.samples_start :]
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
        raise ValueError(
            f"exact streaming needs ESPnet's DefaultFrontend with an STFT or kaldi_fbank, got {frontend!r}"
        )
    stft = frontend.stft
    pad = stft.n_fft // 2 if stft.center else 0
    return Framing(stft.hop_length, pad, stft.n_fft, pad + 1)
