"""ONNX export for sherpa-onnx: graphs equal the torch model, three decoders agree, bad input is refused clearly."""

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sherpa_onnx
import soundfile
import torch
from deployable import espeak_speech, make_exp
from espnet2.bin.asr_transducer_inference import Speech2Text

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)
from espnet_rwkv.asr.greedy_search import GreedySearch
from espnet_rwkv.asr.recognizer import StreamingRecognizer
from espnet_rwkv.asr.rwkv_block import wkv_chunk, wkv_chunk_masks
from espnet_rwkv.onnx.decoder import OnnxModelError, OnnxStreamingRecognizer, OnnxTransducer, decode_samples
from espnet_rwkv.onnx.export import NotExportableError, export_model, load_model, wkv_batched
from espnet_rwkv.ops.wkv import empty_state

ROOT = Path(__file__).resolve().parents[1]
CHUNKS_MS = [160, 320, 640]
BLANK_BIAS = 0.3  # the random model then emits a label at some frames, blank at most


@pytest.fixture(scope="module")
def speech(espeak):
    return espeak_speech()


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return make_exp(tmp_path_factory.mktemp("exp") / "asr_rwkv_bat", blank_bias=BLANK_BIAS)


@pytest.fixture(scope="module")
def exported(exp, tmp_path_factory):
    """chunk ms -> export dir (320 ms also int8)."""
    model, tokens = load_model(exp, exp / "model.pth")
    root = tmp_path_factory.mktemp("onnx")
    return {
        ms: export_model(model, tokens, root / f"onnx_{ms}ms", chunk_ms=ms, int8=ms == 320)["encoder.onnx"].parent
        for ms in CHUNKS_MS
    }


def sherpa_decode(onnx_dir: Path, audio: np.ndarray, tail: int, method="greedy_search", int8=False) -> str:
    suffix = ".int8.onnx" if int8 else ".onnx"
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(onnx_dir / "tokens.txt"),
        encoder=str(onnx_dir / f"encoder{suffix}"),
        decoder=str(onnx_dir / f"decoder{suffix}"),
        joiner=str(onnx_dir / f"joiner{suffix}"),
        num_threads=1,
        model_type="lstm",
        decoding_method=method,
    )
    stream = rec.create_stream()
    for start in range(0, audio.size, 5120):
        stream.accept_waveform(16000, audio[start : start + 5120])
        while rec.is_ready(stream):
            rec.decode_stream(stream)
    stream.accept_waveform(16000, np.zeros(tail, np.float32))
    stream.input_finished()
    while rec.is_ready(stream):
        rec.decode_stream(stream)
    return rec.get_result(stream).strip()


