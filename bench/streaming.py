"""Streaming decoding on one CPU thread: RWKV-BAT against ESPnet's chunk conformer.

    PYTHONPATH=. python bench/streaming.py                       # the demo configs, random weights
    PYTHONPATH=. python bench/streaming.py --model rwkv=egs2/synth_en/asr1/exp/asr_rwkv_bat \\
        --model conformer=egs2/synth_en/asr1/exp/asr_conformer_chunk   # trained models

Both models stream the same audio (espeak-ng speech, repeated to --after_s + 10 s)
through ``StreamingRecognizer`` in decoding windows of --window_ms: RWKV on
the exact path, the conformer on ESPnet's ``Speech2Text.streaming_decode``.
Per-chunk compute time (features + encoder + beam search, and the encoder
alone) is the median over the first 10 s of audio and over the 10 s after
--after_s, of each window's minimum over --repeats streams (the machine may
be shared); real-time factor is the total compute over the audio length; peak
memory is the growth of the process's peak RSS while streaming (VmHWM reset
after a 10 s warm-up stream of each model); state is what the encoder carries
between chunks. Random-weight models get a blank bias (``random_model``). One
table: our figure, the peer's figure measured in this process, their ratio.
"""

import argparse
import io
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import soundfile
import torch
import torchaudio
import yaml
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401  (registers the RWKV encoder with ESPnet)
from espnet_rwkv.asr.recognizer import SAMPLE_RATE, StreamingRecognizer, load_speech2text

