"""Issue 20: bad input and faults give a clear error naming what is bad, never a hang, a traceback or stale state.

Each test is one case of the issue's audit, and failed before the fix.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import TOKENS
from espnet2.asr_transducer.utils import TooShortUttError
from espnet2.tasks.asr_transducer import ASRTransducerTask
from test_streaming import CONF, ROOT, make_exp_dir, run_cli, speech_like, stream_all, write_wav

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin)
from espnet_rwkv import stream
from espnet_rwkv.asr.recognizer import StreamingRecognizer, load_speech2text


@pytest.fixture(scope="module")
def rwkv_exp(tmp_path_factory):
    return make_exp_dir(tmp_path_factory.mktemp("exp") / "asr_rwkv", CONF / "tiny_rwkv.yaml")


@pytest.fixture(scope="module")
def conformer_exp(tmp_path_factory):
    return make_exp_dir(tmp_path_factory.mktemp("exp") / "asr_conformer", CONF / "tiny_conformer_chunk.yaml")


def build(conf_name: str, **changes):
    args = ASRTransducerTask.get_parser().parse_args([])
    for key, value in {**yaml.safe_load((CONF / conf_name).read_text()), **changes}.items():
        setattr(args, key, value)
    args.token_list = list(TOKENS)
    torch.manual_seed(0)
    return ASRTransducerTask.build_model(args)


def batch(seconds=(1.0, 0.75, 0.5)):
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([int(s * 16000) for s in seconds])
    speech = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=g)
    text = torch.tensor([[2, 3, 4], [3, 4, -1], [2, -1, -1]])[: len(seconds)]
    return speech, lengths, text, (text >= 0).sum(1)


IDS = ["spk1-a", "spk1-b", "spk2-c"]


def one_line_error(err: str, prefix: str) -> str:
    """The single error line of the CLI's stderr (ESPnet's log lines aside); no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("espnet_rwkv.stream: error:")]
    assert len(lines) == 1 and lines[0].startswith(prefix), err[-3000:]
    return lines[0]


# 1. Hang: huge finite samples gave NaN features and an endless beam search.


