"""Console progress of ESPnet training and decoding, read from their logs as asr.sh writes them.

asr.sh sends a training run's output to ``exp/<asr>/train.log`` and prints only
that path: on a CPU the console stays silent for many minutes. This follows the
log and prints one line per logged interval and one per epoch::

    [rwkv_bat] epoch 3/12  step 40/86  loss 35.2  | 2m05s elapsed, ETA 6m40s
    [rwkv_bat] epoch 3/12 done: train loss 30.1, valid loss 28.7, 44 s/epoch | 2m12s elapsed, ETA 6m36s

    python -m espnet_rwkv.progress --log exp/asr_rwkv_bat/train.log --label rwkv_bat --pid <asr.sh pid>

Given a decode folder (``exp/<asr>/decode_<tag>``), it counts the utterances that
ESPnet's inference jobs have finished (``Final best hypothesis`` lines in
``<test set>/logdir/asr_inference.*.log``; the decode config sets
``display_hypotheses: true``) against the keys asr.sh split among them::

    [rwkv_bat full] decoded 120/300 utterances | 45s elapsed, ETA 1m07s

It stops when the training log says training finished or when process ``--pid`` ends.
ESPnet's logs are unchanged and complete; this only reads them.
"""

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

_MAX_EPOCH = re.compile(r"\bmax_epoch=(\d+)")
_STEPS = re.compile(r"\[train\] (?:Batch sampler|mini-batch sizes summary).*?N-batch=(\d+)")
_INTERVAL = re.compile(r"(\d+)epoch:train:(\d+)-(\d+)batch:.*?[ ,]loss=([-\d.e+naif]+)")
_EPOCH = re.compile(r"(\d+)epoch results: \[train\].*?[ ,]loss=([-\d.e+naif]+)")
_VALID = re.compile(r"\[valid\].*?[ ,]loss=([-\d.e+naif]+)")
# ESPnet's log lines start with their time: "[host] 2026-12-05 09:21:42,956 (trainer:392) INFO: ..."
_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})")
_RESUMED = re.compile(r"(?:resumed|Resumed).*?epoch[^\d]*(\d+)|(\d+)/(\d+)epoch started")
_FINISHED = re.compile(r"The training was finished at (\d+) epochs")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class TrainingProgress:
    """Turns ESPnet trainer log lines into progress lines.

    Times come from the log lines' own time stamps, so that a log read late (or
    again) gives the same figures. Steps are counted from the first epoch this run
    trains (a resumed run starts later), so that the rate and the ETA are this run's own.
    """

    label: str
    max_epoch: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    first_epoch: Optional[int] = None
    start: Optional[float] = None
    now: Optional[float] = None
    finished: bool = False

    def feed(self, line: str) -> List[str]:
        """One log line -> the progress lines it gives (often none)."""
        if m := _TIME.search(line):
            self.now = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(m[2]) / 1000
            if self.start is None:
                self.start = self.now
        if self.max_epoch is None and (m := _MAX_EPOCH.search(line)):
            self.max_epoch = int(m[1])
        if self.steps_per_epoch is None and (m := _STEPS.search(line)):
            self.steps_per_epoch = int(m[1])
        if (m := _FINISHED.search(line)) and "epoch" in line:
            self.finished = True
            return [f"[{self.label}] training finished at epoch {m[1]} | {_duration(self.elapsed)} elapsed"]
        if m := re.search(r"(\d+)/(\d+)epoch started", line):
            self.max_epoch = int(m[2])
            if self.first_epoch is None:
                self.first_epoch = int(m[1])
                self.start = self.now
            return []
        if m := _INTERVAL.search(line):
            epoch, step, loss = int(m[1]), int(m[3]), m[4]
            total = f"/{self.steps_per_epoch}" if self.steps_per_epoch else ""
            return [
                f"[{self.label}] epoch {epoch}{self._of_epochs}  step {step}{total}  loss {float(loss):.2f}  "
                f"| {self._timing(epoch - 1, step)}"
            ]
        if m := _EPOCH.search(line):
            epoch = int(m[1])
            valid = f", valid loss {float(v[1]):.2f}" if (v := _VALID.search(line)) else ""
            per_epoch = self.elapsed / max(epoch - self._first + 1, 1)
            return [
                f"[{self.label}] epoch {epoch}{self._of_epochs} done: train loss {float(m[2]):.2f}{valid}, "
                f"{per_epoch:.0f} s/epoch | {self._timing(epoch, 0)}"
            ]
        return []

    @property
    def elapsed(self) -> float:
        return self.now - self.start if self.start is not None and self.now is not None else 0.0

    @property
    def _first(self) -> int:
        return self.first_epoch or 1

    @property
    def _of_epochs(self) -> str:
        return f"/{self.max_epoch}" if self.max_epoch else ""

    def _timing(self, epochs_done: int, steps_done: int) -> str:
        """Elapsed time, and the ETA from this run's rate when the totals are known."""
        text = f"{_duration(self.elapsed)} elapsed"
        if self.max_epoch and self.steps_per_epoch:
            done = (epochs_done - self._first + 1) * self.steps_per_epoch + steps_done
            left = (self.max_epoch - epochs_done) * self.steps_per_epoch - steps_done
            if done > 0:
                text += f", ETA {_duration(self.elapsed / done * max(left, 0))}"
        return text


