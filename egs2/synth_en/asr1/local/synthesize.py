#!/usr/bin/env python3
"""Build the synth_en corpus offline: fortunes sentences spoken by espeak-ng and flite.

Writes Kaldi-style data dirs (wav.scp, text, utt2spk, spk2utt; sorted) for
train, dev and test. Sentences are disjoint across sets; the test voices are
never used for train or dev. Every choice (sentence, voice, rate, pitch,
tempo, gain, noise) comes from --seed and the utterance's index, so a rerun
writes the same bytes; finished wavs are kept, so an interrupted run resumes.
"""

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile

SAMPLE_RATE = 16000
ESPEAK_TRAIN_LANGS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
ESPEAK_TRAIN_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "klatt", "klatt2", "croak"]
FLITE_TRAIN_VOICES = ["kal16", "awb", "rms"]
# Unseen in training: an accent and two variants espeak-ng never trains on, and flite's slt.
TEST_VOICES = [("espeak", "en-gb-x-rp+m7"), ("espeak", "en-gb-x-rp+f4"), ("flite", "slt")]
TRAIN_VOICES = [("espeak", f"{lang}+{var}") for lang in ESPEAK_TRAIN_LANGS for var in ESPEAK_TRAIN_VARIANTS] + [
    ("flite", voice) for voice in FLITE_TRAIN_VOICES
]


class Utterance(NamedTuple):
    split: str
    utt: str
    speaker: str
    engine: str
    voice: str
    sentence: str
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


def speaker_id(engine: str, voice: str) -> str:
    return f"{engine}_{voice.replace('+', '_')}"


def plan(args):
    """Every utterance of every set, in a fixed order."""
    sentences = read_sentences(Path(args.fortunes_dir), args.min_words, args.max_words)
    sizes = {"train": args.num_train, "dev": args.num_dev, "test": args.num_test}
    if sum(sizes.values()) > len(sentences):
        sys.exit(f"synthesize.py: asked for {sum(sizes.values())} utterances, fortunes have {len(sentences)} sentences")
    rng = random.Random(args.seed)
    rng.shuffle(sentences)
    items, offset = [], 0
    for split, size in sizes.items():
        voices = TEST_VOICES if split == "test" else TRAIN_VOICES
        for i in range(size):
            engine, voice = voices[i % len(voices)]
            spk = speaker_id(engine, voice)
            seed = args.seed * 1_000_003 + offset + i
            items.append(Utterance(split, f"{spk}-{split}{i:06d}", spk, engine, voice, sentences[offset + i], seed))
        offset += size
    return items


def synthesize(item: Utterance, wav_dir: Path, perturb: bool) -> Path:
    split, utt, _, engine, voice, sentence, seed = item
    out = wav_dir / split / f"{utt}.wav"
    if out.exists():
        return out
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        if engine == "espeak":
            cmd = [
                "espeak-ng",
                "-v",
                voice,
                "-s",
                str(rng.randint(130, 190)),
                "-p",
                str(rng.randint(30, 70)),
                "-w",
                raw,
                sentence.lower(),
            ]
        else:
            cmd = [
                "flite",
                "-voice",
                voice,
                "--setf",
                f"duration_stretch={rng.uniform(0.85, 1.15):.3f}",
                "-t",
                sentence.lower(),
                "-o",
                raw,
            ]
        subprocess.run(cmd, check=True, capture_output=True)
        effects = ["tempo", f"{rng.uniform(0.9, 1.1):.3f}", "gain", f"{rng.uniform(-6, 0):.2f}"] if perturb else []
        resampled = Path(tmp) / "16k.wav"  # -R -D: no random dither, so a rerun writes the same bytes
        subprocess.run(
            ["sox", "-R", "-D", raw, "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", resampled, *effects],
            check=True,
            capture_output=True,
        )
        audio, rate = soundfile.read(resampled, dtype="float32")
        if perturb:
            snr_db = rng.uniform(20, 40)
            noise = np.random.default_rng(seed).standard_normal(audio.shape).astype(np.float32)
            audio = audio + noise * np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10))
            audio = np.clip(audio, -1.0, 1.0)
        if audio.size == 0 or not np.isfinite(audio).all():
            raise RuntimeError(f"{engine} {voice} produced no usable audio for {utt}: {sentence!r}")
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
        "text": [f"{it.utt} {it.sentence}" for it in items],
        "utt2spk": [f"{it.utt} {it.speaker}" for it in items],
        "spk2utt": [f"{spk} {' '.join(utts)}" for spk, utts in sorted(spk2utt.items())],
    }
    for name, lines in files.items():
        tmp = data_dir / f".{name}.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, data_dir / name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--wav_dir", default="downloads/synth_en")
    parser.add_argument("--fortunes_dir", default="/usr/share/games/fortunes")
    parser.add_argument("--num_train", type=int, default=3000)
    parser.add_argument("--num_dev", type=int, default=150)
    parser.add_argument("--num_test", type=int, default=150)
    parser.add_argument("--min_words", type=int, default=3)
    parser.add_argument("--max_words", type=int, default=20)
    parser.add_argument("--nj", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    items = plan(args)
    wav_dir = Path(args.wav_dir)
    for split in ("train", "dev", "test"):
        (wav_dir / split).mkdir(parents=True, exist_ok=True)
    done = 0
    with Pool(args.nj) as pool:
        jobs = [pool.apply_async(synthesize, (item, wav_dir, item.split != "test")) for item in items]
        for job in jobs:
            job.get()
            done += 1
            if done % 200 == 0 or done == len(items):
                print(f"synthesize.py: {done}/{len(items)} utterances", flush=True)
    for split in ("train", "dev", "test"):
        write_data_dir(Path(args.data_dir) / split, [it for it in items if it.split == split], wav_dir)


if __name__ == "__main__":
    main()