def test_cli_refuses_float_samples_outside_the_range(rwkv_exp, tmp_path):
    huge = write_wav(tmp_path / "huge.wav", (speech_like(1.0).numpy() * 1e20).astype(np.float32), subtype="FLOAT")
    good = write_wav(tmp_path / "good.wav", speech_like(1.0).numpy())
    cmd = [sys.executable, "-m", "espnet_rwkv.stream", "--model", str(rwkv_exp)]
    result = subprocess.run(
        [*cmd, "--model_file", str(rwkv_exp / "model.pth"), "--beam_size", "2", str(huge), str(good)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    line = one_line_error(result.stderr, f"espnet_rwkv.stream: error: {huge}: has samples outside [-2, 2]")
    assert "first at 0.000 s" in line and "must be scaled to [-1, 1]" in line
    assert f"{good}    1.00s final: " in result.stdout


def test_recognizer_refuses_non_finite_features_instead_of_hanging(rwkv_exp):
    recognizer = StreamingRecognizer(load_speech2text(rwkv_exp, 320, model_file=rwkv_exp / "model.pth", beam_size=2))
    audio = speech_like(1.0)
    audio[8000:] *= 1e20  # finite samples whose power overflows float32
    with pytest.raises(ValueError, match=r"NaN or infinite features in the window 0.32 s to 0.64 s"):
        recognizer.accept(audio)


def test_espnet_decoding_refuses_non_finite_features_instead_of_hanging(rwkv_exp):
    """asr.sh's decoding: ESPnet's Speech2Text, full utterance and its own streaming windows."""
    s2t = load_speech2text(rwkv_exp, 320, model_file=rwkv_exp / "model.pth", beam_size=2)
    audio = speech_like(1.0)
    audio[8000:] *= 1e20  # from 0.5 s on: features of frame ~48 on are infinite
    with pytest.raises(ValueError, match=r"NaN or infinite features from feature frame 4\d on"):
        s2t(audio)
    step = s2t.audio_processor.decoding_samples
    with pytest.raises(ValueError, match=r"NaN or infinite features from feature frame 4\d on"):
        for i in range(0, audio.numel(), step):
            s2t.streaming_decode(audio[i : i + step], is_final=False)


# 2. One NaN sample ruined a run silently: collect_stats and training now name the utterance.


def test_non_finite_features_name_the_utterance():
    model = build("tiny_rwkv.yaml")
    speech, lengths, text, text_lengths = batch()
    speech[1, 5000] = float("nan")
    with pytest.raises(ValueError, match=r"\['spk1-b'\] have NaN or infinite features \(first at feature frame \[3"):
        model(speech, lengths, text, text_lengths, utt_id=IDS)
    with pytest.raises(ValueError, match=r"\['spk1-b'\] have NaN or infinite features"):
        model.collect_feats(speech, lengths, text, text_lengths, utt_id=IDS)


def test_collect_stats_names_the_utterance(tmp_path):
    """asr.sh stage 10: ESPnet's collect_stats gives the model no ids; the error still names the utterance."""
    from espnet2.tasks import abs_task

    model = build("tiny_rwkv.yaml")
    speech, lengths, text, text_lengths = batch()
    speech[2, 10] = float("inf")
    batches = [(IDS, dict(speech=speech, speech_lengths=lengths, text=text, text_lengths=text_lengths))]
    with pytest.raises(ValueError, match=r"\['spk2-c'\] have NaN or infinite features"):
        abs_task.collect_stats(
            model=model,
            train_iter=batches,
            valid_iter=[],
            output_dir=tmp_path,
            ngpu=0,
            log_interval=None,
            write_collected_feats=False,
        )


# 3. Tracebacks in the CLI, and later files never decoded.


def _packed_without(exp: Path, tmp_path: Path, drop: str) -> Path:
    path = tmp_path / "model.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name in ("config.yaml", "model.pth", "stats.npz"):
            if name != drop:
                z.write(exp / name, f"exp/{name}")
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda exp, tmp: _state(exp, tmp, lambda sd: sd.pop(next(iter(sd)))),
            "CheckpointMismatchError: the checkpoint",
        ),
        (
            lambda exp, tmp: _state(exp, tmp, lambda sd: sd.update({k: v[:1] for k, v in sd.items() if v.dim()})),
            "RuntimeError: Error(s) in loading state_dict",
        ),
        (lambda exp, tmp: _pth(exp, tmp, (exp / "model.pth").read_bytes()[:3000]), "RuntimeError: "),
        (lambda exp, tmp: _pth(exp, tmp, b""), ": "),
        (lambda exp, tmp: _pth(exp, tmp, b"garbage" * 100), ": "),
        (lambda exp, tmp: _packed_without(exp, tmp, "meta.yaml"), ": "),
        (lambda exp, tmp: _pth(exp, tmp, b"PK\x03\x04truncated", name="model.zip"), ": "),
        (lambda exp, tmp: _normalize(exp, tmp, "utterance_mvn"), "ValueError: exact streaming needs global_mvn"),
    ],
    ids=[
        "missing-key",
        "size-mismatch",
        "truncated-pth",
        "empty-pth",
        "garbage-pth",
        "zip-no-meta",
        "bad-zip",
        "utt-mvn",
    ],
)
def test_cli_model_errors_are_one_line(rwkv_exp, tmp_path, capsys, make, message):
    model = make(rwkv_exp, tmp_path)
    args = (
        ["--model", str(model)]
        if model.suffix == ".zip"
        else ["--model", str(model), "--model_file", str(model / "model.pth")]
    )
    assert stream.main([*args, "never-read.wav"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    line = one_line_error(err, f"espnet_rwkv.stream: error: cannot load model {model}: ")
    assert message in line


def _copy_exp(exp: Path, tmp_path: Path) -> Path:
    new = tmp_path / "exp" / exp.name
    new.mkdir(parents=True)
    for name in ("config.yaml", "model.pth", "stats.npz", "tokens.txt"):
        (new / name).write_bytes((exp / name).read_bytes())
    return new


def _state(exp, tmp_path, change):
    new = _copy_exp(exp, tmp_path)
    state = torch.load(new / "model.pth")
    change(state)
    torch.save(state, new / "model.pth")
    return new


def _pth(exp, tmp_path, data: bytes, name="model.pth"):
    if name.endswith(".zip"):
        (tmp_path / name).write_bytes(data)
        return tmp_path / name
    new = _copy_exp(exp, tmp_path)
    (new / name).write_bytes(data)
    return new


def _normalize(exp, tmp_path, normalize):
    new = _copy_exp(exp, tmp_path)
    config = yaml.safe_load((new / "config.yaml").read_text())
    config["normalize"], config["normalize_conf"] = normalize, {}
    (new / "config.yaml").write_text(yaml.safe_dump(config))
    state = torch.load(new / "model.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("normalize.")}, new / "model.pth")
    return new


def _truncated_flac(path: Path) -> Path:
    soundfile.write(str(path), speech_like(2.0).numpy(), 16000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (_truncated_flac, "cannot decode the audio past some point (truncated or corrupted FLAC?)"),
        (lambda p: (p.with_suffix(".raw").write_bytes(b"\0" * 3200), p.with_suffix(".raw"))[1], "cannot read audio"),
    ],
    ids=["missing", "directory", "truncated-flac", "raw"],
)
def test_cli_audio_errors_name_file_and_cause_and_the_rest_decode(rwkv_exp, tmp_path, capsys, make, message):
    bad = make(tmp_path / "bad.flac")
    good = write_wav(tmp_path / "good.wav", speech_like(1.0).numpy())
    assert run_cli(rwkv_exp, bad, good) == 1
    out, err = capsys.readouterr()
    assert message in one_line_error(err, f"espnet_rwkv.stream: error: {bad}: ")
    assert f"{good}    1.00s final: " in out


# 4. Stale state after an error.


def test_recognizer_starts_afresh_after_an_error(rwkv_exp):
    s2t = load_speech2text(rwkv_exp, 160, model_file=rwkv_exp / "model.pth", beam_size=2)
    audio = speech_like(1.5, seed=3)
    expected = stream_all(StreamingRecognizer(s2t), audio, 4000)[1]
    recognizer = StreamingRecognizer(load_speech2text(rwkv_exp, 160, model_file=rwkv_exp / "model.pth", beam_size=2))
    recognizer.accept(torch.zeros(900))
    with pytest.raises(TooShortUttError):
        recognizer.finish()
    final = stream_all(recognizer, audio, 4000)[1]
    assert (final.end_s, final.token_int, final.score) == (expected.end_s, expected.token_int, expected.score)


# 5. Training errors name the utterance ids; the frame count states the real minimum.


def test_too_short_utterance_alone_in_a_batch_names_it_and_the_real_minimum():
    model = build("tiny_rwkv.yaml")
    speech, _, text, text_lengths = batch((0.5,))
    for samples, frames in ((960, 7), (800, 6)):  # 960 samples make 7 frames: enough
        lengths = torch.tensor([samples])
        if frames >= 7:
            assert torch.isfinite(model(speech[:, :samples], lengths, text, text_lengths, utt_id=IDS[:1])[0])
        else:
            with pytest.raises(
                ValueError, match=r"\['spk1-a'\] are too short: \[6\] feature frames .* needs at least 7"
            ):
                model(speech[:, :samples], lengths, text, text_lengths, utt_id=IDS[:1])


def test_bat_label_overflow_names_the_utterance():
    model = build("tiny_rwkv_bat.yaml")
    speech, lengths, _, _ = batch()
    text_lengths = torch.tensor([3, 60, 2])
    text = torch.where(
        torch.arange(60)[None, :] < text_lengths[:, None], 2, -1
    )  # 0.5 s: 12 encoder frames reach at most 12 * (5 - 1) = 48 labels
    speech, lengths = speech[:, :8000], torch.tensor([8000, 8000, 8000])
    with pytest.raises(ValueError, match=r"\['spk1-b'\] have more labels \(\[60\]\) than BAT windows of 5"):
        model(speech, lengths, text, text_lengths, utt_id=IDS)


def test_empty_transcript_names_the_utterance():
    model = build("tiny_rwkv.yaml")
    speech, lengths, text, text_lengths = batch()
    text_lengths[2] = 0
    with pytest.raises(ValueError, match=r"\['spk2-c'\] have an empty transcript"):
        model(speech, lengths, text, text_lengths, utt_id=IDS)


# 6. Configs fail at build time with the key and the allowed range.


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model_conf": {"transducer_loss": "bat", "bat_conf": {"left": -1}}}, r"bat_conf: left must be an int >= 0"),
        ({"model_conf": {"transducer_loss": "bat", "bat_conf": {"right": 0}}}, r"right an int >= 1"),
        ({"model_conf": {"transducer_loss": "bat", "bat_conf": {"quantity_weight": -1.0}}}, r"quantity_weight must"),
        ({"body": {"hidden_size": 0}}, r"block 1 \(rwkv\): hidden_size must be an int >= 1, got 0"),
        ({"body": {"linear_size": 0}}, r"linear_size must be an int >= 1, got 0"),
        ({"body": {"dropout_rate": 1.5}}, r"dropout_rate must be in \[0, 1\), got 1.5"),
    ],
    ids=["bat-left", "bat-right", "bat-quantity", "hidden-0", "linear-0", "dropout"],
)
def test_bad_config_fails_at_build_time(change, message):
    conf = yaml.safe_load((CONF / "tiny_rwkv.yaml").read_text())
    if "body" in change:
        conf["encoder_conf"]["body_conf"][0].update(change["body"])
    else:
        conf["model_conf"] = change["model_conf"]
    with pytest.raises(ValueError, match=message):
        build("tiny_rwkv.yaml", **conf)


