#!/usr/bin/env python3
"""Build a synth_en corpus offline: English spoken by espeak-ng and flite voices.

Two tasks:
  digits     spoken digit strings ("SEVEN OH THREE ..."), the task a 2-core CPU can learn in
             minutes, as ESPnet's yesno and mini_an4 recipes are for theirs;
  sentences  open-vocabulary sentences from Debian's fortunes, the task for a GPU.

Writes Kaldi-style data dirs (wav.scp, text, utt2spk, spk2utt; sorted) for train, dev and
test. Train, dev and test voices are disjoint: dev and test measure speakers never heard in
training, and dev (used to pick and average checkpoints) shares no voice with test. Every
utterance is brought to one loudness (-20 dBFS RMS) before training's augmentation (tempo,
speed and pitch perturbation, gain, noise), as corpora are level-normalized; flite's voices differ by up to 15 dB
otherwise. Every choice comes from --seed and the utterance's index, so a rerun writes the same
bytes; finished wavs are kept, so an interrupted run resumes.
"""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile

SAMPLE_RATE = 16000
LEVEL_DBFS = -20.0
DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]

ESPEAK_TRAIN_LANGS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
# espeak-ng's voice variants (`espeak-ng --voices=variant`) but the held-out ones and the whispers.
ESPEAK_HELD_OUT_VARIANTS = {"f4", "m7", "f5", "m6", "whisper", "whisperf"}
ESPEAK_VARIANTS = """adam Alex Alicia Andrea Andy Annie antonio aunty belinda benjamin boris caleb david Demonic Denis
Diogo ed edward edward2 Gene Gene2 gustave announcer Henrique Hugo iven iven2 iven3 iven4 Jacky john kaukovalta
Lee linda marcelo Marco Mario max Michael michel miguel Mike Mr Nguyen pablo paul pedro quincy RicishayMax RicishayMax2
RicishayMax3 rob robert robosoft robosoft2 robosoft3 robosoft4 robosoft5 robosoft6 robosoft7 robosoft8
steph steph2 steph3 Storm Tweaky UniRobot zac anika anikaRobot AnxiousAndy fast f1 f2 f3 f4 f5 whisperf grandpa
klatt klatt2 klatt3 klatt4 klatt5 klatt6 m1 m2 m3 m4 m5 m6 m7 m8 norbert sandro shelby travis victor
whisper croak grandma""".split()
ESPEAK_TRAIN_VARIANTS = [v for v in ESPEAK_VARIANTS if v not in ESPEAK_HELD_OUT_VARIANTS]
# flite has three male voices to train on; random pitch shifts (sox) widen them towards other speakers.
FLITE_TRAIN_VOICES = ["awb", "rms", "kal16"]
FLITE_TRAIN_SHARE = 0.3
DEV_VOICES = [("espeak", "en-us+f5"), ("espeak", "en-gb-scotland+m6"), ("flite", "kal")]
# An accent and two variants that training never hears, and flite's only female voice.
TEST_VOICES = [("espeak", "en-gb-x-rp+m7"), ("espeak", "en-gb-x-rp+f4"), ("flite", "slt")]


class Utterance(NamedTuple):
    split: str
    utt: str
    speaker: str
    engine: str
    voice: str
    text: str
    seed: int


