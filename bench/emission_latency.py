"""Per-word emission delay of streaming decoding, for trained models of the demo recipe.

    python bench/emission_latency.py \\
        --model rwkv_bat=egs2/synth_en/asr1/exp/asr_rwkv_bat \\
        --model conformer_chunk=egs2/synth_en/asr1/exp/asr_conformer_chunk \\
        --text egs2/synth_en/asr1/data/test/text --windows 160 320 640

Test audio whose word ends are known exactly: each sentence is synthesized
word by word with espeak-ng in a voice unseen in training, and the words are
joined with 60 ms pauses, so the end of word i is where its audio ends
(trailing silence trimmed). Each model decodes it through ESPnet's streaming
path (``Speech2Text.streaming_decode`` over windows of ``decoding_window``
samples, as ``asr_transducer_inference --streaming true`` does). A word of
the final hypothesis is emitted at the end of the first window from which
every partial hypothesis holds the final one up to that word; for words that
match the reference (difflib alignment), delay = emission time - true end.
Compute time is not included (see bench/streaming.py for it).
"""
import argparse
import contextlib
import difflib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio
import yaml

import espnet_rwkv  # noqa: F401  (registers the RWKV encoder with ESPnet)
from espnet2.bin.asr_transducer_inference import Speech2Text

SAMPLE_RATE = 16000
PAUSE_S = 0.06
VOICE = "en-gb-x-rp+m7"  # a test voice of egs2/synth_en (never in training)
SILENCE_DB = -40.0


def synthesize_words(words, voice):
    """(audio (S,) float32 at 16 kHz, end time in s of each word)."""
    pieces, ends, t = [], [], 0.0
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    for word in words:
        wav = subprocess.run(["espeak-ng", "-v", voice, "--stdout", word], check=True, capture_output=True).stdout
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
        loud = np.flatnonzero(np.abs(audio) > 10 ** (SILENCE_DB / 20) * np.abs(audio).max())
        if loud.size == 0:
            raise RuntimeError(f"espeak-ng produced silence for {word!r}")
        audio = audio[loud[0]: loud[-1] + 1]
        pieces += [pause, audio]
        t += PAUSE_S + audio.size / SAMPLE_RATE
        ends.append(t)
    pieces.append(pause)
    return np.concatenate(pieces), ends


def emission_times(speech2text, audio, window_ms):
    """Final words and, per word, the audio time (s) at which it was emitted for good."""
    step = speech2text.audio_processor.decoding_samples
    n_steps = len(audio) // step
    partials = []  # (time, words) after each window
    for i in range(n_steps + 1):
        final = i == n_steps
        chunk = audio[i * step: len(audio) if final else (i + 1) * step]
        hyps = speech2text.streaming_decode(torch.from_numpy(chunk), is_final=final)
        text = speech2text.hypotheses_to_results(hyps)[0][0] if hyps else ""
        partials.append((len(audio) / SAMPLE_RATE if final else (i + 1) * step / SAMPLE_RATE, text.split()))
    words = partials[-1][1]
    emitted = []
    for j in range(len(words)):
        first = len(partials) - 1
        while first > 0 and partials[first - 1][1][: j + 1] == words[: j + 1]:
            first -= 1
        emitted.append(partials[first][0])
    return words, emitted


def load(exp_dir, window_ms, decode_conf):
    """Speech2Text of a recipe's exp/asr_* dir; its config names files relative to the recipe dir."""
    exp_dir = Path(exp_dir).resolve()
    conf = yaml.safe_load(Path(decode_conf).read_text())
    conf.update(streaming=True, decoding_window=window_ms)
    with contextlib.chdir(exp_dir.parents[1]):
        return Speech2Text(
            asr_train_config=exp_dir / "config.yaml", asr_model_file=exp_dir / "valid.loss.ave.pth", **conf
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="name=exp_dir (config.yaml, valid.loss.ave.pth)")
    parser.add_argument("--text", required=True, help="Kaldi text file of test sentences")
    parser.add_argument("--windows", type=int, nargs="+", default=[160, 320, 640])
    parser.add_argument("--num", type=int, default=40, help="sentences to use")
    parser.add_argument("--decode_conf", default="egs2/synth_en/asr1/conf/decode_streaming_320ms.yaml",
                        help="beam search options (decoding_window is replaced)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    sentences = [line.split(maxsplit=1)[1].lower().split() for line in Path(args.text).read_text().splitlines()]
    tests = [synthesize_words(words, VOICE) + (words,) for words in sentences[: args.num]]
    print(f"# {len(tests)} sentences, {sum(len(t[2]) for t in tests)} words, voice {VOICE}, "
          f"{sum(len(t[0]) for t in tests) / SAMPLE_RATE:.0f} s of audio", file=sys.stderr)
    print("| system | window ms | words matched / reference | word errors % (difflib) | mean delay ms | p50 ms | p90 ms |")
    print("|---|---|---|---|---|---|---|")
    for name, exp_dir in (m.split("=", 1) for m in args.model):
        for window in args.windows:
            speech2text = load(exp_dir, window, args.decode_conf)
            delays, errors, n_ref = [], 0, 0
            for audio, ends, ref in tests:
                hyp, emitted = emission_times(speech2text, audio, window)
                ops = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
                for block in ops.get_matching_blocks():
                    for k in range(block.size):
                        delays.append(emitted[block.b + k] - ends[block.a + k])
                errors += sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops.get_opcodes() if tag != "equal")
                n_ref += len(ref)
            matched = len(delays)
            d = np.array(delays) * 1000 if delays else np.array([np.nan])
            print(f"| {name} | {window} | {matched} / {n_ref} | {100 * errors / n_ref:.1f} | {d.mean():.0f} "
                  f"| {np.percentile(d, 50):.0f} | {np.percentile(d, 90):.0f} |", flush=True)


if __name__ == "__main__":
    main()
