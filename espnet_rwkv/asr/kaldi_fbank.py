"""Kaldi filterbank features as an ESPnet front end (``frontend: kaldi_fbank``).

The features of kaldi-native-fbank's ``OnlineFbank`` with the options that
sherpa-onnx uses (80 bins, 25 ms windows every 10 ms, povey window, no
dither, ``snip_edges: false``, 20 Hz to Nyquist - 400 Hz, log power, samples
in [-1, 1]), computed batched in torch so that training runs them on the GPU.
A model trained on them is deployable with sherpa-onnx, which computes these
features itself (``espnet_rwkv.export_onnx``).

Framing (``snip_edges: false``): ``(S + hop / 2) // hop`` frames of S samples;
frame g reads samples ``g*hop + hop/2 - length/2 ...`` (centred at
``g*hop + hop/2``), reflected at both ends of the utterance (sample -1 is
sample 0, sample S is sample S-1). Per frame: remove the mean, pre-emphasis
0.97, povey window, zero-pad to 512, power spectrum, triangular mel banks on
Kaldi's mel scale, natural log floored at float32 epsilon.

``hop_length``, ``win_sz`` and ``n_fft`` are accepted (and checked) only for
ESPnet's own streaming decoder (``asr_transducer_inference --streaming``),
whose ``OnlineAudioProcessor`` reads them from ``frontend_conf``, with
defaults (128, 512) that do not fit this front end: set
``hop_length: 160, win_sz: 400`` in ``frontend_conf``. With those, its
windows give the feature frames of the whole utterance, each once, in order
(the last frame of each window sees 40 reflected samples at its right end).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import humanfriendly
import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend
from typeguard import typechecked

_WINDOWS = ("povey", "hanning", "hamming", "rectangular")
_FLT_EPSILON = 1.1920928955078125e-07


@dataclass(frozen=True)
class Framing:
    """Frame g of a front end reads samples ``g*hop - lead ... g*hop - lead + length - 1``.

    Samples outside the signal are reflected (or padded) by the front end;
    a signal of ``min_samples`` or more gives it at least one frame.
    """

    hop: int
    lead: int
    length: int
    min_samples: int = 1


def kaldi_mel_banks(
    num_bins: int, fft_size: int, sample_rate: float, low_freq: float, high_freq: float
) -> torch.Tensor:
    """Kaldi's triangular mel filters (non-HTK, no VTLN): (fft_size // 2, num_bins) float64.

    Bin i of the power spectrum (frequency ``i * rate / fft_size``, Nyquist
    excluded) weighs into filter m by its position on the mel scale
    ``1127 ln(1 + f / 700)`` between the filter's edges.
    """
    nyquist = 0.5 * sample_rate
    high = high_freq if high_freq > 0 else nyquist + high_freq
    if not 0 <= low_freq < high <= nyquist:
        raise ValueError(f"kaldi_fbank: need 0 <= low_freq < high_freq <= {nyquist}, got low {low_freq}, high {high}")

    def mel(f):
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float64) / 700.0)

    mel_low, mel_high = mel(low_freq), mel(high)
    delta = (mel_high - mel_low) / (num_bins + 1)
    m = torch.arange(num_bins, dtype=torch.float64)[None, :]
    left, center, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    freq_mel = mel(torch.arange(fft_size // 2, dtype=torch.float64) * sample_rate / fft_size)[:, None]
    up = (freq_mel - left) / (center - left)
    down = (right - freq_mel) / (right - center)
    weights = torch.where(freq_mel <= center, up, down)
    return torch.where((freq_mel > left) & (freq_mel < right), weights, torch.zeros(()))


def _window(kind: str, length: int) -> torch.Tensor:
    i = torch.arange(length, dtype=torch.float64)
    a = 2 * math.pi / (length - 1)
    if kind == "hanning":
        return 0.5 - 0.5 * torch.cos(a * i)
    if kind == "povey":
        return (0.5 - 0.5 * torch.cos(a * i)) ** 0.85
    if kind == "hamming":
        return 0.54 - 0.46 * torch.cos(a * i)
    return torch.ones(length, dtype=torch.float64)


class KaldiFbank(AbsFrontend):
    """Batched Kaldi fbank: speech (B, S) in [-1, 1], lengths (B,) -> log-mel (B, T, num_mel_bins), lengths.

    Args (named as kaldi-native-fbank's ``FbankOptions``; defaults are sherpa-onnx's):
        fs: sample rate (ESPnet's asr.sh passes it); int or "16k".
        num_mel_bins, low_freq, high_freq (<= 0: offset from Nyquist).
        frame_length_ms, frame_shift_ms.
        dither: Gaussian noise scale added to each frame in training only (0: none).
        snip_edges: false (sherpa-onnx): frames centred on hop boundaries, edges reflected;
            true: only frames that fit in the signal.
        preemph_coeff, remove_dc_offset, window_type: the per-frame processing.
        hop_length, win_sz, n_fft: for ESPnet's OnlineAudioProcessor only (module docstring);
            checked against the framing when given.
    """

    @typechecked
    def __init__(
        self,
        fs: Union[int, str] = 16000,
        num_mel_bins: int = 80,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        low_freq: float = 20.0,
        high_freq: float = -400.0,
        dither: float = 0.0,
        snip_edges: bool = False,
        preemph_coeff: float = 0.97,
        remove_dc_offset: bool = True,
        window_type: str = "povey",
        hop_length: Optional[int] = None,
        win_sz: Optional[int] = None,
        n_fft: Optional[int] = None,
    ):
        super().__init__()
        if isinstance(fs, str):
            fs = humanfriendly.parse_size(fs)
        if window_type not in _WINDOWS:
            raise ValueError(f"frontend_conf.window_type must be one of {_WINDOWS}, got {window_type!r}")
        self.fs = fs
        self.num_mel_bins = num_mel_bins
        self.hop = int(round(fs * frame_shift_ms / 1000))
        self.length = int(round(fs * frame_length_ms / 1000))
        self.fft_size = 1 << (self.length - 1).bit_length()  # kaldi's round_to_power_of_two
        self.dither = dither
        self.snip_edges = snip_edges
        self.preemph_coeff = preemph_coeff
        self.remove_dc_offset = remove_dc_offset
        self.low_freq, self.high_freq, self.window_type = low_freq, high_freq, window_type
        for key, value, want in (
            ("hop_length", hop_length, self.hop),
            ("win_sz", win_sz, self.length),
            ("n_fft", n_fft, self.fft_size),
        ):
            if value is not None and value != want:
                raise ValueError(
                    f"frontend_conf.{key}: kaldi_fbank frames are {self.length} samples every {self.hop} "
                    f"(FFT size {self.fft_size}), so {key} must be {want} (it only tells ESPnet's streaming "
                    f"decoder the framing), got {value}"
                )
        self.register_buffer("window", _window(window_type, self.length).float(), persistent=False)
        banks = kaldi_mel_banks(num_mel_bins, self.fft_size, fs, low_freq, high_freq)
        self.register_buffer("mel_banks", banks.float(), persistent=False)

    def output_size(self) -> int:
        return self.num_mel_bins

    @property
    def framing(self) -> Framing:
        """Which samples each frame reads (for exact streaming, ``espnet_rwkv.asr.features``)."""
        if self.snip_edges:
            return Framing(self.hop, 0, self.length, self.length)
        return Framing(self.hop, self.length // 2 - self.hop // 2, self.length, self.hop - self.hop // 2)

    def num_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of signals of ``lengths`` samples."""
        if self.snip_edges:
            return torch.where(lengths >= self.length, (lengths - self.length) // self.hop + 1, 0)
        return (lengths + self.hop // 2) // self.hop

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """speech (B, S) float, lengths (B,) -> features (B, T, num_mel_bins) float32, lengths (B,)."""
        speech = input.float()
        lengths = input_lengths.to(speech.device)
        frames_out = self.num_frames(lengths)
        # Frames of the padded batch (the longest utterance's, as ESPnet pads): from the shape, not
        # frames_out.max(), which is a host sync every step on CUDA.
        T = int(self.num_frames(torch.tensor(speech.size(1))))
        B = speech.size(0)
        if T == 0:
            return speech.new_zeros(B, 0, self.num_mel_bins), frames_out
        lead = self.framing.lead
        # Sample positions the frames read, reflected into each utterance: (B, (T-1)*hop + length).
        pos = torch.arange((T - 1) * self.hop + self.length, device=speech.device) - lead
        pos = pos[None].expand(B, -1)
        size = lengths[:, None].clamp_min(1)
        for _ in range(3):  # kaldi reflects until inside (several times for very short signals)
            pos = torch.where(pos < 0, -pos - 1, pos)
            pos = torch.where(pos >= size, 2 * size - 1 - pos, pos)
        pos = pos.clamp(0, max(speech.size(1) - 1, 0))
        signal = speech.gather(1, pos) if speech.size(1) else speech.new_zeros(pos.shape)
        frames = signal.unfold(1, self.length, self.hop)  # (B, T, length)
        if self.training and self.dither > 0:
            frames = frames + self.dither * torch.randn_like(frames)
        if self.remove_dc_offset:
            frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.preemph_coeff:
            frames = torch.cat(
                [frames[..., :1] * (1 - self.preemph_coeff), frames[..., 1:] - self.preemph_coeff * frames[..., :-1]],
                dim=-1,
            )
        spectrum = torch.fft.rfft(frames * self.window, n=self.fft_size)[..., : self.fft_size // 2]
        power = spectrum.real.square() + spectrum.imag.square()
        feats = torch.matmul(power, self.mel_banks).clamp_min(_FLT_EPSILON).log()
        valid = torch.arange(T, device=feats.device)[None, :] < frames_out[:, None]
        return feats.masked_fill(~valid[..., None], 0.0), frames_out
