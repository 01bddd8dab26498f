"""Stream audio through a transducer model, chunk by chunk, and print what it hears.

    python -m espnet_rwkv.stream --model exp/asr_rwkv_bat audio.wav [more.wav ...]
    python -m espnet_rwkv.stream --model packed_model.zip --chunk_ms 160 a.wav
    arecord -f S16_LE -r 16000 -c 1 -t raw | python -m espnet_rwkv.stream --model m.zip -
    python -m espnet_rwkv.stream --onnx exported_dir audio.wav   # onnxruntime only, no torch

With ``--onnx`` (a dir from ``python -m espnet_rwkv.export_onnx``) the audio is
decoded by onnxruntime as sherpa-onnx does (``espnet_rwkv.onnx.decoder``), in
the export's chunk; torch and ESPnet are not imported.

The model is a packed zip (asr.sh's packing stage) or an exp dir (config.yaml
and a checkpoint; see ``--model_file``). Audio is 16 kHz mono: wav/flac files,
or ``-`` for raw signed 16-bit little-endian PCM on stdin, read as it arrives.
Every ``--chunk_ms`` of audio is decoded (RWKV encoders exactly, as a full
utterance would be; others through ESPnet's streaming path); the best
hypothesis is printed whenever it changes, then the final one, then the
compute time per chunk and the real-time factor (on stderr).
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import soundfile

SAMPLE_RATE = 16000
# Float audio is read as it is stored; scaled audio lies in [-1, 1] (PCM is read so). Far beyond, it is not
# scaled audio (integer values in a float file, corruption) and huge values overflow the features to NaN.
MAX_ABS_SAMPLE = 2.0


class AudioError(ValueError):
    """Input audio that cannot be decoded."""


def wav_chunks(path: Path, chunk: int) -> Iterator[np.ndarray]:
    """Chunks (<= chunk,) float32 of a 16 kHz mono audio file."""
    if not path.exists():
        raise AudioError("no such file")
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    try:
        info = soundfile.info(str(path))
    except (OSError, RuntimeError, TypeError, soundfile.LibsndfileError) as e:
        raise AudioError(f"cannot read audio: {e}") from e
    if info.samplerate != SAMPLE_RATE:
        raise AudioError(
            f"sample rate is {info.samplerate} Hz, the model needs {SAMPLE_RATE} Hz "
            f"(e.g. sox {path} -r {SAMPLE_RATE} out.wav)"
        )
    if info.channels != 1:
        raise AudioError(f"has {info.channels} channels, the model needs mono (e.g. sox {path} -c 1 out.wav)")
    if info.frames == 0:
        raise AudioError("has no samples")
    try:
        yield from soundfile.blocks(str(path), blocksize=chunk, dtype="float32")
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise AudioError(f"cannot decode the audio past some point (truncated or corrupted {info.format}?): {e}") from e


def stdin_chunks(chunk: int) -> Iterator[np.ndarray]:
    """Chunks of raw s16le mono PCM from stdin, as float32 in [-1, 1), yielded as they arrive."""
    stream = sys.stdin.buffer
    while True:
        data = stream.read(2 * chunk)
        if not data:
            return
        if len(data) % 2:
            raise AudioError("stdin ended inside a sample: raw input must be signed 16-bit little-endian PCM")
        yield np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def decode(recognizer, chunks: Iterator[np.ndarray], name: str) -> Tuple[List[float], float]:
    """Stream one input, printing hypotheses as they change -> (compute s per decoding window, audio s)."""
    shown, times, samples = "", [], 0
    for chunk in chunks:
        if not np.isfinite(chunk).all():
            bad = samples + int(np.flatnonzero(~np.isfinite(chunk))[0])
            raise AudioError(f"has NaN or infinite samples (first at {bad / SAMPLE_RATE:.3f} s)")
        if chunk.size and np.abs(chunk).max() > MAX_ABS_SAMPLE:
            bad = samples + int(np.flatnonzero(np.abs(chunk) > MAX_ABS_SAMPLE)[0])
            raise AudioError(
                f"has samples outside [-{MAX_ABS_SAMPLE:g}, {MAX_ABS_SAMPLE:g}] (first at {bad / SAMPLE_RATE:.3f} s, "
                f"{chunk.flat[bad - samples]:.3g}): float audio must be scaled to [-1, 1]"
            )
        samples += chunk.size
        for partial in recognizer.accept(recognizer.as_input(chunk) if hasattr(recognizer, "as_input") else chunk):
            times.append(partial.compute_s)
            if partial.text != shown:
                print(f"{name} {partial.end_s:7.2f}s partial: {partial.text}", flush=True)
                shown = partial.text
    if samples == 0:
        raise AudioError("has no samples")
    final = recognizer.finish()
    times.append(final.compute_s)
    print(f"{name} {final.end_s:7.2f}s final: {final.text}", flush=True)
    return times, final.end_s


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_rwkv.stream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="packed model (.zip) or exp dir with config.yaml")
    source.add_argument("--onnx", help="dir of encoder/decoder/joiner.onnx and tokens.txt (espnet_rwkv.export_onnx)")
    parser.add_argument("--int8", action="store_true", help="--onnx: use the *.int8.onnx files")
    parser.add_argument(
        "--decoding_method",
        default="greedy_search",
        choices=["greedy_search", "modified_beam_search"],
        help="--onnx: search (beam: --beam_size paths)",
    )
    parser.add_argument(
        "--model_file", help="checkpoint in an exp dir (default valid.loss.ave.pth, then valid.loss.best.pth)"
    )
    parser.add_argument(
        "--chunk_ms", type=int, default=320, help="audio per decoding step, ms (ESPnet's decoding_window)"
    )
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--left_context", type=int, default=32, help="attention left context (chunk conformer only)")
    parser.add_argument("--threads", type=int, default=1, help="torch (onnxruntime) CPU threads")
    parser.add_argument("audio", nargs="+", help="16 kHz mono audio files, or - for raw s16le PCM on stdin")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    if args.chunk_ms < 10:
        get_parser().error(f"--chunk_ms must be at least 10, got {args.chunk_ms}")
    try:
        recognizer = _onnx_recognizer(args) if args.onnx else _torch_recognizer(args)
    except Exception as e:  # whatever the cause: one line, and no audio decoded
        model = args.onnx or args.model
        print(f"espnet_rwkv.stream: error: cannot load model {model}: {_one_line(e)}", file=sys.stderr)
        return 1
    chunk = args.chunk_ms * SAMPLE_RATE // 1000
    failed = False
    for path in args.audio:
        chunks = stdin_chunks(chunk) if path == "-" else wav_chunks(Path(path), chunk)
        name = "stdin" if path == "-" else path
        start = time.perf_counter()
        try:
            times, audio_s = decode(recognizer, chunks, name)
        except Exception as e:  # one line per failed file; the others still decode
            print(f"espnet_rwkv.stream: error: {name}: {_one_line(e)}", file=sys.stderr)
            recognizer.reset()
            failed = True
            continue
        ms = np.array(times) * 1000
        print(
            f"{name}: {len(ms)} chunks of {args.chunk_ms} ms, compute per chunk mean {ms.mean():.1f} ms, "
            f"p50 {np.percentile(ms, 50):.1f} ms, max {ms.max():.1f} ms; real-time factor "
            f"{ms.sum() / 1000 / audio_s:.3f} ({audio_s:.2f} s of audio, {time.perf_counter() - start:.2f} s wall)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _one_line(error: Exception) -> str:
    """The error's message on one line; its type too where the message alone may not say what failed."""
    message = " ".join(str(error).split()) or "(no message)"
    return message if isinstance(error, (AudioError, OSError)) else f"{type(error).__name__}: {message}"


def _torch_recognizer(args):
    import torch

    import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)
    from espnet_rwkv.asr.recognizer import StreamingRecognizer, load_speech2text

    torch.set_num_threads(args.threads)
    speech2text = load_speech2text(
        args.model,
        args.chunk_ms,
        model_file=args.model_file,
        beam_size=args.beam_size,
        left_context=args.left_context,
        device="cpu",
    )
    recognizer = StreamingRecognizer(speech2text)
    recognizer.as_input = torch.from_numpy
    return recognizer


def _onnx_recognizer(args):
    """The export's own chunk (``decode_chunk_len``) is its decoding window; ``--chunk_ms`` sets the reads."""
    from espnet_rwkv.onnx.decoder import OnnxStreamingRecognizer, OnnxTransducer

    model = OnnxTransducer(args.onnx, int8=args.int8, threads=args.threads)
    return OnnxStreamingRecognizer(model, args.decoding_method, max_active_paths=args.beam_size)


if __name__ == "__main__":
    sys.exit(main())
