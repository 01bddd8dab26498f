"""Training on 1 and 2 GPUs through ESPnet's own path: throughput, scaling, memory, equivalence.

    python bench/distributed.py               # the demo recipe's two configs on 2 GPUs
    python bench/distributed.py --cpu --tiny  # the same runs on the CPU, with the tiny test config

Every run is ``python -m espnet_rwkv.launch -m espnet2.bin.asr_transducer_train``
as asr.sh's stages run it (``--python "python3 -m espnet_rwkv.launch"``) on a
synthetic corpus (random-noise 16 kHz audio, random characters): stage 10's
``--collect_stats true`` once, then stage 11's training, which for one node is
what ``espnet2.bin.launch`` starts: ``--ngpu N --multiprocessing_distributed
true``, ESPnet spawning one worker per GPU (DDP, NCCL). With ``--cpu`` the
2-process runs are ``torchrun --nproc_per_node 2`` with ``--ngpu 0
--dist_backend gloo`` instead (ESPnet's spawn needs GPUs).

Per config, four runs with ESPnet's ``sorted`` batches of a fixed size:

- throughput, 1 and 2 GPUs at the same batch per GPU (the global batch doubles):
  utt/s = batch x iterations / sum of ESPnet's per-iteration ``train_time``
  (``--log_interval 1``; the first iterations are warm-up and left out, and so
  is start-up); speed-up = 2-GPU / 1-GPU; peak memory per GPU from
  ``nvidia-smi`` polled during the run (CUDA context included) and rank 0's
  ``gpu_max_cached_mem_GB``;
- equivalence, 1 and 2 GPUs at the same global batch, an odd one (the ranks'
  shares differ by one utterance), on the config made ``comparable`` (no
  randomness, no padding-dependent layers): one iteration per epoch, so that
  the reporter's per-epoch stats in ``checkpoint.pth`` (full precision) are the
  steps' loss and grad_norm.

Prints one table; with ``--out DIR`` (default ``$OUT`` when set) also writes
``distributed.json``, ``distributed.txt`` and every run's ``train.log``
(``distributed_logs.tar.gz``) there.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import wave
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONF = ROOT / "egs2" / "synth_en" / "asr1" / "conf"
TEST_CONF = ROOT / "test" / "conf"
TRAIN = ["-m", "espnet_rwkv.launch", "-m", "espnet2.bin.asr_transducer_train"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# utts: training corpus; seconds: utterance durations; batch: per GPU (throughput);
# iters / warmup: iterations of a throughput run and how many of them are left out;
# eq_batch / eq_steps: global batch and steps of the equivalence runs.
SIZES = {
    "demo": dict(utts=480, valid=8, seconds=(2.0, 6.0), batch=24, iters=60, warmup=10, eq_batch=15, eq_steps=3),
    "tiny": dict(utts=40, valid=4, seconds=(1.0, 2.0), batch=4, iters=8, warmup=3, eq_batch=5, eq_steps=3),
}
CONFIGS = {
    "demo": {
        "rwkv_bat": DEMO_CONF / "train_rwkv_bat.yaml",
        "conformer_chunk": DEMO_CONF / "train_conformer_chunk.yaml",
    },
    "tiny": {"rwkv_bat": TEST_CONF / "tiny_rwkv_bat.yaml"},
}
# Relative differences allowed between 1 and 2 GPUs (float summation order only).
TOLERANCE = {"loss_step1": 1e-5, "grad_norm_step1": 1e-4, "loss_later": 1e-3}


def write_corpus(root: Path, sizes, seed=0):
    """train/ and valid/ (wav.scp, text) of random noise and random text, and a char token list."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", sizes["utts"]), ("valid", sizes["valid"])):
        (root / split / "wav").mkdir(parents=True)
        with open(root / split / "wav.scp", "w") as scp, open(root / split / "text", "w") as text:
            for i in range(count):
                utt = f"{split}{i:04d}"
                seconds = rng.uniform(*sizes["seconds"])
                audio = (rng.standard_normal(int(seconds * 16000)) * 3000).clip(-32768, 32767).astype("<i2")
                path = root / split / "wav" / f"{utt}.wav"
                with wave.open(str(path), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(16000)
                    w.writeframes(audio.tobytes())
                # About 12 characters a second, as read speech; words of 2-7 letters.
                words, length = [], 0
                while length < 12 * seconds:
                    words.append("".join(rng.choice(list(LETTERS), rng.integers(2, 8))))
                    length += len(words[-1]) + 1
                scp.write(f"{utt} {path}\n")
                text.write(f"{utt} {' '.join(words)}\n")
    tokens = ["<blank>", "<unk>", "<space>", *LETTERS, "<sos/eos>"]
    (root / "tokens.txt").write_text("\n".join(tokens) + "\n")


def data_args(corpus: Path, stats: Path = None):
    args = ["--use_preprocessor", "true", "--token_type", "char", "--token_list", corpus / "tokens.txt"]
    for split in ("train", "valid"):
        args += [
            f"--{split}_data_path_and_name_and_type",
            f"{corpus / split / 'wav.scp'},speech,sound",
            f"--{split}_data_path_and_name_and_type",
            f"{corpus / split / 'text'},text,text",
            f"--{split}_shape_file",
            stats / split / "speech_shape" if stats else corpus / split / "wav.scp",
        ]
    return args


def comparable(config: Path, out: Path) -> Path:
    """``config`` for the 1-vs-2 GPU comparison: a forward that depends on nothing but the utterance.

    Off: SpecAugment, dropout and random chunk sizes (random draws differ
    between one batch and its shards), and two layers of ESPnet that make an
    utterance's last frames depend on the padding its batch gives it: the STFT's
    reflection padding at the ends (``center``) and the VGG-like input block,
    whose convolutions run over the padding unmasked.
    """
    conf = yaml.safe_load(config.read_text())
    conf.pop("specaug", None)
    conf.pop("specaug_conf", None)

    def no_dropout(node):
        if isinstance(node, dict):
            return {k: 0.0 if "dropout" in k else no_dropout(v) for k, v in node.items()}
        if isinstance(node, list):
            return [no_dropout(v) for v in node]
        return node

    for key in ("encoder_conf", "decoder_conf", "joint_network_conf"):
        if key in conf:
            conf[key] = no_dropout(conf[key])
    conf.setdefault("frontend_conf", {})["center"] = False
    encoder = conf["encoder_conf"]
    if encoder["input_conf"].get("vgg_like"):  # ESPnet's plain Conv2d block instead, one channel count
        encoder["input_conf"]["vgg_like"] = False
        if isinstance(encoder["input_conf"].get("conv_size"), list):
            encoder["input_conf"]["conv_size"] = encoder["input_conf"]["conv_size"][-1]
    if encoder.get("main_conf", {}).get("dynamic_chunk_training"):
        encoder["main_conf"]["dynamic_chunk_training"] = False
    out.write_text(yaml.safe_dump(conf, sort_keys=False))
    return out


class MemoryPoll(threading.Thread):
    """Peak memory.used per GPU (MiB) from nvidia-smi while the runs go."""

    def __init__(self, interval=0.5):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done = interval, {}, threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            for line in out.splitlines():
                index, used = (int(x) for x in line.split(","))
                self.peak[index] = max(self.peak.get(index, 0), used)
            self.done.wait(self.interval)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


class Run:
    """One training run: its command, and what its log and checkpoint say."""

    def __init__(self, name, exp: Path, world: int, gpus, cpu: bool, args):
        self.name, self.exp, self.world, self.gpus = name, exp, world, list(gpus)
        exp.mkdir(parents=True)
        args = [str(a) for a in args] + ["--output_dir", str(exp)]
        if cpu and world > 1:
            self.cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(world),
                *TRAIN,
                *args,
                "--ngpu",
                "0",
                "--multiprocessing_distributed",
                "false",
                "--dist_backend",
                "gloo",
            ]
        elif cpu:
            self.cmd = [sys.executable, *TRAIN, *args, "--ngpu", "0"]
        else:  # what espnet2.bin.launch runs for one node (asr.sh stage 11)
            self.cmd = [sys.executable, *TRAIN, *args, "--ngpu", str(world), "--multiprocessing_distributed", "true"]
        self.env = dict(os.environ)
        if not cpu:  # numbered as nvidia-smi numbers them
            self.env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(map(str, self.gpus)))

    def start(self):
        self.t0 = time.monotonic()
        self.log = open(self.exp / "train.log", "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=self.exp)

    def wait(self):
        rc = self.proc.wait()
        self.wall = time.monotonic() - self.t0
        self.log.close()
        if rc != 0:
            tail = (self.exp / "train.log").read_text()[-4000:]
            raise RuntimeError(f"{self.name} failed ({rc}): {' '.join(self.cmd)}\n{tail}")

    def log_text(self):
        return (self.exp / "train.log").read_text()

    def world_in_log(self) -> int:
        """World size in rank 0's log prefix ('[host:0/2]'), 1 without one."""
        m = re.search(r"^\[[^\]\s]*:0/(\d+)\]", self.log_text(), re.M)
        return int(m.group(1)) if m else 1

    def batch_sizes(self):
        """(min, max) global mini-batch size of ESPnet's train sampler."""
        m = re.search(
            r"\[train\] mini-batch sizes summary: N-batch=\d+, mean=[\d.]+, min=(\d+), max=(\d+)", self.log_text()
        )
        return int(m.group(1)), int(m.group(2))

    def iterations(self):
        """Per-iteration stats of the train log lines ('<e>epoch:train:<i>-<i>batch: key=value, ...')."""
        rows = []
        for m in re.finditer(r"\d+epoch:train:(\d+)-(\d+)batch: (.*)$", self.log_text(), re.M):
            assert m.group(1) == m.group(2), "needs --log_interval 1"
            # ESPnet leaves out some ', ' separators: read 'key=number' pairs, numbers as it formats them.
            pairs = re.findall(r"(\w+?)=(-?\d+\.\d+(?:e[-+]\d+)?|-?inf|nan)", m.group(3))
            rows.append({k: float(v) for k, v in pairs})
        return rows

    def epoch_stats(self):
        """Train stats per epoch from rank 0's checkpoint (ESPnet's reporter, full precision)."""
        state = torch.load(self.exp / "checkpoint.pth", map_location="cpu", weights_only=False)
        stats = state["reporter"]["stats"]
        return [stats[e]["train"] for e in sorted(stats)]


def run_together(runs, poll: bool):
    """Run ``runs`` at once (on different GPUs); each one's peak MiB per GPU when ``poll``."""
    poller = MemoryPoll() if poll else None
    if poller:
        poller.start()
    try:
        for r in runs:
            r.start()
        for r in runs:
            r.wait()
    finally:
        peak = poller.stop() if poller else {}
    for r in runs:
        r.peak_mib = {g: peak[g] for g in r.gpus if g in peak}


def start_extension_builds():
    """Build (or find) each op's CUDA kernels in a process of its own, before any training."""
    code = "import sys; from espnet_rwkv.ops import extension; extension.load(sys.argv[1], 'cuda')"
    return time.monotonic(), {
        op: subprocess.Popen([sys.executable, "-c", code, op], stderr=subprocess.PIPE, text=True)
        for op in ("wkv", "pruned_rnnt")
    }


def wait_extension_builds(builds):
    t0, procs = builds
    for op, p in procs.items():
        err = p.communicate()[1]
        if p.returncode != 0:  # training would time the slow PyTorch fallback
            raise RuntimeError(f"the CUDA extension {op} cannot be built:\n{err[-3000:]}")
    return round(time.monotonic() - t0, 1)


def rel(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def throughput(run, batch, warmup):
    rows = run.iterations()[warmup:]
    seconds = sum(r["train_time"] for r in rows)
    return dict(utt_per_s=batch * len(rows) / seconds, step_s=seconds / len(rows), steps=len(rows), global_batch=batch)


def summarize(name, thr1, thr2, eq1, eq2, sizes):
    t1 = throughput(thr1, sizes["batch"], sizes["warmup"])
    t2 = throughput(thr2, 2 * sizes["batch"], sizes["warmup"])
    s1, s2 = eq1.epoch_stats(), eq2.epoch_stats()
    steps = [
        dict(
            step=i + 1,
            loss_1=a["loss"],
            loss_2=b["loss"],
            grad_norm_1=a["grad_norm"],
            grad_norm_2=b["grad_norm"],
            loss_rel=rel(a["loss"], b["loss"]),
            grad_norm_rel=rel(a["grad_norm"], b["grad_norm"]),
        )
        for i, (a, b) in enumerate(zip(s1, s2))
    ]
    equal = (
        steps[0]["loss_rel"] <= TOLERANCE["loss_step1"]
        and steps[0]["grad_norm_rel"] <= TOLERANCE["grad_norm_step1"]
        and all(s["loss_rel"] <= TOLERANCE["loss_later"] for s in steps[1:])
    )
    memory = {}
    for tag, run in (("1", thr1), ("2", thr2)):
        memory[tag] = dict(
            rank0_max_reserved_gib=run.epoch_stats()[0].get("gpu_max_cached_mem_GB"), nvidia_smi_peak_mib=run.peak_mib
        )
    return dict(
        config=name,
        world_sizes=[thr1.world_in_log(), thr2.world_in_log(), eq1.world_in_log(), eq2.world_in_log()],
        batch_sizes={r.name: r.batch_sizes() for r in (thr1, thr2, eq1, eq2)},
        throughput_1=t1,
        throughput_2=t2,
        speedup=t2["utt_per_s"] / t1["utt_per_s"],
        efficiency=t2["utt_per_s"] / (2 * t1["utt_per_s"]),
        memory=memory,
        equivalence=dict(global_batch=sizes["eq_batch"], steps=steps, equal=equal),
        wall_s={r.name: round(r.wall, 1) for r in (thr1, thr2, eq1, eq2)},
    )


def table(results, meta):
    lines = [
        f"{meta['device']}; torch {meta['torch']}; CUDA extensions built or found in "
        f"{meta.get('extension_build_s', '-')} s",
        "",
        "| config | GPUs | global batch | utt/s | s/step | speed-up | efficiency | peak MiB per GPU (nvidia-smi) "
        "| rank 0 max reserved GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for n in ("1", "2"):
            t, m = r[f"throughput_{n}"], r["memory"][n]
            peak = "/".join(str(v) for _, v in sorted((m["nvidia_smi_peak_mib"] or {}).items())) or "-"
            gib = m["rank0_max_reserved_gib"]
            lines.append(
                f"| {r['config']} | {n} | {t['global_batch']} | {t['utt_per_s']:.1f} | {t['step_s']:.3f} | "
                + (f"{r['speedup']:.2f}x | {100 * r['efficiency']:.0f}% | " if n == "2" else "1.00x | - | ")
                + f"{peak} | {'-' if gib is None else f'{gib:.2f}'} |"
            )
    lines += [
        "",
        "| config | step | loss 1 GPU | loss 2 GPUs | rel diff | grad_norm 1 GPU | grad_norm 2 GPUs | rel diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for s in r["equivalence"]["steps"]:
            lines.append(
                f"| {r['config']} | {s['step']} | {s['loss_1']:.6f} | {s['loss_2']:.6f} | {s['loss_rel']:.1e} | "
                f"{s['grad_norm_1']:.6f} | {s['grad_norm_2']:.6f} | {s['grad_norm_rel']:.1e} |"
            )
    lines += [
        "",
        "equivalence (global batch {}; tolerances {}): {}".format(
            results[0]["equivalence"]["global_batch"],
            TOLERANCE,
            ", ".join(f"{r['config']} {'equal' if r['equivalence']['equal'] else 'DIFFERENT'}" for r in results),
        ),
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="2 processes by torchrun on the CPU (gloo), not 2 GPUs")
    parser.add_argument("--tiny", action="store_true", help="the tiny test config and corpus: a check, not a benchmark")
    parser.add_argument(
        "--configs",
        nargs="+",
        help="which configs (default: all of the scale's: "
        + "; ".join(f"{k}: {' '.join(v)}" for k, v in CONFIGS.items())
        + ")",
    )
    parser.add_argument("--workdir", type=Path, help="corpus and experiments (default: a temporary folder, removed)")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="write distributed.{json,txt} here")
    args = parser.parse_args()

    if not args.cpu and torch.cuda.device_count() < 2:
        sys.exit("needs 2 CUDA devices (or --cpu)")
    scale = "tiny" if args.tiny else "demo"
    sizes, configs = SIZES[scale], CONFIGS[scale]
    configs = {name: configs[name] for name in args.configs or configs}
    assert sizes["utts"] % (2 * sizes["batch"]) == 0 and sizes["utts"] % sizes["eq_batch"] == 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    workdir.mkdir(parents=True, exist_ok=True)
    # Subprocesses import this checkout's espnet_rwkv; CPU runs use one thread per process (2 share the CPU).
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p)
    if args.cpu:
        os.environ["OMP_NUM_THREADS"] = "1"
    t_start = time.monotonic()
    # Stopped by a time limit (SIGTERM): still write the logs so far (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench/distributed.py: terminated"))
    # The GPUs' name from nvidia-smi: CUDA stays uninitialised here, no context of ours on GPU 0.
    gpu = (
        ""
        if args.cpu
        else subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.splitlines()[0]
    )
    meta = dict(device="CPU" if args.cpu else f"2 x {gpu}", torch=torch.__version__, scale=scale)
    try:
        corpus, stats = workdir / "corpus", workdir / "stats"
        write_corpus(corpus, sizes)
        builds = None if args.cpu else start_extension_builds()
        # Stage 10: shapes and feature statistics, one process on the CPU (the frontend is the same for all configs).
        collect = Run(
            "collect_stats",
            stats,
            1,
            [],
            True,
            [
                "--collect_stats",
                "true",
                "--config",
                next(iter(configs.values())),
                *data_args(corpus),
                "--batch_type",
                "unsorted",
                "--batch_size",
                16,
                "--num_workers",
                2,
            ],
        )
        collect.start()
        collect.wait()
        if builds:
            meta["extension_build_s"] = wait_extension_builds(builds)
        common = [
            *data_args(corpus, stats),
            "--normalize",
            "global_mvn",
            "--normalize_conf",
            f"stats_file={stats / 'train' / 'feats_stats.npz'}",
            "--batch_type",
            "sorted",
            "--resume",
            "true",
            "--log_interval",
            1,
            "--seed",
            0,
            "--use_matplotlib",
            "false",
            "--use_tensorboard",
            "false",
            "--keep_nbest_models",
            1,
        ]
        if args.cpu:
            common += ["--num_workers", 0]
        runs = {}
        for i, (name, config) in enumerate(configs.items()):
            det = comparable(config, workdir / f"{name}_comparable.yaml")
            exp = workdir / "exp" / name
            thr = ["--config", config, "--max_epoch", 1, "--num_iters_per_epoch", sizes["iters"], *common]
            eq = [
                "--config",
                det,
                "--max_epoch",
                sizes["eq_steps"],
                "--num_iters_per_epoch",
                1,
                "--batch_size",
                sizes["eq_batch"],
                *common,
            ]
            # The configs' 1-GPU runs go side by side, on GPUs 0 and 1.
            runs[name] = dict(
                thr1=Run(
                    f"{name}/throughput_1",
                    exp / "throughput_1",
                    1,
                    [i % 2],
                    args.cpu,
                    thr + ["--batch_size", sizes["batch"]],
                ),
                thr2=Run(
                    f"{name}/throughput_2",
                    exp / "throughput_2",
                    2,
                    [0, 1],
                    args.cpu,
                    thr + ["--batch_size", 2 * sizes["batch"]],
                ),
                eq1=Run(f"{name}/equivalence_1", exp / "equivalence_1", 1, [i % 2], args.cpu, eq),
                eq2=Run(f"{name}/equivalence_2", exp / "equivalence_2", 2, [0, 1], args.cpu, eq),
            )
        names = list(runs)
        for kind in ("thr", "eq"):
            for pair in (names[i : i + 2] for i in range(0, len(names), 2)):
                run_together([runs[n][f"{kind}1"] for n in pair], poll=not args.cpu)
            for n in names:
                run_together([runs[n][f"{kind}2"]], poll=not args.cpu)
        results = [summarize(n, **runs[n], sizes=sizes) for n in names]
    finally:
        if args.out:  # every run's log, also when one failed
            args.out.mkdir(parents=True, exist_ok=True)
            with tarfile.open(args.out / "distributed_logs.tar.gz", "w:gz") as tar:
                for log in sorted(workdir.glob("**/train.log")):
                    tar.add(log, arcname=str(log.relative_to(workdir)))
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["total_s"] = round(time.monotonic() - t_start, 1)
    text = table(results, meta) + f"\n\ntotal wall time {meta['total_s']} s\n"
    print(text)
    if args.out:
        (args.out / "distributed.json").write_text(json.dumps(dict(meta=meta, results=results), indent=1))
        (args.out / "distributed.txt").write_text(text)
    return 0 if all(r["equivalence"]["equal"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