def test_cli_refuses_a_window_too_small_for_espnet_streaming(conformer_exp, tmp_path, capsys):
    wav = write_wav(tmp_path / "a.wav", speech_like(1.0).numpy())
    assert run_cli(conformer_exp, "--chunk_ms", 80, wav) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "needs a decoding window (--chunk_ms) over 80 ms, got 80 ms" in one_line_error(
        err, "espnet_rwkv.stream: error: cannot load model"
    )
    assert run_cli(conformer_exp, "--chunk_ms", 84, wav) == 0


# The demo recipe's data stage: a data dir is checked before training (espnet_rwkv.data_check).


def test_data_check_names_every_bad_utterance(tmp_path, capsys):
    from espnet_rwkv import data_check

    audio = {
        "good": speech_like(0.5).numpy(),
        "nan": np.where(np.arange(8000) == 100, np.nan, 0.1).astype(np.float32),
        "huge": np.full(8000, 3000.0, dtype=np.float32),
        "short": np.zeros(959, dtype=np.float32),
        "no-text": np.zeros(8000, dtype=np.float32),
        "empty-text": np.zeros(8000, dtype=np.float32),
    }
    scp = [f"{key} {write_wav(tmp_path / f'{key}.wav', x, subtype='FLOAT')}" for key, x in audio.items()]
    (tmp_path / "wav.scp").write_text("\n".join([*scp, f"missing {tmp_path / 'missing.wav'}"]) + "\n")
    texts = ["good A B", "nan A", "huge A", "short A", "empty-text", "missing A", "text-only A"]
    (tmp_path / "text").write_text("\n".join(texts) + "\n")

    assert data_check.main([str(tmp_path), "--config", str(CONF / "tiny_rwkv.yaml")]) == 1
    bad = {line.split(": ")[2] for line in capsys.readouterr().err.splitlines() if line.count(": ") >= 3}
    assert bad == {"nan", "huge", "short", "no-text", "empty-text", "missing", "text-only"}
    (tmp_path / "wav.scp").write_text(scp[0] + "\n")
    (tmp_path / "text").write_text(texts[0] + "\n")
    assert data_check.main([str(tmp_path), "--min_seconds", "0.5"]) == 0
    assert data_check.main([str(tmp_path), "--min_seconds", "0.6"]) == 1