RECIPE = Path(__file__).resolve().parents[1] / "egs2" / "synth_en" / "asr1"
CONFIGS = {
    "rwkv": RECIPE / "conf" / "tuning" / "train_rwkv_bat.yaml",
    "conformer": RECIPE / "conf" / "tuning" / "train_conformer_chunk.yaml",
}
TOKENS = ["<blank>", "<unk>", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'", "<space>", "<sos/eos>"]
TEXT = (
    "a journey of a thousand miles begins with a single step. the early bird catches the worm, "
    "but the second mouse gets the cheese. all that glitters is not gold."
)


def speech(seconds: float) -> torch.Tensor:
    """espeak-ng reading TEXT at 16 kHz, repeated to ``seconds``."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", TEXT], check=True, capture_output=True).stdout
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE)
    return audio.repeat(int(seconds * SAMPLE_RATE) // audio.numel() + 1)[: int(seconds * SAMPLE_RATE)]


def random_model(name: str, window_ms: int, beam_size: int, blank_bias: float, workdir: Path) -> Speech2Text:
    """The recipe's config with random weights (no normalization stats: timing only).

    ``blank_bias`` is added to the joint network's blank output: with random
    weights blank and the labels score alike, and ESPnet's beam search then
    expands ~20 hypotheses per frame where a trained model expands a few.
    """
    out = workdir / name
    out.mkdir()
    (out / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        ["--config", str(CONFIGS[name]), "--token_list", str(out / "tokens.txt"), "--output_dir", str(out)]
    )
    args.normalize = None
    (out / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.manual_seed(0)
    s2t = Speech2Text(
        asr_train_config=out / "config.yaml", streaming=True, decoding_window=window_ms, beam_size=beam_size
    )
    with torch.no_grad():
        s2t.asr_model.joint_network.lin_out.bias[0] += blank_bias
    return s2t


class Probe:
    """Time spent in the encoder's streaming call, encoder frames out and joint network calls."""

    def __init__(self, model):
        self.seconds, self.frames, self.joint_calls = 0.0, 0, 0
        encoder = model.encoder
        name = "stream_forward" if hasattr(encoder, "stream_forward") else "chunk_forward"
        encode, joint = getattr(encoder, name), model.joint_network.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = encode(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.frames += out.size(1)
            return out

        def counted(*args, **kwargs):
            self.joint_calls += 1
            return joint(*args, **kwargs)

        setattr(encoder, name, timed)
        model.joint_network.forward = counted


def encoder_state_nbytes(encoder) -> int:
    """Bytes an encoder carries between chunks: RWKV's state, or the conformer blocks' caches."""
    if hasattr(encoder, "streaming_state_nbytes"):
        return encoder.streaming_state_nbytes()
    return sum(t.nbytes for block in encoder.encoders.blocks for t in block.cache)


def peak_rss_reset() -> int:
    """Reset the process's peak RSS (VmHWM) to the current RSS; return it in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmHWM") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def stream_once(recognizer: StreamingRecognizer, probe: Probe, audio: torch.Tensor):
    """One stream of ``audio`` -> (per window: total s, encoder s, end s), final Partial, max state bytes."""
    rows, state = [], 0
    for start in range(0, audio.numel(), recognizer.window):
        probe.seconds = 0.0
        for partial in recognizer.accept(audio[start : start + recognizer.window]):
            rows.append((partial.compute_s, probe.seconds, partial.end_s))
            state = max(state, encoder_state_nbytes(recognizer.speech2text.asr_model.encoder))
    return rows, recognizer.finish(), state


def measure(speech2text: Speech2Text, audio: torch.Tensor, after_s: float, repeats: int) -> dict:
    """Stream ``audio`` ``repeats`` times; per-window times are the minimum over the repeats."""
    recognizer = StreamingRecognizer(speech2text)
    probe = Probe(speech2text.asr_model)
    stream_once(recognizer, probe, audio[: SAMPLE_RATE * 10])  # warm-up

    probe.frames = probe.joint_calls = 0
    rss0 = peak_rss_reset()
    rows, final, state = stream_once(recognizer, probe, audio)
    peak = peak_rss() - rss0
    joint_per_frame, frames = probe.joint_calls / probe.frames, probe.frames
    runs = [rows] + [stream_once(recognizer, probe, audio)[0] for _ in range(repeats - 1)]
    total = [min(run[i][0] for run in runs) for i in range(len(rows))]
    encoder = [min(run[i][1] for run in runs) for i in range(len(rows))]
    ends = [row[2] for row in rows]

    def median_ms(values, lo, hi):
        return 1000 * statistics.median(v for v, end in zip(values, ends) if lo < end <= hi)

    return {
        "params": sum(p.numel() for p in speech2text.asr_model.encoder.parameters()),
        "model_params": sum(p.numel() for p in speech2text.asr_model.parameters()),
        "chunk_start": median_ms(total, 0, 10),
        "chunk_after": median_ms(total, after_s, after_s + 10),
        "enc_start": median_ms(encoder, 0, 10),
        "enc_after": median_ms(encoder, after_s, after_s + 10),
        "rtf": (sum(total) + final.compute_s) / (audio.numel() / SAMPLE_RATE),
        "state": state,
        "peak": peak,
        "joint_per_frame": joint_per_frame,
        "frames": frames,
        "full_frames": full_utterance_frames(speech2text, audio.numel()),
    }


def full_utterance_frames(speech2text: Speech2Text, samples: int) -> int:
    """Encoder frames of decoding ``samples`` of audio as one utterance."""
    stft = speech2text.asr_model.frontend.stft
    feats = samples // stft.hop_length + 1 if stft.center else (samples - stft.n_fft) // stft.hop_length + 1
    return int(speech2text.asr_model.encoder.embed.get_output_lengths(torch.tensor(feats)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="rwkv=exp_dir or conformer=exp_dir (trained)")
    parser.add_argument("--window_ms", type=int, default=320)
    parser.add_argument("--after_s", type=float, default=120.0)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="streams per model; per-window minimum taken")
    parser.add_argument(
        "--blank_bias",
        type=float,
        default=4.0,
        help="added to the blank output of random-weight models (see random_model)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = dict(m.split("=", 1) for m in args.model)
    if set(trained) - set(CONFIGS):
        parser.error(f"--model names must be among {sorted(CONFIGS)}")
    audio = speech(args.after_s + 10.5)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            if name in trained:
                s2t = load_speech2text(trained[name], args.window_ms, beam_size=args.beam_size)
            else:
                s2t = random_model(name, args.window_ms, args.beam_size, args.blank_bias, Path(tmp))
            with torch.inference_mode():
                results[name] = measure(s2t, audio, args.after_s, args.repeats)
            del s2t

    ours, peer = results["rwkv"], results["conformer"]
    weights = ", ".join(
        f"{n}: {'trained ' + trained[n] if n in trained else f'random weights, blank bias {args.blank_bias:+g}'}"
        for n in CONFIGS
    )
    print(f"# {args.window_ms} ms windows, beam {args.beam_size}, one thread, torch {torch.__version__}; {weights}")
    print(
        f"# {audio.numel() / SAMPLE_RATE:.1f} s of espeak-ng speech, {args.repeats} streams per model, per-window "
        f"minimum; 'after' = median over {args.after_s:.0f}-{args.after_s + 10:.0f} s, 'start' = over 0-10 s"
    )
    rows = [
        ("model parameters (M)", "model_params", 1e-6, "{:.2f}"),
        ("encoder parameters (M)", "params", 1e-6, "{:.2f}"),
        ("per-chunk time at start (ms)", "chunk_start", 1, "{:.2f}"),
        (f"per-chunk time after {args.after_s:.0f} s (ms)", "chunk_after", 1, "{:.2f}"),
        ("encoder per chunk at start (ms)", "enc_start", 1, "{:.2f}"),
        (f"encoder per chunk after {args.after_s:.0f} s (ms)", "enc_after", 1, "{:.2f}"),
        ("real-time factor", "rtf", 1, "{:.3f}"),
        ("encoder state carried (KiB)", "state", 1 / 1024, "{:.1f}"),
        ("peak RSS growth while streaming (MiB)", "peak", 1 / 2**20, "{:.1f}"),
        ("beam search joint calls per encoder frame", "joint_per_frame", 1, "{:.1f}"),
        ("encoder frames streamed", "frames", 1, "{:.0f}"),
    ]
    print("| metric | RWKV-BAT | chunk conformer | RWKV / conformer |")
    print("|---|---|---|---|")
    for label, key, scale, fmt in rows:
        a, b = ours[key] * scale, peer[key] * scale
        print(
            f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |"
            if b
            else f"| {label} | {fmt.format(a)} | {fmt.format(b)} | - |"
        )
    drift = ours["chunk_after"] / ours["chunk_start"]
    print()
    for name, label in (("rwkv", "RWKV"), ("conformer", "conformer")):
        r = results[name]
        print(
            f"{label}: {r['frames']} encoder frames streamed, {r['full_frames']} in full-utterance decoding "
            f"({100 * (r['frames'] / r['full_frames'] - 1):+.1f}%)"
        )
    print(
        f"RWKV per-chunk time after {args.after_s:.0f} s / at start: {drift:.3f} (target <= 1.10: "
        f"{'met' if drift <= 1.10 else 'MISSED'})"
    )
    print(f"RWKV real-time factor: {ours['rtf']:.3f} (target <= 0.1: {'met' if ours['rtf'] <= 0.1 else 'MISSED'})")
    faster = ours["chunk_start"] < peer["chunk_start"] and ours["chunk_after"] < peer["chunk_after"]
    print(f"RWKV per-chunk time below the conformer's at {args.window_ms} ms: {'met' if faster else 'MISSED'}")
    params = ours["params"] / peer["params"]
    print(f"encoder parameter ratio {params:.3f} ({'within' if abs(params - 1) <= 0.1 else 'OUTSIDE'} +-10%)")


if __name__ == "__main__":
    main()
