"""frontend: kaldi_fbank: sherpa-onnx's features (kaldi-native-fbank), batched in torch; exact streaming with them."""

import kaldi_native_fbank
import numpy as np
import pytest
import torch
from deployable import espeak_speech, make_exp
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask, frontend_choices

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)
from espnet_rwkv.asr.features import ExactAudioProcessor
from espnet_rwkv.asr.kaldi_fbank import KaldiFbank


def knf_features(samples: np.ndarray) -> np.ndarray:
    """kaldi_native_fbank.OnlineFbank with sherpa-onnx's options, whole signal."""
    opts = kaldi_native_fbank.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.mel_opts.num_bins = 80
    opts.mel_opts.high_freq = -400
    fbank = kaldi_native_fbank.OnlineFbank(opts)
    fbank.accept_waveform(16000, samples)
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


@pytest.fixture(scope="module")
def speech(espeak):
    return espeak_speech()


def test_matches_kaldi_native_fbank_on_speech(speech):
    """A padded batch of real speech, several lengths (down to one frame), each as kaldi-native-fbank: <= 1e-3."""
    frontend = KaldiFbank(fs=16000)
    lengths = [speech.size, 12345, 4000, 479, 100]
    batch = torch.zeros(len(lengths), speech.size)
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.from_numpy(speech[:n])
    feats, feat_lengths = frontend(batch, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        want = knf_features(speech[:n])
        assert int(feat_lengths[i]) == want.shape[0], n
        assert np.abs(feats[i, : want.shape[0]].numpy() - want).max() <= 1e-3, n
        assert not feats[i, want.shape[0] :].any()


def test_registered_with_the_transducer_task():
    assert frontend_choices.get_class("kaldi_fbank") is KaldiFbank
    parser = ASRTransducerTask.get_parser()
    args = parser.parse_args(["--frontend", "kaldi_fbank", "--frontend_conf", "num_mel_bins=80"])
    assert args.frontend == "kaldi_fbank"


def test_espnet_streaming_keys_are_checked():
    KaldiFbank(hop_length=160, win_sz=400, n_fft=512)
    with pytest.raises(ValueError, match="frontend_conf.hop_length.*must be 160"):
        KaldiFbank(hop_length=128)
    with pytest.raises(ValueError, match="frontend_conf.win_sz.*must be 400"):
        KaldiFbank(win_sz=512)


@pytest.fixture(scope="module")
def rwkv_exp(tmp_path_factory):
    return make_exp(tmp_path_factory.mktemp("exp") / "asr_rwkv_deployable", blank_bias=1.0)


@pytest.mark.parametrize("piece", [1, 160, 357, 5120])
def test_streamed_features_equal_full_utterance_features(rwkv_exp, speech, piece):
    s2t = Speech2Text(asr_train_config=rwkv_exp / "config.yaml", asr_model_file=rwkv_exp / "model.pth")
    model = s2t.asr_model
    audio = torch.from_numpy(speech[:20000] if piece == 1 else speech)
    with torch.no_grad():
        full, lengths = model._extract_feats(audio[None], torch.tensor([audio.numel()]))
        full, _ = model.normalize(full, lengths)
        processor = ExactAudioProcessor(model)
        pieces = [
            processor(audio[i : i + piece], is_final=i + piece >= audio.numel()) for i in range(0, audio.numel(), piece)
        ]
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", ["tiny_rwkv_bat_deployable.yaml", "tiny_conformer_chunk.yaml"])
def test_espnet_streaming_decode_runs(tmp_path, speech, config):
    """asr.sh stage 12 (asr_transducer_inference --streaming): OnlineAudioProcessor with kaldi_fbank's framing.

    Its windows give every full-utterance feature frame once, in order (hop_length 160, win_sz 400):
    most frames equal, the last of each window sees reflected samples at its right end.
    """
    exp = make_exp(
        tmp_path / "exp",
        config=config,
        blank_bias=1.0,
        frontend="kaldi_fbank",
        frontend_conf={"hop_length": 160, "win_sz": 400},
    )
    s2t = Speech2Text(
        asr_train_config=exp / "config.yaml",
        asr_model_file=exp / "model.pth",
        beam_size=2,
        streaming=True,
        decoding_window=320,
    )
    audio = torch.from_numpy(speech)
    window = s2t.audio_processor.decoding_samples
    processor = s2t.audio_processor
    overlap = 2 * s2t.asr_model.encoder.embed.subsampling_factor + 3
    with torch.no_grad():
        full, lengths = s2t.asr_model._extract_feats(audio[None], torch.tensor([audio.numel()]))
        full, _ = s2t.asr_model.normalize(full, lengths)
        frames, hyps = [], []
        for i, start in enumerate(range(0, audio.numel(), window)):
            is_final = start + window >= audio.numel()
            if not is_final:
                feats, _ = processor.compute_features(audio[start : start + window], is_final=False)
                frames.append(feats[0, overlap if i else 0 :])
        processor.reset_cache()
        for start in range(0, audio.numel(), window):
            hyps = s2t.streaming_decode(audio[start : start + window], is_final=start + window >= audio.numel())
    streamed = torch.cat(frames)
    diff = (streamed - full[0, : streamed.size(0)]).abs().amax(dim=-1)
    assert streamed.size(0) > 0.8 * full.size(1)
    assert (diff < 1e-4).float().mean() > 0.8  # all but the last frame of each window
    assert diff.median() < 1e-4
    assert hyps and s2t.hypotheses_to_results(hyps)[0][0] is not None
