#!/usr/bin/env python3
"""Plot error rate against decoding window, one line per system (and test set).

Reads the sclite results of asr.sh's stage 13,
``<exp>/asr_<system>/decode_<decode>/<test set>/score_<metric>/result.txt``, where
``<decode>`` is ``full`` or ``streaming_<N>ms`` (the recipes' inference tags), and
draws the error rate (sclite's Err column of the Sum/Avg line) at each window,
full-utterance decoding last.
"""

import argparse
import os
import re
from pathlib import Path
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DECODE = re.compile(r"decode_(full|streaming_(\d+)ms)")
FULL = "full"


def error_rate(result_txt: Path) -> float:
    """The Err column of sclite's Sum/Avg line (``| Sum/Avg | sents words | Corr Sub Del Ins Err S.Err |``)."""
    for line in result_txt.read_text(errors="replace").splitlines():
        if "Sum/Avg" in line:
            fields = [f.split() for f in line.strip().strip("|").split("|")]
            return float(fields[2][4])
    raise ValueError(f"{result_txt}: no Sum/Avg line")


def collect(exp: Path, test_sets, metric: str) -> Dict[Tuple[str, str], Dict[object, float]]:
    """{(system, test set): {window in ms, or "full": error rate}} for every scored decode."""
    curves = {}
    for result in sorted(exp.glob(f"asr_*/decode_*/*/score_{metric}/result.txt")):
        test_set, decode_dir, system_dir = result.parts[-3], result.parts[-4], result.parts[-5]
        match = DECODE.fullmatch(decode_dir)
        if match is None or test_set not in test_sets:
            continue
        window = FULL if match.group(1) == FULL else int(match.group(2))
        curves.setdefault((system_dir[len("asr_") :], test_set), {})[window] = error_rate(result)
    return curves


def ordered(windows) -> List:
    """Windows in ms ascending, then full-utterance decoding."""
    return sorted(w for w in windows if w != FULL) + ([FULL] if FULL in windows else [])


def plot(curves, metric: str, out: Path) -> None:
    columns = ordered({w for points in curves.values() for w in points})
    several_sets = len({test_set for _, test_set in curves}) > 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for (system, test_set), points in sorted(curves.items()):
        keys = ordered(set(points))
        label = f"{system} ({test_set})" if several_sets else system
        ax.plot([columns.index(w) for w in keys], [points[w] for w in keys], marker="o", label=label)
    ax.set_xticks(range(len(columns)), [str(w) for w in columns])
    ax.set_xlabel("decoding window (ms)")
    ax.set_ylabel(f"{metric.upper()} (%)")
    ax.set_title(f"{metric.upper()} against decoding window")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    partial = out.with_name(f".{out.name}.{os.getpid()}.png")  # several run.sh may finish together
    fig.savefig(partial, dpi=120)
    plt.close(fig)
    os.replace(partial, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exp", type=Path, default=Path("exp"))
    parser.add_argument("--test_sets", default="test", help="space-separated test sets, one line per system and set")
    parser.add_argument("--metric", default="wer", choices=["wer", "cer", "ter"])
    parser.add_argument("--out", type=Path, default=Path("wer_vs_latency.png"))
    args = parser.parse_args()
    curves = collect(args.exp, args.test_sets.split(), args.metric)
    if not curves:
        parser.error(
            f"no {args.metric} results under {args.exp}/asr_*/decode_*/{{{args.test_sets}}}/score_{args.metric}"
        )
    plot(curves, args.metric, args.out)
    for (system, test_set), points in sorted(curves.items()):
        shown = ", ".join(f"{w}: {points[w]:.1f}" for w in ordered(set(points)))
        print(f"plot_wer_vs_latency.py: {system} {test_set} {args.metric.upper()} by window (ms) {shown}")
    print(f"plot_wer_vs_latency.py: wrote {args.out}")


if __name__ == "__main__":
    main()
