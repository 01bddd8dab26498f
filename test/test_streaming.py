"""Streaming decoding: RWKV streams exactly like full-utterance decoding; ESPnet's path still runs.

Models have random weights (no training), with the RWKV blocks' zero-initialized
output projections randomized too so that every block state matters.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from espnet2.asr_transducer.utils import TooShortUttError
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401
from espnet_rwkv import stream
from espnet_rwkv.asr import beam_history
from espnet_rwkv.asr.encoder import RWKVEncoder
from espnet_rwkv.asr.features import ExactAudioProcessor
from espnet_rwkv.asr.recognizer import StreamingRecognizer, load_speech2text
from espnet_rwkv.asr.rwkv_block import RWKVBlock, StreamingBlock, initial_block_state
from espnet_rwkv.ops import wkv
from espnet_rwkv.ops.wkv import empty_state
from espnet_rwkv.ops.wkv.chunk import wkv_chunk, wkv_chunk_masks
from espnet_rwkv.ops.wkv.reference import wkv_reference

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "test" / "conf"
TOKENS = ["<blank>", "<unk>", "A", "B", "C", "<sos/eos>"]
RATE = 16000


def make_exp_dir(path: Path, config: Path, input_conf=None) -> Path:
    """A recipe-like exp dir (config.yaml, model.pth, global MVN stats) of a random-weight model."""
    path.mkdir(parents=True)
    (path / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        [
            "--config",
            str(config),
            "--token_list",
            str(path / "tokens.txt"),
            "--token_type",
            "char",
            "--output_dir",
            str(path),
        ]
    )
    if input_conf is not None:
        args.encoder_conf["input_conf"] = input_conf
    n_mels = args.frontend_conf["n_mels"]
    g = np.random.default_rng(0)
    mean = g.normal(-6.0, 1.0, n_mels)
    np.savez(path / "stats.npz", count=np.array(100.0), sum=100 * mean, sum_square=100 * (mean**2 + 4.0))
    args.normalize, args.normalize_conf = "global_mvn", {"stats_file": str(path / "stats.npz")}
    torch.manual_seed(0)
    model = ASRTransducerTask.build_model(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("time_mix.output.weight", "channel_mix.value.weight")):
                torch.nn.init.normal_(p, std=p.size(1) ** -0.5)
        # Sharper joint scores that lean on the prediction network: the random model emits a few
        # tokens (blank wins almost everywhere otherwise), and the beam search stays cheap.
        model.joint_network.lin_out.weight *= 2.0
        model.joint_network.lin_dec.weight *= 8.0
    (path / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.save(model.state_dict(), path / "model.pth")
    return path


def full_features(model, audio: torch.Tensor) -> torch.Tensor:
    """Normalized features (1, T, F) of the whole utterance, as full-utterance decoding makes them."""
    with torch.no_grad():
        feats, lengths = model._extract_feats(audio[None], torch.tensor([audio.numel()]))
        return model.normalize(feats, lengths)[0]


def speech_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Noise under a syllable-rate envelope with a moving tone: features that change over time."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * RATE)) / RATE
    envelope = (1 + torch.sin(2 * torch.pi * 3.1 * t)) ** 2
    tone = torch.sin(2 * torch.pi * (300 + 200 * torch.sin(2 * torch.pi * 0.7 * t)) * t)
    return 0.05 * envelope * (torch.randn(t.numel(), generator=g) + 2 * tone)


@pytest.fixture(scope="module")
def rwkv_exp(tmp_path_factory):
    return make_exp_dir(tmp_path_factory.mktemp("exp") / "asr_rwkv", CONF / "tiny_rwkv.yaml")


@pytest.fixture(scope="module")
def rwkv_conv2d_exp(tmp_path_factory):
    """The demo's subsampling (conv2d by 4, no padding) instead of the tiny config's VGG-like one."""
    conf = {"vgg_like": False, "subsampling_factor": 4, "conv_size": 16}
    return make_exp_dir(tmp_path_factory.mktemp("exp") / "asr_rwkv_conv2d", CONF / "tiny_rwkv.yaml", conf)


@pytest.fixture(scope="module")
def conformer_exp(tmp_path_factory):
    return make_exp_dir(tmp_path_factory.mktemp("exp") / "asr_conformer", CONF / "tiny_conformer_chunk.yaml")


def full_speech2text(exp: Path) -> Speech2Text:
    return Speech2Text(asr_train_config=exp / "config.yaml", asr_model_file=exp / "model.pth", beam_size=2)


def stream_all(recognizer: StreamingRecognizer, audio: torch.Tensor, piece: int):
    """Feed audio in pieces of ``piece`` samples -> (partials, final)."""
    partials = []
    for start in range(0, audio.numel(), piece):
        partials += recognizer.accept(audio[start : start + piece])
    return partials, recognizer.finish()


@pytest.mark.parametrize(
    "input_conf,expected",
    [
        ({"vgg_like": False, "subsampling_factor": 4, "conv_size": 16}, (4, 0, 7, 3)),
        ({"vgg_like": True, "subsampling_factor": 4, "conv_size": [8, 16]}, (4, 3, 16, 9)),
    ],
)
def test_receptive_field_is_what_the_subsampling_reads(input_conf, expected):
    conf = yaml.safe_load((CONF / "tiny_rwkv.yaml").read_text())["encoder_conf"]
    encoder = RWKVEncoder(40, conf["body_conf"], {**input_conf}).eval()
    field = encoder.receptive_field
    assert (field.stride, field.pad, field.size, field.lookahead) == expected
    x = torch.randn(1, 80, 40)
    base, _ = encoder.embed(x)
    t = 8
    first, last = field.stride * t - field.pad, field.stride * t - field.pad + field.size - 1
    for frame in range(80):
        bumped = x.clone()
        bumped[0, frame] += 1.0
        changed = not torch.equal(encoder.embed(bumped)[0][0, t], base[0, t])
        assert changed == (first <= frame <= last), frame


@pytest.mark.parametrize("T", [1, 3, 8, 33])
@pytest.mark.parametrize("key_scale", [1.0, 30.0])
def test_wkv_chunk_matches_reference(T, key_scale):
    """From the empty state and from a carried one; large keys stay finite."""
    g = torch.Generator().manual_seed(T)
    C = 16
    decay, bonus = torch.randn(C, generator=g), torch.randn(C, generator=g)
    k, v = key_scale * torch.randn(2, 1, T, C, generator=g)
    _, carried = wkv(decay, bonus, key_scale * torch.randn(1, 5, C, generator=g), torch.randn(1, 5, C, generator=g))
    masks = wkv_chunk_masks(-torch.exp(decay), bonus, T)
    for state in (empty_state(1, C), carried):
        y, got = wkv_chunk(k[0], v[0], state[0], *masks)
        ref_y, want = wkv_reference(decay, bonus, k, v, state)
        torch.testing.assert_close(y.double(), ref_y[0], rtol=1e-5, atol=1e-5)
        # The state is (a, b, p) up to a common scale: compare a / b and log(b) + p.
        want = want[0].float()
        torch.testing.assert_close(got[0] / got[1], want[0] / want[1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got[1].log() + got[2], want[1].log() + want[2], rtol=1e-5, atol=1e-4)


def test_streaming_block_equals_block():
    torch.manual_seed(0)
    block = RWKVBlock(24, 40, block_id=1, num_blocks=3).eval()
    torch.nn.init.normal_(block.time_mix.output.weight, std=0.3)
    torch.nn.init.normal_(block.channel_mix.value.weight, std=0.3)
    x = torch.randn(1, 21, 24)
    with torch.no_grad():
        full, full_state = block(x)
        fast = StreamingBlock(block)
        state = initial_block_state(1, 24)[0]
        outs = []
        for start, end in ((0, 1), (1, 9), (9, 21)):
            out, state = fast(x[0, start:end], state)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs), full[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state[[0, 4]], full_state[0, [0, 4]])
    torch.testing.assert_close(state[1] / state[2], full_state[0, 1] / full_state[0, 2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vgg_like", [True, False])
@pytest.mark.parametrize("frames", [7, 8, 61, 203])
def test_stream_forward_equals_forward(vgg_like, frames):
    conf = yaml.safe_load((CONF / "tiny_rwkv.yaml").read_text())["encoder_conf"]
    input_conf = {"vgg_like": vgg_like, "subsampling_factor": 4, "conv_size": [8, 16] if vgg_like else 16}
    torch.manual_seed(0)
    encoder = RWKVEncoder(40, conf["body_conf"], input_conf).eval()
    for block in encoder.blocks:
        torch.nn.init.normal_(block.time_mix.output.weight, std=0.2)
        torch.nn.init.normal_(block.channel_mix.value.weight, std=0.2)
    x = torch.randn(1, frames, 40)
    with torch.no_grad():
        full, _ = encoder(x, torch.tensor([frames]))
        for piece in (1, 3, 4, 17, 1000):
            encoder.reset_cache(0, torch.device("cpu"))
            outs = [encoder.stream_forward(x[:, s : s + piece], is_final=False) for s in range(0, frames, piece)]
            outs.append(encoder.stream_forward(x[:, :0], is_final=True))
            torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-5, atol=1e-5)


def test_stream_forward_too_short_is_an_error():
    conf = yaml.safe_load((CONF / "tiny_rwkv.yaml").read_text())["encoder_conf"]
    encoder = RWKVEncoder(40, conf["body_conf"], conf["input_conf"]).eval()
    encoder.reset_cache(0, torch.device("cpu"))
    assert encoder.stream_forward(torch.randn(1, 5, 40), is_final=False).shape == (1, 0, 32)
    with pytest.raises(
        TooShortUttError, match=r"has 6 feature frames and is too short for subsampling \(it needs at least 7\)"
    ):
        encoder.stream_forward(torch.randn(1, 1, 40), is_final=True)


@pytest.mark.parametrize("piece", [1, 100, 160, 7777])
def test_exact_audio_processor_equals_full_features(rwkv_exp, piece):
    model = full_speech2text(rwkv_exp).asr_model
    audio = speech_like(1.3)
    full = full_features(model, audio)
    processor = ExactAudioProcessor(model)
    with torch.no_grad():
        feats = [processor(audio[s : s + piece], is_final=False) for s in range(0, audio.numel(), piece)]
        feats.append(processor(audio[:0], is_final=True))
    assert processor.state_nbytes == 0  # the final call starts a new stream
    torch.testing.assert_close(torch.cat(feats, dim=1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("exp_name", ["rwkv_exp", "rwkv_conv2d_exp"])
@pytest.mark.parametrize("window_ms", [10, 160, 330, 640])
def test_rwkv_streaming_decodes_like_full_utterance(request, exp_name, window_ms):
    """Same tokens and score; 10 ms is one feature frame, 330 ms does not divide the audio."""
    exp = request.getfixturevalue(exp_name)
    audio = speech_like(3.05, seed=1)
    full = full_speech2text(exp)
    _, _, tokens, hyp = full.hypotheses_to_results(full(audio))[0]
    assert tokens  # the random model does emit

    recognizer = StreamingRecognizer(load_speech2text(exp, window_ms, model_file=exp / "model.pth", beam_size=2))
    assert recognizer.exact
    partials, final = stream_all(recognizer, audio, piece=1234)
    assert final.is_final and final.token_int == tokens
    assert final.score == pytest.approx(hyp.score, rel=1e-5)
    assert final.end_s == pytest.approx(audio.numel() / RATE)
    assert len(partials) == audio.numel() // recognizer.window
    assert partials[-1].end_s == pytest.approx(len(partials) * window_ms / 1000)


@pytest.mark.parametrize("exp_name", ["rwkv_exp", "conformer_exp"])
def test_shortened_label_history_changes_nothing(request, exp_name, monkeypatch):
    """Moving the hypotheses' common label prefix out of the beam search gives the same
    partial and final hypotheses as keeping whole label sequences (and it does happen)."""
    exp = request.getfixturevalue(exp_name)
    audio = speech_like(4.0, seed=7)
    results, longest = {}, {}
    for keep in (10**9, 0):
        monkeypatch.setattr(beam_history, "KEEP_LABELS", keep)
        recognizer = StreamingRecognizer(load_speech2text(exp, 160, model_file=exp / "model.pth", beam_size=2))
        lengths = []

        def shorten_and_record(recognizer=recognizer, shorten=recognizer.history.shorten, lengths=lengths):
            shorten()
            search_cache = recognizer.speech2text.beam_search.search_cache or [[]]
            lengths.append((len(recognizer.history.committed), max(len(h.yseq) for h in search_cache)))

        recognizer.history.shorten = shorten_and_record
        partials, final = stream_all(recognizer, audio, piece=2345)
        results[keep] = [(p.token_int, p.score) for p in partials + [final]]
        longest[keep] = max(lengths)
    assert results[0] == results[10**9] and results[0][-1][0]
    assert longest[10**9][0] == 0 and longest[0][0] > 0  # committed labels
    assert longest[0][1] < longest[10**9][1]  # shorter hypotheses


def test_rwkv_streaming_encoder_output_equals_full(rwkv_exp):
    s2t = load_speech2text(rwkv_exp, 320, model_file=rwkv_exp / "model.pth", beam_size=2)
    model = s2t.asr_model
    audio = speech_like(2.0, seed=2)
    feats = full_features(model, audio)
    with torch.no_grad():
        enc_full, _ = model.encoder(feats, torch.tensor([feats.size(1)]))
    outputs = []
    stream_forward = model.encoder.stream_forward
    model.encoder.stream_forward = lambda x, is_final: outputs.append(stream_forward(x, is_final)) or outputs[-1]
    recognizer = StreamingRecognizer(s2t)
    stream_all(recognizer, audio, piece=5120)
    torch.testing.assert_close(torch.cat(outputs, dim=1), enc_full, rtol=1e-4, atol=1e-4)
    # A second stream starts from scratch.
    outputs.clear()
    stream_all(recognizer, audio, piece=3000)
    torch.testing.assert_close(torch.cat(outputs, dim=1), enc_full, rtol=1e-4, atol=1e-4)


def test_espnet_streaming_path_runs_rwkv_and_feeds_each_frame_once(rwkv_exp):
    """Speech2Text(streaming=True).streaming_decode, as asr_transducer_inference --streaming runs it.

    ESPnet's OnlineAudioProcessor repeats frames across windows (dropped by
    chunk_forward) and leaves one frame out per boundary: the frames reaching
    the encoder are the full-utterance frames in order, none twice, one
    missing per window boundary.
    """
    s2t = load_speech2text(rwkv_exp, 160, model_file=rwkv_exp / "model.pth", beam_size=2)
    model = s2t.asr_model
    audio = speech_like(2.0, seed=3)
    full = full_features(model, audio)
    fed = []
    stream_forward = model.encoder.stream_forward
    model.encoder.stream_forward = lambda x, is_final: fed.append(x) or stream_forward(x, is_final)
    step = s2t.audio_processor.decoding_samples
    windows = audio.numel() // step
    for i in range(windows):
        hyps = s2t.streaming_decode(audio[i * step : (i + 1) * step], is_final=False)
    final = s2t.streaming_decode(audio[windows * step :], is_final=True)
    assert hyps and final and s2t.hypotheses_to_results(final)[0][2] is not None

    frames = torch.cat(fed[:-1], dim=1)[0]  # the final window is zero-padded by ESPnet
    matched = [int((full[0] - frame).abs().amax(dim=1).argmin()) for frame in frames]
    for frame, j in zip(frames, matched):
        torch.testing.assert_close(frame, full[0, j], rtol=1e-4, atol=1e-4)
    assert matched == sorted(set(matched))
    assert matched[-1] + 1 - len(matched) == windows - 1  # one per boundary between non-final windows


def test_conformer_streaming_still_works(conformer_exp):
    """ESPnet's path, at 160 ms too: its first window is doubled so that it yields an encoder frame."""
    recognizer = StreamingRecognizer(
        load_speech2text(conformer_exp, 160, model_file=conformer_exp / "model.pth", beam_size=2)
    )
    assert not recognizer.exact
    partials, final = stream_all(recognizer, speech_like(2.5, seed=4), piece=4000)
    assert [p.end_s for p in partials] == pytest.approx([0.32 + 0.16 * i for i in range(14)])
    assert final.is_final and final.end_s == 2.5 and all(p.compute_s > 0 for p in partials)


