"""Streaming RWKV-BAT on one CPU thread: the Python recognizer against its ONNX export (onnxruntime, sherpa-onnx).

    PYTHONPATH=. python bench/onnx_streaming.py [--seconds 20] [--chunks 160 320 640] [--repeats 2]

The model: the CPU demo's RWKV-BAT config (egs2/synth_en/asr1/conf/digits/train_rwkv_bat.yaml,
deployable: kaldi_fbank features, stateless decoder) with random weights and a blank bias on the
joint network (``test/deployable.py``'s ``make_exp``, as the ONNX tests), global MVN from
synthetic statistics. It is exported per
chunk (``espnet_rwkv.onnx.export``, fp32 and int8). All decoders stream the same audio
(espeak-ng speech repeated to --seconds) in pieces of the chunk, greedy search, one thread:

- python: ``StreamingRecognizer`` (exact features, torch streaming encoder) with ``GreedySearch``;
- onnxruntime: ``espnet_rwkv.onnx.decoder`` (numpy + onnxruntime + kaldi-native-fbank);
- sherpa-onnx fp32 / int8: ``sherpa_onnx.OnlineRecognizer`` (``model_type="lstm"``).

Per-chunk time is the median compute per fed chunk; RTF the total compute over the audio length;
each is the minimum over --repeats streams (the machine may be shared). One table: each figure,
the Python recognizer's figure measured in this process, and their ratio (python / figure).
Model file sizes follow.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from espnet2.bin.asr_transducer_inference import Speech2Text

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet)
from espnet_rwkv.asr.greedy_search import GreedySearch
from espnet_rwkv.asr.recognizer import StreamingRecognizer
from espnet_rwkv.onnx.decoder import OnnxStreamingRecognizer, OnnxTransducer
from espnet_rwkv.onnx.export import export_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))
from deployable import RATE, TEXT, espeak_speech, make_exp  # noqa: E402  (the tests' random deployable models)

# The CPU demo's RWKV-BAT config: kaldi_fbank features and a stateless decoder, as exported.
CONFIG = ROOT / "egs2" / "synth_en" / "asr1" / "conf" / "digits" / "train_rwkv_bat.yaml"


def speech(seconds: float) -> np.ndarray:
    """espeak-ng speech repeated to ``seconds``."""
    audio = espeak_speech(TEXT)
    return np.tile(audio, int(seconds * RATE) // audio.size + 1)[: int(seconds * RATE)]


def timed_stream(recognizer, pieces):
    """Feed ``pieces`` to a recognizer with ``accept``/``finish``: a function giving (seconds per call, text)."""

    def once():
        times = []
        for piece in pieces:
            start = time.perf_counter()
            recognizer.accept(piece)
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        text = recognizer.finish().text
        times.append(time.perf_counter() - start)
        return times, text

    return once


def chunks(audio: np.ndarray, chunk_ms: int) -> list:
    size = chunk_ms * RATE // 1000
    return [audio[i : i + size] for i in range(0, audio.size, size)]


def run_python(exp: Path, audio: np.ndarray, chunk_ms: int):
    s2t = Speech2Text(
        asr_train_config=exp / "config.yaml",
        asr_model_file=exp / "model.pth",
        streaming=True,
        decoding_window=chunk_ms,
        beam_size=1,
    )
    s2t.beam_search = GreedySearch(s2t.asr_model.decoder, s2t.asr_model.joint_network)
    return timed_stream(StreamingRecognizer(s2t), [torch.from_numpy(c) for c in chunks(audio, chunk_ms)])


def run_ort(onnx_dir: Path, audio: np.ndarray, chunk_ms: int, int8: bool = False):
    recognizer = OnnxStreamingRecognizer(OnnxTransducer(onnx_dir, int8=int8, threads=1))
    return timed_stream(recognizer, chunks(audio, chunk_ms))


def run_sherpa(onnx_dir: Path, audio: np.ndarray, chunk_ms: int, int8: bool, tail: int):
    import sherpa_onnx

    suffix = ".int8.onnx" if int8 else ".onnx"
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(onnx_dir / "tokens.txt"),
        encoder=str(onnx_dir / f"encoder{suffix}"),
        decoder=str(onnx_dir / f"decoder{suffix}"),
        joiner=str(onnx_dir / f"joiner{suffix}"),
        num_threads=1,
        model_type="lstm",
        decoding_method="greedy_search",
    )
    pieces = chunks(audio, chunk_ms)

    def once():
        stream = rec.create_stream()
        times = []
        for i, piece in enumerate(pieces + [np.zeros(tail, np.float32)]):
            start = time.perf_counter()
            stream.accept_waveform(RATE, piece)
            if i == len(pieces):
                stream.input_finished()
            while rec.is_ready(stream):
                rec.decode_stream(stream)
            times.append(time.perf_counter() - start)
        return times, rec.get_result(stream).strip()

    return once


def measure(once, repeats: int, audio_s: float):
    best = None
    for _ in range(repeats):
        times, text = once()
        if best is None or sum(times) < sum(best[0]):
            best = (times, text)
    times, text = best
    return {"chunk_ms": statistics.median(times) * 1000, "rtf": sum(times) / audio_s, "text": text}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, nargs="+", default=[160, 320, 640])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--blank_bias", type=float, default=4.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    audio = speech(args.seconds)
    audio_s = audio.size / RATE
    rows, sizes = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        exp = make_exp(Path(tmp) / "exp", CONFIG, blank_bias=args.blank_bias)
        sizes["torch checkpoint (model.pth)"] = (exp / "model.pth").stat().st_size
        s2t = Speech2Text(asr_train_config=exp / "config.yaml", asr_model_file=exp / "model.pth")
        model, tokens = s2t.asr_model.eval(), list(s2t.asr_model.token_list)
        for chunk_ms in args.chunks:
            onnx_dir = Path(tmp) / f"onnx_{chunk_ms}"
            export_model(model, tokens, onnx_dir, chunk_ms=chunk_ms, int8=True)
            if not sizes.get("onnx fp32 (encoder+decoder+joiner)"):
                sizes["onnx fp32 (encoder+decoder+joiner)"] = sum(
                    (onnx_dir / f"{n}.onnx").stat().st_size for n in ("encoder", "decoder", "joiner")
                )
                sizes["onnx int8 (encoder+decoder+joiner)"] = sum(
                    (onnx_dir / f"{n}.int8.onnx").stat().st_size for n in ("encoder", "decoder", "joiner")
                )
            tail = OnnxStreamingRecognizer(OnnxTransducer(onnx_dir)).tail_padding
            python = measure(run_python(exp, audio, chunk_ms), args.repeats, audio_s)
            systems = {
                "onnxruntime (ours)": measure(run_ort(onnx_dir, audio, chunk_ms), args.repeats, audio_s),
                "sherpa-onnx fp32": measure(run_sherpa(onnx_dir, audio, chunk_ms, False, tail), args.repeats, audio_s),
                "sherpa-onnx int8": measure(run_sherpa(onnx_dir, audio, chunk_ms, True, tail), args.repeats, audio_s),
            }
            for name, result in systems.items():
                for metric in ("chunk_ms", "rtf"):
                    rows.append((f"{chunk_ms} ms", name, metric, result[metric], python[metric]))
            texts = {"python": python["text"], **{k: v["text"] for k, v in systems.items()}}
            print(
                f"# {chunk_ms} ms texts ({len(texts['python'])} chars): "
                + ", ".join(
                    f"{k} {'==' if v == texts['python'] else '!='} python" for k, v in texts.items() if k != "python"
                )
            )
    print(
        f"\nRWKV-BAT demo size (random weights, blank bias {args.blank_bias}), {audio_s:.0f} s of speech, "
        "1 CPU thread, greedy search"
    )
    print("| chunk | system | metric | figure | python StreamingRecognizer | ratio (python / figure) |")
    print("|---|---|---|---|---|---|")
    for chunk, name, metric, ours, peer in rows:
        unit = "ms per chunk" if metric == "chunk_ms" else "RTF"
        fmt = "{:.2f}" if metric == "chunk_ms" else "{:.4f}"
        print(f"| {chunk} | {name} | {unit} | {fmt.format(ours)} | {fmt.format(peer)} | {peer / ours:.1f}x |")
    print("\n| model file | MB |\n|---|---|")
    for name, size in sizes.items():
        print(f"| {name} | {size / 1e6:.2f} |")


if __name__ == "__main__":
    main()
