"""Decode an ESPnet data dir with an exported model, streaming, on CPU; write ESPnet's ``text`` and the RTF.

    python -m espnet_rwkv.onnx.decode_dir --onnx exp/asr_rwkv_bat/onnx_320ms --data_dir dump/raw/test \\
        --output_dir exp/asr_rwkv_bat/decode_sherpa_onnx_320ms/test [--engine sherpa-onnx|onnxruntime] [--int8]

Each utterance of ``data_dir/wav.scp`` (paths, or Kaldi ``command |`` pipes)
is fed in chunks of the export's ``decode_chunk_len`` (e.g. 320 ms), then
tail padding (silence) so the last window covers the last frame, one thread.
``--engine sherpa-onnx`` (default) runs ``sherpa_onnx.OnlineRecognizer``
(``model_type="lstm"``); ``onnxruntime`` runs ``espnet_rwkv.onnx.decoder``.
Writes ``output_dir/text`` (``utt-id hypothesis``, as ESPnet's inference
writes it, so that asr.sh's scoring stage reads it) and
``output_dir/summary.json`` / ``summary.txt``: utterances, audio seconds,
compute seconds, real-time factor (compute / audio), the per-chunk times.
"""

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import soundfile

from espnet_rwkv.onnx.decoder import SAMPLE_RATE, OnnxStreamingRecognizer, OnnxTransducer, model_files


def read_wav_scp(data_dir: Path) -> Iterator[Tuple[str, np.ndarray]]:
    """(utt-id, float32 samples at 16 kHz) of ``data_dir/wav.scp``."""
    scp = data_dir / "wav.scp"
    if not scp.is_file():
        raise FileNotFoundError(f"{data_dir}: no wav.scp")
    for line in scp.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        utt, source = line.split(maxsplit=1)
        source = source.strip()
        if source.endswith("|"):
            data = subprocess.run(source[:-1], shell=True, check=True, capture_output=True).stdout
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        else:
            audio, rate = soundfile.read(source, dtype="float32")
        if rate != SAMPLE_RATE:
            raise ValueError(f"{utt}: sample rate {rate}, the model needs {SAMPLE_RATE}")
        if audio.ndim != 1:
            raise ValueError(f"{utt}: {audio.shape[1]} channels, the model needs mono")
        yield utt, audio


class SherpaEngine:
    """sherpa-onnx's OnlineRecognizer on one stream at a time."""

    def __init__(self, onnx_dir: Path, int8: bool, threads: int, decoding_method: str, tail_padding: int):
        import sherpa_onnx

        files = model_files(onnx_dir, int8)
        self.recognizer = sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(files["tokens.txt"]),
            encoder=str(files["encoder.onnx"]),
            decoder=str(files["decoder.onnx"]),
            joiner=str(files["joiner.onnx"]),
            num_threads=threads,
            sample_rate=SAMPLE_RATE,
            feature_dim=80,
            decoding_method=decoding_method,
            model_type="lstm",
        )
        self.tail_padding = tail_padding

    def decode(self, audio: np.ndarray, chunk: int) -> Tuple[str, List[float]]:
        rec = self.recognizer
        stream = rec.create_stream()
        times = []
        pieces = [audio[i : i + chunk] for i in range(0, audio.size, chunk)]
        for i, piece in enumerate(pieces + [np.zeros(self.tail_padding, np.float32)]):
            start = time.perf_counter()
            stream.accept_waveform(SAMPLE_RATE, piece)
            if i == len(pieces):
                stream.input_finished()
            while rec.is_ready(stream):
                rec.decode_stream(stream)
            times.append(time.perf_counter() - start)
        return rec.get_result(stream).strip(), times


class OrtEngine:
    """espnet_rwkv.onnx.decoder."""

    def __init__(self, onnx_dir: Path, int8: bool, threads: int, decoding_method: str):
        self.recognizer = OnnxStreamingRecognizer(OnnxTransducer(onnx_dir, int8, threads), decoding_method)

    def decode(self, audio: np.ndarray, chunk: int) -> Tuple[str, List[float]]:
        times = []
        for i in range(0, audio.size, chunk):
            start = time.perf_counter()
            self.recognizer.accept(audio[i : i + chunk])
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        text = self.recognizer.finish().text
        times.append(time.perf_counter() - start)
        return text, times


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_rwkv.onnx.decode_dir",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--onnx", required=True, help="dir from python -m espnet_rwkv.export_onnx")
    parser.add_argument("--data_dir", required=True, help="ESPnet data dir with wav.scp")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--engine", default="sherpa-onnx", choices=["sherpa-onnx", "onnxruntime"])
    parser.add_argument("--int8", action="store_true", help="use the *.int8.onnx files")
    parser.add_argument("--decoding_method", default="greedy_search", choices=["greedy_search", "modified_beam_search"])
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    onnx_dir, output_dir = Path(args.onnx), Path(args.output_dir)
    try:
        model = OnnxTransducer(onnx_dir, args.int8, args.threads)  # checks the files and reads the chunk
        tail = OnnxStreamingRecognizer(model).tail_padding
        engine = (
            SherpaEngine(onnx_dir, args.int8, args.threads, args.decoding_method, tail)
            if args.engine == "sherpa-onnx"
            else OrtEngine(onnx_dir, args.int8, args.threads, args.decoding_method)
        )
    except (OSError, ValueError) as e:
        print(f"espnet_rwkv.onnx.decode_dir: error: {e}", file=sys.stderr)
        return 1
    chunk = model.chunk * SAMPLE_RATE // 100
    output_dir.mkdir(parents=True, exist_ok=True)
    audio_s, compute_s, chunk_times, n = 0.0, 0.0, [], 0
    with open(output_dir / "text", "w", encoding="utf-8") as text_file:
        for utt, audio in read_wav_scp(Path(args.data_dir)):
            text, times = engine.decode(audio, chunk)
            text_file.write(f"{utt} {text}\n" if text else f"{utt}\n")
            audio_s += audio.size / SAMPLE_RATE
            compute_s += sum(times)
            chunk_times += times
            n += 1
    ms = np.array(chunk_times or [0.0]) * 1000
    summary = {
        "engine": args.engine,
        "onnx": str(onnx_dir),
        "int8": args.int8,
        "decoding_method": args.decoding_method,
        "threads": args.threads,
        "chunk_ms": model.chunk * 10,
        "utterances": n,
        "audio_s": round(audio_s, 3),
        "compute_s": round(compute_s, 3),
        "rtf": round(compute_s / audio_s, 5) if audio_s else None,
        "chunk_ms_mean": round(float(ms.mean()), 3),
        "chunk_ms_p50": round(float(np.percentile(ms, 50)), 3),
        "chunk_ms_max": round(float(ms.max()), 3),
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output_dir / "summary.txt").write_text("".join(f"{k}: {v}\n" for k, v in summary.items()))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