def test_data_check_minimum_is_what_the_model_accepts():
    from espnet_rwkv.data_check import min_samples_of_config

    least = min_samples_of_config(CONF / "tiny_rwkv.yaml")
    model = build("tiny_rwkv.yaml")
    speech, _, text, text_lengths = batch((0.5,))
    assert torch.isfinite(model(speech[:, :least], torch.tensor([least]), text, text_lengths)[0])
    with pytest.raises(ValueError, match="too short"):
        model(speech[:, : least - 1], torch.tensor([least - 1]), text, text_lengths)


# A kill during ESPnet's checkpoint save: what the README tells the user to do works.


def test_after_a_kill_during_save_init_param_restores_the_last_epoch(tmp_path):
    from espnet2.torch_utils.load_pretrained_model import load_pretrained_model
    from espnet2.train.reporter import Reporter
    from espnet2.train.trainer import Trainer

    trained = build("tiny_rwkv.yaml")
    optimizer = torch.optim.Adam(trained.parameters())
    trained(*batch())[0].backward()
    optimizer.step()
    torch.save(trained.state_dict(), tmp_path / "1epoch.pth")
    state = {"model": trained.state_dict(), "reporter": Reporter().state_dict(), "optimizers": [], "schedulers": []}
    torch.save(state, tmp_path / "checkpoint.pth")
    data = (tmp_path / "checkpoint.pth").read_bytes()
    (tmp_path / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # the kill

    fresh = build("tiny_rwkv.yaml")
    with pytest.raises((OSError, RuntimeError)):
        Trainer.resume(tmp_path / "checkpoint.pth", fresh, Reporter(), [], [], None)
    load_pretrained_model(str(tmp_path / "1epoch.pth"), fresh, ignore_init_mismatch=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