@pytest.mark.slow
def test_ten_minutes_stream_with_flat_state(rwkv_conv2d_exp):
    recognizer = StreamingRecognizer(
        load_speech2text(rwkv_conv2d_exp, 640, model_file=rwkv_conv2d_exp / "model.pth", beam_size=2)
    )
    encoder = recognizer.speech2text.asr_model.encoder
    field = encoder.receptive_field
    # Waiting: < one window of audio, < n_fft + 2 hops of samples for the STFT, at most
    # size + stride - 2 input frames for the subsampling; and the block states.
    bound = (
        (recognizer.window + 512 + 2 * 160) * 4
        + (field.size + field.stride - 2) * encoder.input_size * 4
        + sum(state.nbytes for state in encoder._cache.block_states)
    )
    sizes, cache_sizes = [], []
    minute = speech_like(60.0, seed=5)
    for _ in range(10):
        for start in range(0, minute.numel(), 16000):
            recognizer.accept(minute[start : start + 16000])
            sizes.append(recognizer.state_nbytes)
            cache_sizes.append(len(recognizer.speech2text.asr_model.decoder.score_cache))
    assert max(sizes) <= bound
    assert max(sizes[-60:]) <= max(sizes[:60])
    assert max(cache_sizes) <= 4 * 2  # the decoder keeps outputs of live hypotheses only
    final = recognizer.finish()
    assert final.end_s == pytest.approx(600.0)


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE, subtype: str = "PCM_16") -> Path:
    soundfile.write(str(path), audio, rate, subtype=subtype)
    return path


