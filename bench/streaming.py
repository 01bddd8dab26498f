"""Streaming decoding on one CPU thread: RWKV-BAT against ESPnet's chunk conformer.

    PYTHONPATH=. python bench/streaming.py                       # the demo configs, random weights
    PYTHONPATH=. python bench/streaming.py --model rwkv=egs2/synth_en/asr1/exp/asr_rwkv_bat \\
        --model conformer=egs2/synth_en/asr1/exp/asr_conformer_chunk   # trained models

Both models stream the same audio (espeak-ng speech, repeated to --seconds)
through ``StreamingRecognizer`` in decoding windows of --window_ms: RWKV on
the exact path, the conformer on ESPnet's ``Speech2Text.streaming_decode``.
Per-chunk compute time (features + encoder + beam search, and the encoder
alone) is the median over the first 10 s of audio and over the 10 s after
--after_s; real-time factor is the total compute over the audio length; peak
memory is the growth of the process's peak RSS while streaming (VmHWM reset
before each model); state is what the encoder carries between chunks. One
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

import espnet_rwkv  # noqa: F401  (registers the RWKV encoder with ESPnet)
from espnet2.bin.asr_transducer_inference import Speech2Text
from espnet2.tasks.asr_transducer import ASRTransducerTask
from espnet_rwkv.asr.streaming import SAMPLE_RATE, StreamingRecognizer, load_speech2text

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


def random_model(name: str, window_ms: int, beam_size: int, workdir: Path) -> Speech2Text:
    """The recipe's config with random weights (no normalization stats: timing only)."""
    out = workdir / name
    out.mkdir()
    (out / "tokens.txt").write_text("\n".join(TOKENS) + "\n")
    args = ASRTransducerTask.get_parser().parse_args(
        ["--config", str(CONFIGS[name]), "--token_list", str(out / "tokens.txt"), "--output_dir", str(out)]
    )
    args.normalize = None
    (out / "config.yaml").write_text(yaml.safe_dump(vars(args)))
    torch.manual_seed(0)
    return Speech2Text(asr_train_config=out / "config.yaml", streaming=True, decoding_window=window_ms, beam_size=beam_size)


class EncoderTimer:
    """Adds up the time spent in the encoder's streaming call during one decoding window."""

    def __init__(self, encoder):
        self.seconds = 0.0
        name = "stream_forward" if hasattr(encoder, "stream_forward") else "chunk_forward"
        inner = getattr(encoder, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(encoder, name, timed)


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


def measure(speech2text: Speech2Text, audio: torch.Tensor, after_s: float) -> dict:
    recognizer = StreamingRecognizer(speech2text)
    encoder = speech2text.asr_model.encoder
    timer = EncoderTimer(encoder)
    warm = audio[: 5 * recognizer.window]
    recognizer.accept(warm)
    recognizer.finish()

    rss0 = peak_rss_reset()
    total, encoder_times, ends = [], [], []
    state = 0
    for start in range(0, audio.numel(), recognizer.window):
        timer.seconds = 0.0
        for partial in recognizer.accept(audio[start: start + recognizer.window]):
            total.append(partial.compute_s)
            encoder_times.append(timer.seconds)
            ends.append(partial.end_s)
            state = max(state, encoder_state_nbytes(encoder))
    final = recognizer.finish()
    peak = peak_rss() - rss0

    def median_ms(values, lo, hi):
        return 1000 * statistics.median(v for v, end in zip(values, ends) if lo < end <= hi)

    return {
        "params": sum(p.numel() for p in speech2text.asr_model.encoder.parameters()),
        "model_params": sum(p.numel() for p in speech2text.asr_model.parameters()),
        "chunk_start": median_ms(total, 0, 10),
        "chunk_after": median_ms(total, after_s, after_s + 10),
        "enc_start": median_ms(encoder_times, 0, 10),
        "enc_after": median_ms(encoder_times, after_s, after_s + 10),
        "rtf": (sum(total) + final.compute_s) / (audio.numel() / SAMPLE_RATE),
        "state": state,
        "peak": peak,
        "text": final.text,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="rwkv=exp_dir or conformer=exp_dir (trained)")
    parser.add_argument("--window_ms", type=int, default=320)
    parser.add_argument("--after_s", type=float, default=120.0)
    parser.add_argument("--beam_size", type=int, default=4)
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
                s2t = random_model(name, args.window_ms, args.beam_size, Path(tmp))
            with torch.inference_mode():
                results[name] = measure(s2t, audio, args.after_s)
            del s2t

    ours, peer = results["rwkv"], results["conformer"]
    weights = ", ".join(f"{n}: {'trained ' + trained[n] if n in trained else 'random weights'}" for n in CONFIGS)
    print(f"# {args.window_ms} ms windows, beam {args.beam_size}, one thread, torch {torch.__version__}; {weights}")
    print(f"# {audio.numel() / SAMPLE_RATE:.1f} s of espeak-ng speech; 'after' = median over "
          f"{args.after_s:.0f}-{args.after_s + 10:.0f} s, 'start' = over 0-10 s")
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
    ]
    print("| metric | RWKV-BAT | chunk conformer | RWKV / conformer |")
    print("|---|---|---|---|")
    for label, key, scale, fmt in rows:
        a, b = ours[key] * scale, peer[key] * scale
        print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {a / b:.2f} |" if b else f"| {label} | {fmt.format(a)} | {fmt.format(b)} | - |")
    drift = ours["chunk_after"] / ours["chunk_start"]
    print()
    print(f"RWKV per-chunk time after {args.after_s:.0f} s / at start: {drift:.3f} (target <= 1.10: "
          f"{'met' if drift <= 1.10 else 'MISSED'})")
    print(f"RWKV real-time factor: {ours['rtf']:.3f} (target <= 0.1: {'met' if ours['rtf'] <= 0.1 else 'MISSED'})")
    faster = ours["chunk_start"] < peer["chunk_start"] and ours["chunk_after"] < peer["chunk_after"]
    print(f"RWKV per-chunk time below the conformer's at {args.window_ms} ms: {'met' if faster else 'MISSED'}")
    params = ours["params"] / peer["params"]
    print(f"encoder parameter ratio {params:.3f} ({'within' if abs(params - 1) <= 0.1 else 'OUTSIDE'} +-10%)")


if __name__ == "__main__":
    main()