@pytest.mark.parametrize("chunk_ms", CHUNKS_MS)
def test_encoder_graph_equals_torch_chunk_by_chunk(exp, exported, speech, chunk_ms):
    """Windows of T frames from all-zero states -> the full-utterance encoder frames (and the joiner projection)."""
    model, _ = load_model(exp, exp / "model.pth")
    audio = torch.from_numpy(speech)
    with torch.no_grad():
        feats, lengths = model._extract_feats(audio[None], torch.tensor([audio.numel()]))
        enc, _ = model.encoder(model.normalize(feats.clone(), lengths)[0], lengths)
        want = model.joint_network.lin_enc(enc)[0].numpy()
    m = OnnxTransducer(exported[chunk_ms])
    h, c = m.initial_states()
    got = []
    x = feats[0].numpy()
    start = 0
    while start + m.T <= x.shape[0]:
        out, h, c = m.encode(x[None, start : start + m.T], h, c)
        got.append(out[0])
        start += m.chunk
    got = np.concatenate(got)
    assert got.shape[0] >= want.shape[0] - (m.T // 4 + m.chunk // 4)
    scale = np.abs(want[: got.shape[0]]).max()
    assert np.abs(got - want[: got.shape[0]]).max() <= 1e-4 * scale


@pytest.mark.parametrize("keys", [0.0, -200.0])
def test_all_zero_state_is_the_empty_state(keys):
    """sherpa-onnx starts from zeros: a = b = 0 with any finite p gives the empty state's outputs.

    Also where u + k << 0, where 0/0 would otherwise appear.
    """
    g = torch.Generator().manual_seed(0)
    C, t = 8, 5
    w, u = -torch.exp(torch.randn(C, generator=g)), torch.randn(C, generator=g)
    k = torch.randn(1, t, C, generator=g) + keys
    v = torch.randn(1, t, C, generator=g)
    frames, carried = wkv_chunk_masks(w, u, t)
    want, _ = wkv_chunk(k[0], v[0], empty_state(1, C)[0], frames, carried)
    zeros = torch.zeros(1, 1, C)
    for p in (0.0, 30.0, -30.0, -1e38):
        y, *_ = wkv_batched(k, v, zeros, zeros, torch.full((1, 1, C), p), frames, carried)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(y[0], want, rtol=1e-5, atol=1e-5)


def test_zero_state_graph_equals_explicit_empty_state(exported, speech):
    m = OnnxTransducer(exported[320])
    x = np.random.default_rng(0).normal(-8, 3, (1, m.T, 80)).astype(np.float32)
    h, c = m.initial_states()
    empty = c.copy()
    C = m.d_model
    empty[:, :, 2 * C : 3 * C] = -1e38
    from_empty, _, _ = m.encode(x, h, empty)
    from_zeros, _, _ = m.encode(x, h, c)
    np.testing.assert_allclose(from_zeros, from_empty, rtol=1e-6, atol=1e-6)


class FrameBudgetGreedy(GreedySearch):
    """Greedy search over the first ``frames`` encoder frames of the stream only."""

    def __init__(self, decoder, joint_network, frames: int):
        super().__init__(decoder, joint_network)
        self.budget = frames

    def greedy(self, enc_out):
        keep = max(0, min(enc_out.size(0), self.budget))
        self.budget -= keep
        return super().greedy(enc_out[:keep])


@pytest.mark.parametrize("chunk_ms", [160, 320])
def test_greedy_text_python_onnxruntime_sherpa_agree(exp, exported, speech, chunk_ms):
    """Real speech: StreamingRecognizer (torch, greedy) == our onnxruntime decoder == sherpa-onnx.

    All three get the audio and the same tail padding; sherpa-onnx (and ours, as it) decodes
    whole windows only, so the torch recognizer's search stops at the same encoder frame.
    """
    model = OnnxTransducer(exported[chunk_ms])
    ort_rec = OnnxStreamingRecognizer(model)
    ours = decode_samples(ort_rec, speech, 1234).text
    sherpa = sherpa_decode(exported[chunk_ms], speech, ort_rec.tail_padding)
    ready = (speech.size + ort_rec.tail_padding + 80) // 160
    windows = -(-(ready - model.T) // model.chunk)  # sherpa-onnx decodes while start + T < frames ready
    s2t = Speech2Text(
        asr_train_config=exp / "config.yaml",
        asr_model_file=exp / "model.pth",
        beam_size=1,
        streaming=True,
        decoding_window=chunk_ms,
    )
    s2t.beam_search = FrameBudgetGreedy(s2t.asr_model.decoder, s2t.asr_model.joint_network, windows * model.chunk // 4)
    recognizer = StreamingRecognizer(s2t)
    recognizer.accept(torch.from_numpy(np.concatenate([speech, np.zeros(ort_rec.tail_padding, np.float32)])))
    python = recognizer.finish().text.strip()
    print(f"\n{chunk_ms} ms greedy: {ours!r}")
    assert ours
    assert ours == sherpa == python


def test_modified_beam_search_and_int8(exported, speech):
    """Our modified beam search equals sherpa-onnx's; the int8 export decodes.

    The int8 text is reported, not compared to fp32.
    """
    model = OnnxTransducer(exported[320])
    rec = OnnxStreamingRecognizer(model, "modified_beam_search", max_active_paths=4)
    beam = decode_samples(rec, speech, 5120).text
    sherpa_beam = sherpa_decode(exported[320], speech, rec.tail_padding, "modified_beam_search")
    int8_rec = OnnxStreamingRecognizer(OnnxTransducer(exported[320], int8=True))
    int8 = decode_samples(int8_rec, speech, 5120).text
    sherpa_int8 = sherpa_decode(exported[320], speech, int8_rec.tail_padding, int8=True)
    print(f"\nbeam: ours {beam!r} sherpa {sherpa_beam!r}\nint8 greedy: ours {int8!r} sherpa {sherpa_int8!r}")
    assert beam and beam == sherpa_beam
    assert int8 == sherpa_int8


def test_metadata_and_tokens(exported):
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(exported[320] / "encoder.onnx")).metadata_props}
    assert meta["model_type"] == "lstm" and meta["decode_chunk_len"] == "32" and meta["T"] == "35"
    assert int(meta["rnn_hidden_size"]) == 4 * int(meta["d_model"])
    tokens = (exported[320] / "tokens.txt").read_text(encoding="utf-8").splitlines()
    assert tokens[0] == "<blank> 0" and tokens[2] == "\u2581 2" and tokens[-1].startswith("<sos/eos>")


@pytest.mark.parametrize(
    "config,overrides,key",
    [
        ("tiny_rwkv_bat.yaml", {}, "frontend"),
        (
            "tiny_rwkv_bat_deployable.yaml",
            {"decoder": "rnn", "decoder_conf": {"embed_size": 8, "hidden_size": 8}},
            "decoder: stateless",
        ),
        (
            "tiny_rwkv_bat_deployable.yaml",
            {
                "encoder_conf": {
                    "input_conf": {"vgg_like": True, "subsampling_factor": 4, "conv_size": [8, 16]},
                    "body_conf": [{"block_type": "rwkv", "hidden_size": 16, "num_blocks": 1}],
                }
            },
            "vgg_like: false",
        ),
        ("tiny_rwkv_bat_deployable.yaml", {"frontend_conf": {"high_freq": -200.0}}, "frontend_conf"),
    ],
)
def test_non_deployable_config_names_the_key(tmp_path, config, overrides, key):
    exp_dir = make_exp(tmp_path / "exp", config=config, **overrides)
    model, tokens = load_model(exp_dir, exp_dir / "model.pth")
    with pytest.raises(NotExportableError, match=key):
        export_model(model, tokens, tmp_path / "out")


def test_utterance_normalization_and_bad_chunk_are_refused(exp, tmp_path):
    model, tokens = load_model(exp, exp / "model.pth")
    with pytest.raises(ValueError, match="multiple of the subsampling factor 4"):
        export_model(model, tokens, tmp_path / "a", chunk_ms=300)
    from espnet2.layers.utterance_mvn import UtteranceMVN

    model.normalize = UtteranceMVN()
    with pytest.raises(NotExportableError, match="normalize: global_mvn"):
        export_model(model, tokens, tmp_path / "b")


def test_missing_files_are_a_clear_error(exported, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("encoder.onnx", "tokens.txt"):
        (partial / name).write_bytes((exported[320] / name).read_bytes())
    with pytest.raises(OnnxModelError, match="missing decoder.onnx, joiner.onnx"):
        OnnxTransducer(partial)
    run = subprocess.run(
        [sys.executable, "-m", "espnet_rwkv.stream", "--onnx", str(partial), "x.wav"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 1 and "missing decoder.onnx" in run.stderr


def test_stream_cli_onnx_imports_neither_torch_nor_espnet(exported, speech, tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, speech, 16000)
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['stream', '--onnx', {str(exported[320])!r}, {str(wav)!r}]\n"
        "try:\n    runpy.run_module('espnet_rwkv.stream', run_name='__main__')\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'espnet2', 'espnet') if m in sys.modules))\nsys.exit(rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
    assert " final: " in run.stdout and "real-time factor" in run.stderr


def test_export_cli_and_decode_dir(exp, speech, tmp_path):
    out = tmp_path / "onnx"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "espnet_rwkv.export_onnx",
            "--model",
            str(exp),
            "--model_file",
            str(exp / "model.pth"),
            "--output_dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    data = tmp_path / "data"
    data.mkdir()
    for utt, audio in (("utt1", speech), ("utt2", speech[:30000])):
        soundfile.write(data / f"{utt}.wav", audio, 16000)
    (data / "wav.scp").write_text("".join(f"{u} {data / u}.wav\n" for u in ("utt1", "utt2")))
    for engine in ("sherpa-onnx", "onnxruntime"):
        decode = tmp_path / engine
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "espnet_rwkv.onnx.decode_dir",
                "--onnx",
                str(out),
                "--data_dir",
                str(data),
                "--output_dir",
                str(decode),
                "--engine",
                engine,
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr
        lines = (decode / "text").read_text().splitlines()
        assert [line.split()[0] for line in lines] == ["utt1", "utt2"]
        summary = json.loads((decode / "summary.json").read_text())
        assert summary["utterances"] == 2 and summary["rtf"] > 0
    assert (tmp_path / "sherpa-onnx" / "text").read_text() == (tmp_path / "onnxruntime" / "text").read_text()


def test_model_card_adds_the_onnx_files_and_a_sherpa_onnx_snippet(exported, tmp_path):
    from espnet_rwkv.model_card import CARD_NAME, add_onnx

    folder = tmp_path / "hf_upload"
    folder.mkdir()
    (folder / CARD_NAME).write_text("# card\n")
    add_onnx(folder, exported[320])
    assert {"encoder.onnx", "encoder.int8.onnx", "tokens.txt"} <= {p.name for p in (folder / "onnx").iterdir()}
    card = (folder / CARD_NAME).read_text()
    assert card.startswith("# card\n") and 'model_type="lstm"' in card and "--chunk_ms 320" in card
    url = importlib.metadata.metadata("espnet_rwkv")["Home-page"]
    assert f'pip install "espnet_rwkv[onnx] @ git+{url}"' in card, "espnet_rwkv is not on PyPI"
    with pytest.raises(FileNotFoundError, match="joiner.onnx"):
        add_onnx(folder, tmp_path)