def follow(path: Path, pid: Optional[int], poll: float = 1.0) -> Iterator[str]:
    """Lines of ``path`` as they are written, until process ``pid`` ends (then the rest of the file).

    Waits for a file written since this call (the log of an earlier run, which
    asr.sh rotates away, is not this run's); a file that is replaced is read
    from its start.
    """
    since = time.time() - 1.0
    handle, inode, partial = None, None, ""
    while True:
        alive = pid is None or _alive(pid)
        if handle is None and path.exists() and path.stat().st_mtime >= since:
            handle, inode = open(path, errors="replace"), path.stat().st_ino
        if handle is not None:
            chunk = handle.read()
            if chunk:
                lines = (partial + chunk).split("\n")
                partial = lines.pop()
                yield from lines
            elif path.exists() and path.stat().st_ino != inode:
                handle.close()
                handle, partial = None, ""
                continue
        if not alive:
            if partial:
                yield partial
            return
        time.sleep(poll)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def report(lines: Iterable[str], progress: TrainingProgress, out=sys.stdout) -> None:
    for line in lines:
        for message in progress.feed(line):
            print(message, file=out, flush=True)
        if progress.finished:
            return


_DECODED = "Final best hypothesis"


def decode_progress(decode_dir: Path, label: str, pid: Optional[int], poll: float = 1.0, out=sys.stdout) -> None:
    """Print a line per tenth of the utterances decoded under ``decode_dir``, until process ``pid`` ends.

    Only files written since this call count: a rerun's folder holds the last run's logs.
    """
    since = time.time() - 1.0
    start = time.monotonic()
    shown = 0
    while True:
        alive = pid is None or _alive(pid)
        total = sum(_count_lines(path) for path in _fresh(decode_dir.glob("*/logdir/keys.*.scp"), since))
        done = sum(
            _count_lines(path, _DECODED) for path in _fresh(decode_dir.glob("*/logdir/asr_inference.*.log"), since)
        )
        step = max(total // 10, 1)
        if total and (done // step > shown // step or done == total > shown):
            elapsed = time.monotonic() - start
            eta = f", ETA {_duration(elapsed / done * (total - done))}" if 0 < done < total else ""
            print(
                f"[{label}] decoded {done}/{total} utterances | {_duration(elapsed)} elapsed{eta}", file=out, flush=True
            )
            shown = done
        if not alive or (total and shown == total):
            return
        time.sleep(poll)


def _fresh(paths: Iterable[Path], since: float) -> List[Path]:
    return [path for path in paths if path.stat().st_mtime >= since]


def _count_lines(path: Path, containing: Optional[str] = None) -> int:
    with open(path, errors="replace") as handle:
        return sum(1 for line in handle if containing is None or containing in line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m espnet_rwkv.progress", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log",
        required=True,
        type=Path,
        help="ESPnet training log to follow, or a decode folder (exp/<asr>/decode_<tag>)",
    )
    parser.add_argument("--label", default="train", help="name shown at the start of each line")
    parser.add_argument("--pid", type=int, help="stop when this process ends (the asr.sh that trains)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between reads of the log")
    args = parser.parse_args(argv)
    if args.log.is_dir() or args.log.name.startswith("decode_"):
        decode_progress(args.log, args.label, args.pid, args.poll)
        return 0
    report(follow(args.log, args.pid, args.poll), TrainingProgress(args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