def run_cli(exp: Path, *args):
    return stream.main(
        ["--model", str(exp), "--model_file", str(exp / "model.pth"), "--beam_size", "2", *map(str, args)]
    )


def test_cli_prints_partials_final_and_timing(rwkv_exp, tmp_path, capsys):
    audio = speech_like(2.0, seed=6).numpy()
    wav = write_wav(tmp_path / "a.wav", audio)
    assert run_cli(rwkv_exp, "--chunk_ms", 160, wav) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[-1].startswith(f"{wav}    2.00s final: ")
    assert all(" partial: " in line for line in lines[:-1])
    assert "13 chunks of 160 ms" in err and "real-time factor" in err

    # The same audio as raw PCM on stdin (read as it arrives) gives the same final hypothesis.
    pcm = soundfile.read(str(wav), dtype="int16")[0].astype("<i2").tobytes()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "espnet_rwkv.stream",
            "--model",
            str(rwkv_exp),
            "--model_file",
            str(rwkv_exp / "model.pth"),
            "--beam_size",
            "2",
            "--chunk_ms",
            "160",
            "-",
        ],
        input=pcm,
        capture_output=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().splitlines()[-1].split(" final: ") == lines[-1].replace(str(wav), "stdin").split(
        " final: "
    )


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda p: write_wav(p, np.zeros(8000, dtype=np.float32), rate=8000),
            "sample rate is 8000 Hz, the model needs 16000 Hz",
        ),
        (lambda p: write_wav(p, np.zeros((16000, 2), dtype=np.float32)), "has 2 channels, the model needs mono"),
        (lambda p: write_wav(p, np.zeros(0, dtype=np.float32)), "has no samples"),
        (
            lambda p: write_wav(
                p, np.where(np.arange(16000) == 12345, np.nan, 0.1).astype(np.float32), subtype="FLOAT"
            ),
            r"has NaN or infinite samples \(first at 0.772 s\)",
        ),
        (lambda p: write_wav(p, np.zeros(900, dtype=np.float32)), "too short for subsampling"),
        (lambda p: (p.write_bytes(b"not audio"), p)[1], "cannot read audio"),
    ],
    ids=["8kHz", "stereo", "empty", "nan", "too-short", "not-audio"],
)
def test_cli_bad_input_is_a_clear_error(rwkv_exp, tmp_path, capsys, make, message):
    bad = make(tmp_path / "bad.wav")
    good = write_wav(tmp_path / "good.wav", speech_like(1.0).numpy())
    assert run_cli(rwkv_exp, bad, good) == 1
    out, err = capsys.readouterr()
    assert f"espnet_rwkv.stream: error: {bad}: " in err
    assert re.search(message, err), err
    assert f"{good}    1.00s final: " in out  # the other files still decode