def read_sentences(fortunes_dir: Path, min_words: int, max_words: int):
    """Normalized, deduplicated sentences: upper-case letters and apostrophes, single spaces."""
    sentences = set()
    for path in sorted(fortunes_dir.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat / .u8 indexes
        text = path.read_text(encoding="latin-1")
        for fortune in re.split(r"^%$", text, flags=re.M):
            for raw in re.split(r"(?<=[.!?])\s+", " ".join(fortune.split())):
                if re.search(r"\d", raw):
                    continue  # a synthesizer would speak digits the text does not spell
                words = [w.strip("'") for w in re.sub(r"[^A-Za-z']+", " ", raw).upper().split()]
                words = [w for w in words if w]
                if min_words <= len(words) <= max_words:
                    sentences.add(" ".join(words))
    return sorted(sentences)


def digit_strings(count: int, min_words: int, max_words: int, rng: random.Random):
    """``count`` distinct digit strings of min..max digits; zero is spoken "OH" one time in three."""
    strings = set()
    while len(strings) < count:
        digits = [rng.randrange(10) for _ in range(rng.randint(min_words, max_words))]
        strings.add(" ".join("OH" if d == 0 and rng.random() < 1 / 3 else DIGITS[d] for d in digits))
    return sorted(strings)


def speaker_id(engine: str, voice: str) -> str:
    return f"{engine}_{voice.replace('+', '_')}"


def train_voice(rng: random.Random):
    if rng.random() < FLITE_TRAIN_SHARE:
        return "flite", rng.choice(FLITE_TRAIN_VOICES)
    return "espeak", f"{rng.choice(ESPEAK_TRAIN_LANGS)}+{rng.choice(ESPEAK_TRAIN_VARIANTS)}"


def plan(args):
    """Every utterance of every set, in a fixed order; texts are disjoint across sets."""
    sizes = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    rng = random.Random(args.seed)
    if args.task == "digits":
        texts = digit_strings(sum(sizes.values()), args.min_words, args.max_words, rng)
    else:
        texts = read_sentences(Path(args.fortunes_dir), args.min_words, args.max_words)
        if sum(sizes.values()) > len(texts):
            sys.exit(f"synthesize.py: asked for {sum(sizes.values())} utterances, fortunes have {len(texts)} sentences")
    rng.shuffle(texts)
    items, offset = [], 0
    for split, size in sizes.items():
        for i in range(size):
            seed = args.seed * 1_000_003 + offset + i
            if split == "train":
                engine, voice = train_voice(random.Random(seed))
            else:
                engine, voice = (TEST_VOICES if split == "test" else DEV_VOICES)[i % 3]
            spk = speaker_id(engine, voice)
            items.append(Utterance(split, f"{spk}-{split}{i:06d}", spk, engine, voice, texts[offset + i], seed))
        offset += size
    return items


def synthesize(item: Utterance, wav_dir: Path) -> Path:
    split, utt, _, engine, voice, text, seed = item
    out = wav_dir / split / f"{utt}.wav"
    if out.exists():
        return out
    augment = split == "train"
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        if engine == "espeak":
            rate, pitch = (rng.randint(120, 200), rng.randint(20, 80)) if augment else (160, 50)
            cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", raw, text.lower()]
        else:
            stretch = rng.uniform(0.85, 1.15) if augment else 1.0
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", text.lower(), "-o", raw]
        subprocess.run(cmd, check=True, capture_output=True)
        # The synthesizers end with up to half a second of silence: keep 0.1 s of it.
        effects = ["reverse", "silence", "1", "0.01", "0.1%", "reverse", "pad", "0", "0.1"]
        if augment:
            # Speed perturbation scales pitch and formants together, as a shorter or longer vocal tract
            # would; flite's three voices are also shifted in pitch alone, towards other speakers.
            effects += ["speed", f"{rng.uniform(0.85, 1.15):.3f}"]
            if engine == "flite":
                effects += ["pitch", f"{rng.uniform(-500, 900):.0f}"]
        resampled = Path(tmp) / "16k.wav"  # -R -D: no random dither, so a rerun writes the same bytes
        sox = ["sox", "-R", "-D", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "32", "-e", "float", resampled]
        subprocess.run([*sox, *effects], check=True, capture_output=True)
        audio, rate = soundfile.read(resampled, dtype="float32")
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))) if audio.size else 0.0
        if rms == 0.0 or not np.isfinite(audio).all():
            raise RuntimeError(f"{engine} {voice} produced no usable audio for {utt}: {text!r}")
        gain_db = LEVEL_DBFS - 20 * np.log10(rms) + (rng.uniform(-10, 6) if augment else 0.0)
        audio = audio * np.float32(10 ** (gain_db / 20))
        if augment:
            snr_db = rng.uniform(15, 40)
            noise = np.random.default_rng(seed).standard_normal(audio.shape).astype(np.float32)
            audio = audio + noise * np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10))
        audio = np.clip(audio, -1.0, 1.0)
        partial = out.with_suffix(".partial.wav")
        soundfile.write(partial, audio, rate, subtype="PCM_16")
        os.replace(partial, out)  # a killed run never leaves a truncated wav under the final name
    return out


def write_data_dir(data_dir: Path, items, wav_dir: Path):
    data_dir.mkdir(parents=True, exist_ok=True)
    items = sorted(items, key=lambda it: it.utt)
    spk2utt = {}
    for it in items:
        spk2utt.setdefault(it.speaker, []).append(it.utt)
    files = {
        "wav.scp": [f"{it.utt} {(wav_dir / it.split / f'{it.utt}.wav').resolve()}" for it in items],
        "text": [f"{it.utt} {it.text}" for it in items],
        "utt2spk": [f"{it.utt} {it.speaker}" for it in items],
        "spk2utt": [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())],
    }
    for name, lines in files.items():
        tmp = data_dir / f".{name}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, data_dir / name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("digits", "sentences"), default="sentences")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--wav_dir", default="downloads/synth_en")
    parser.add_argument("--fortunes_dir", default="/usr/share/games/fortunes")
    parser.add_argument("--num_train", type=int, default=3000)
    parser.add_argument("--num_dev", type=int, default=150)
    parser.add_argument("--num_test", type=int, default=150)
    parser.add_argument("--min_words", type=int, help="words an utterance (default: digits 3, sentences 3)")
    parser.add_argument("--max_words", type=int, help="(default: digits 7, as TIDIGITS' strings; sentences 20)")
    parser.add_argument("--nj", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.min_words = args.min_words or 3
    args.max_words = args.max_words or (7 if args.task == "digits" else 20)

    items = plan(args)
    wav_dir = Path(args.wav_dir) / args.task
    for split in ("train", "dev", "test"):
        (wav_dir / split).mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with Pool(args.nj) as pool:
        for done, _ in enumerate(pool.imap(_synthesize, [(item, wav_dir) for item in items], chunksize=8), 1):
            if done % 500 == 0 or done == len(items):
                print(f"synthesize.py: {done}/{len(items)} utterances, {time.monotonic() - start:.0f} s", flush=True)
    for split in ("train", "dev", "test"):
        write_data_dir(Path(args.data_dir) / split, [it for it in items if it.split == split], wav_dir)


def _synthesize(args):
    return synthesize(*args)


if __name__ == "__main__":
    main()
