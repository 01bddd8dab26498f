"""Check a Kaldi-style data dir before training: every utterance usable, bad ones named.

    python -m espnet_rwkv.data_check data/train --config conf/train.yaml
    python -m espnet_rwkv.data_check data/train --min_seconds 0.1

Reads ``wav.scp`` (``utt_id path``; files, not pipes) and ``text``
(``utt_id transcript``) and refuses, naming each utterance id: audio that
cannot be read, NaN or infinite samples, samples outside ``[-max_abs,
max_abs]`` (float audio must be scaled to [-1, 1]; far beyond, the features
overflow), audio shorter than the model's subsampling needs, an empty or
missing transcript, and a transcript without audio. Exit status 1 if any.

The shortest audio comes from ``--config`` (a training config: the front end's
frames and the encoder's input block decide it) or ``--min_seconds``.
"""

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import soundfile

DEFAULT_MAX_ABS = 2.0


def read_table(path: Path) -> Dict[str, str]:
    """``utt_id rest of line`` per line -> {utt_id: rest} (rest may be empty)."""
    table = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            utt_id, _, rest = line.strip().partition(" ")
            table[utt_id] = rest.strip()
    return table


def check_data_dir(data_dir: Path, min_samples: int, max_abs: float = DEFAULT_MAX_ABS) -> List[str]:
    """Problems of the data dir, one ``utt_id: what`` per bad utterance (empty if all are usable)."""
    wavs, texts = read_table(data_dir / "wav.scp"), read_table(data_dir / "text")
    problems = []
    for utt_id, path in wavs.items():
        problem = _audio_problem(path, min_samples, max_abs)
        if problem is None and not texts.get(utt_id):
            problem = "empty transcript" if utt_id in texts else "no transcript in text"
        if problem:
            problems.append(f"{utt_id}: {problem}")
    problems += [f"{utt_id}: transcript without audio in wav.scp" for utt_id in texts if utt_id not in wavs]
    return problems


def _audio_problem(path: str, min_samples: int, max_abs: float) -> Optional[str]:
    if path.endswith("|"):
        return "is a command (pipe); data_check reads files only"
    try:
        samples, _ = soundfile.read(path, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, TypeError, soundfile.LibsndfileError) as e:
        return f"cannot read {path}: {' '.join(str(e).split())}"
    bad = np.flatnonzero(~np.isfinite(samples).all(axis=1))
    if bad.size:
        return f"{path} has NaN or infinite samples (first at sample {bad[0]})"
    bad = np.flatnonzero((np.abs(samples) > max_abs).any(axis=1))
    if bad.size:
        return f"{path} has samples outside [-{max_abs:g}, {max_abs:g}] (first at sample {bad[0]})"
    if len(samples) < min_samples:
        return f"{path} has {len(samples)} samples, the model needs at least {min_samples}"
    return None


def min_samples_of_config(config: Path) -> int:
    """Fewest samples from which the config's front end and encoder input block make one encoder frame."""
    import torch
    import yaml
    from espnet2.tasks.asr_transducer import frontend_choices

    import espnet_rwkv.espnet  # noqa: F401  (registers the plugin: kaldi_fbank, rwkv bodies)
    from espnet_rwkv.asr.encoder import build_encoder, min_input_frames

    conf = yaml.safe_load(config.read_text())
    frontend = frontend_choices.get_class(conf.get("frontend", "default"))(**conf.get("frontend_conf", {}))
    encoder = build_encoder(frontend.output_size(), **conf["encoder_conf"])
    frames = min_input_frames(encoder.embed)

    def enough(samples: int) -> bool:
        try:
            with torch.no_grad():
                lengths = frontend(torch.zeros(1, samples), torch.tensor([samples]))[1]
        except RuntimeError:  # too short even for the front end (the STFT's reflection padding)
            return False
        return int(lengths[0]) >= frames

    low, high = 1, 1
    while not enough(high):
        low, high = high + 1, 2 * high
    while low < high:  # the fewest samples that are enough, in [low, high]
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return low


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_rwkv.data_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dir", type=Path, help="dir with wav.scp and text")
    shortest = parser.add_mutually_exclusive_group(required=True)
    shortest.add_argument("--config", type=Path, help="training config (yaml) whose model decides the shortest audio")
    shortest.add_argument("--min_seconds", type=float, help="shortest audio, seconds (at 16 kHz)")
    parser.add_argument("--max_abs", type=float, default=DEFAULT_MAX_ABS, help="largest |sample| accepted")
    args = parser.parse_args(argv)
    for name in ("wav.scp", "text"):
        if not (args.data_dir / name).is_file():
            parser.error(f"{args.data_dir / name}: no such file")
    min_samples = min_samples_of_config(args.config) if args.config else round(args.min_seconds * 16000)
    problems = check_data_dir(args.data_dir, min_samples, args.max_abs)
    for problem in problems:
        print(f"espnet_rwkv.data_check: {args.data_dir}: {problem}", file=sys.stderr)
    if problems:
        print(f"espnet_rwkv.data_check: {args.data_dir}: {len(problems)} bad utterance(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