def test_cli_bad_stdin_is_an_error(rwkv_exp):
    cmd = [
        sys.executable,
        "-m",
        "espnet_rwkv.stream",
        "--model",
        str(rwkv_exp),
        "--model_file",
        str(rwkv_exp / "model.pth"),
        "-",
    ]
    for data, message in ((b"", "stdin: has no samples"), (b"\x01\x02\x03", "stdin ended inside a sample")):
        result = subprocess.run(cmd, input=data, capture_output=True, cwd=ROOT)
        assert result.returncode == 1 and message in result.stderr.decode(), result.stderr.decode()[-2000:]


def test_cli_bad_model_is_an_error(tmp_path, capsys):
    assert stream.main(["--model", str(tmp_path), "x.wav"]) == 1
    assert f"cannot load model {tmp_path}: {tmp_path}: neither a packed model" in capsys.readouterr().err


def test_emission_latency_bench_runs(rwkv_exp, conformer_exp, tmp_path, espeak, capsys, monkeypatch):
    """bench/emission_latency.py end to end on random-weight models (a smoke test: nothing matches)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import emission_latency

    (tmp_path / "text").write_text("u1 THE CAT SAT\nu2 A BIRD IN THE HAND\n")
    (tmp_path / "decode.yaml").write_text("beam_size: 2\nstreaming: true\ndecoding_window: 999\n")
    emission_latency.main(
        [
            "--model",
            f"rwkv={rwkv_exp}",
            "--model",
            f"conformer={conformer_exp}",
            "--text",
            str(tmp_path / "text"),
            "--windows",
            "160",
            "640",
            "--num",
            "2",
            "--decode_conf",
            str(tmp_path / "decode.yaml"),
        ]
    )
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("| rwkv", "160"),
        ("| rwkv", "640"),
        ("| conformer", "160"),
        ("| conformer", "640"),
    ]
    assert all(row[2].endswith(" / 8") for row in rows)
    assert [row[-1] for row in rows[:2]] == ["100 |", "100 |"]  # RWKV streams as it decodes in full
