"""Per-word emission delay of streaming decoding, for trained models of the demo recipe.

    python bench/emission_latency.py \\
        --model rwkv_bat=egs2/synth_en/asr1/exp/asr_rwkv_bat \\
        --model conformer_chunk=egs2/synth_en/asr1/exp/asr_conformer_chunk \\
        --text egs2/synth_en/asr1/data/test/text --windows 160 320 640

Models: exp dirs (config.yaml and valid.loss.ave.pth, else valid.loss.best.pth,
else their one *.pth) or packed zips. Test audio whose word ends are known
exactly: each sentence is synthesized word by word with espeak-ng in a voice
unseen in training, and the words are joined with 60 ms pauses, so the end of
word i is where its audio ends (trailing silence trimmed). Each model decodes
it in windows of ``decoding_window`` ms through
``espnet_rwkv.asr.recognizer.StreamingRecognizer``: RWKV encoders on the exact
path (the same tokens as full-utterance decoding), other encoders through
ESPnet's ``Speech2Text.streaming_decode`` (as ``asr_transducer_inference
--streaming true`` runs them). A word of the final hypothesis is emitted at
the end of the first window from which every partial hypothesis holds the
final one up to that word; for words that match the reference (difflib
alignment), delay = emission time - true end. The last column: sentences
whose streamed words equal the same model's full-utterance decoding. Compute
time is not included (see bench/streaming.py for it).
"""

import argparse
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

import espnet_rwkv.espnet  # noqa: F401  (registers the RWKV encoder with ESPnet)
from espnet_rwkv.asr.recognizer import SAMPLE_RATE, StreamingRecognizer, load_speech2text

PAUSE_S = 0.06
VOICE = "en-gb-x-rp+m7"  # a test voice of egs2/synth_en (never in training)
SILENCE_DB = -40.0


def synthesize_words(words, voice):
    """(audio (S,) float32 at 16 kHz, end time in s of each word)."""
    pieces, ends, t = [], [], 0.0
    pause = np.zeros(int(PAUSE_S * SAMPLE_RATE), dtype=np.float32)
    for word in words:
        # lower case, as egs2/synth_en's synthesize.py reads sentences (upper case can be spelled out)
        wav = subprocess.run(
            ["espeak-ng", "-v", voice, "--stdout", word.lower()], check=True, capture_output=True
        ).stdout
        audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        audio = torchaudio.functional.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
        loud = np.flatnonzero(np.abs(audio) > 10 ** (SILENCE_DB / 20) * np.abs(audio).max())
        if loud.size == 0:
            raise RuntimeError(f"espeak-ng produced silence for {word!r}")
        audio = audio[loud[0] : loud[-1] + 1]
        pieces += [pause, audio]
        t += PAUSE_S + audio.size / SAMPLE_RATE
        ends.append(t)
    pieces.append(pause)
    return np.concatenate(pieces), ends


def emission_times(recognizer: StreamingRecognizer, audio: np.ndarray):
    """Final words and, per word, the audio time (s) at which it was emitted for good."""
    partials = recognizer.accept(torch.from_numpy(audio)) + [recognizer.finish()]
    steps = [(p.end_s, p.text.split()) for p in partials]
    words = steps[-1][1]
    emitted = []
    for j in range(len(words)):
        first = len(steps) - 1
        while first > 0 and steps[first - 1][1][: j + 1] == words[: j + 1]:
            first -= 1
        emitted.append(steps[first][0])
    return words, emitted


def load(model: str, window_ms: int, decode_conf: str) -> StreamingRecognizer:
    """A recognizer of an exp dir or packed zip, with the beam search options of ``decode_conf``."""
    conf = yaml.safe_load(Path(decode_conf).read_text())
    for key in ("streaming", "decoding_window"):
        conf.pop(key, None)
    return StreamingRecognizer(load_speech2text(model, window_ms, **conf))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="name=exp_dir or name=packed.zip")
    parser.add_argument("--text", required=True, help="Kaldi text file of test sentences")
    parser.add_argument("--windows", type=int, nargs="+", default=[160, 320, 640])
    parser.add_argument("--num", type=int, default=40, help="sentences to use")
    parser.add_argument(
        "--decode_conf",
        default="egs2/synth_en/asr1/conf/decode_streaming_320ms.yaml",
        help="beam search options (decoding_window is replaced)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    # words as the text file writes them: the recipe's token case
    sentences = [line.split(maxsplit=1)[1].split() for line in Path(args.text).read_text().splitlines()]
    tests = [synthesize_words(words, VOICE) + (words,) for words in sentences[: args.num]]
    print(
        f"# {len(tests)} sentences, {sum(len(t[2]) for t in tests)} words, voice {VOICE}, "
        f"{sum(len(t[0]) for t in tests) / SAMPLE_RATE:.0f} s of audio",
        file=sys.stderr,
    )
    print(
        "| system | window ms | words matched / reference | word errors % (difflib) | mean delay ms | p50 ms "
        "| p90 ms | sentences as decoded in full % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, model in (m.split("=", 1) for m in args.model):
        for window in args.windows:
            recognizer = load(model, window, args.decode_conf)
            delays, errors, n_ref, same = [], 0, 0, 0
            for audio, ends, ref in tests:
                hyp, emitted = emission_times(recognizer, audio)
                full = recognizer.speech2text.hypotheses_to_results(recognizer.speech2text(audio))[0][0]
                same += (full or "").split() == hyp
                ops = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
                for block in ops.get_matching_blocks():
                    for k in range(block.size):
                        delays.append(emitted[block.b + k] - ends[block.a + k])
                errors += sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops.get_opcodes() if tag != "equal")
                n_ref += len(ref)
            matched = len(delays)
            d = np.array(delays) * 1000 if delays else np.array([np.nan])
            print(
                f"| {name} | {window} | {matched} / {n_ref} | {100 * errors / n_ref:.1f} | {d.mean():.0f} "
                f"| {np.percentile(d, 50):.0f} | {np.percentile(d, 90):.0f} | {100 * same / len(tests):.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
