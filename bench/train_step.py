"""One training step (forward + backward + Adam) of RWKV-BAT against the chunk conformer, through ESPnet's model.

    python bench/train_step.py                        # GPU: every size, 4/16/32 s, eager and compiled
    python bench/train_step.py --device cpu --sizes digits sentences   # the CPU table of bench/RESULTS.md

Both models are built by ESPnet's ``ASRTransducerTask.build_model`` from the recipes'
configs (egs2/synth_en's two tasks: ``digits``, the CPU demo, 6x144 RWKV vs 3x144 conformer,
30 word pieces; ``sentences``, the GPU demo, 9x192 vs 5x192, 31 characters; ``paper``:
egs2/librispeech_100, 22x512 vs 12x512, 500 BPE units), not by the trainer.
Every batch holds ``--batch-seconds`` of audio: utterances of 4, 16 and 32 s, so the
frame count is the same and only the utterance length changes. ``compiled`` turns on
the encoder's ``compile: true`` (each block through ``torch.compile``); the conformer's
blocks are compiled the same way. Time per step is the median of ``--steps`` steps
after one warm-up step (the compile happens there); on the CPU in CPU seconds of the
process (all threads), which other load on a shared machine disturbs less than wall
time. Peak memory: on CUDA
``max_memory_allocated`` during the step; on the CPU the peak of the process's resident
set during the step (sampled every millisecond) above its size before it. On the CPU
the table also gives the ATen operator calls of one step (profiler), on CUDA the places
where a step syncs with the host (``torch.cuda.set_sync_debug_mode("warn")``; "none": no
sync). Ratios < 1 favour RWKV-BAT. The paper size at 32 s takes minutes per step on a small CPU: pick ``--sizes``.
"""

import argparse
import copy
import statistics
import threading
import time
import warnings
from pathlib import Path

import torch
import yaml
from espnet2.tasks.asr_transducer import ASRTransducerTask

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin)
from espnet_rwkv.asr.encoder import RWKVEncoder

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    # name: (recipe, vocabulary size, labels per second of speech)
    "digits": ("egs2/synth_en/asr1/conf/digits", 30, 2.5),
    "sentences": ("egs2/synth_en/asr1/conf/sentences", 31, 12.0),
    "paper": ("egs2/librispeech_100/asr1/conf", 500, 4.0),
}
MODELS = ("train_rwkv_bat.yaml", "train_conformer_chunk.yaml")
SAMPLE_RATE = 16000


def build_model(config_path: Path, vocab: int, compiled: bool, device: str):
    config = yaml.safe_load(config_path.read_text())
    if compiled:
        config = copy.deepcopy(config)
        for block in config["encoder_conf"]["body_conf"]:
            if block["block_type"] == "rwkv":
                block["compile"] = True
    args = ASRTransducerTask.get_parser().parse_args([])
    for key, value in config.items():
        setattr(args, key, value)
    args.token_list = ["<blank>", "<unk>"] + [f"t{i}" for i in range(vocab - 3)] + ["<sos/eos>"]
    model = ASRTransducerTask.build_model(args).to(device).train()
    if compiled and not isinstance(model.encoder, RWKVEncoder):
        for block in model.encoder.encoders.blocks:  # ESPnet's conformer blocks: the peer's compiled form
            block.compile()
    return model, torch.optim.Adam(model.parameters(), lr=1e-4)


def make_batch(batch_seconds: float, utterance_seconds: float, vocab: int, labels_per_second: float, device: str):
    B = max(1, round(batch_seconds / utterance_seconds))
    g = torch.Generator().manual_seed(0)
    samples = int(utterance_seconds * SAMPLE_RATE)
    speech = torch.randn(B, samples, generator=g) * 0.1
    U = max(1, round(utterance_seconds * labels_per_second))
    text = torch.randint(2, vocab - 1, (B, U), generator=g)
    lengths = torch.full((B,), samples), torch.full((B,), U)
    return [x.to(device) for x in (speech, lengths[0], text, lengths[1])]


def train_step(model, optimizer, batch):
    optimizer.zero_grad(set_to_none=True)
    loss, _, _ = model(*batch)
    loss.backward()
    optimizer.step()
    return loss


class PeakResidentMemory:
    """Peak resident set (bytes) above its size at entry, sampled every millisecond (Linux /proc)."""

    def __enter__(self):
        self.base = self.peak = _resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())

    @property
    def used(self) -> int:
        return self.peak - self.base


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def aten_calls(model, optimizer, batch) -> int:
    """ATen operator calls of one training step (CPU profiler), nested calls included."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, batch)
    return sum(event.count for event in prof.key_averages() if event.key.startswith("aten::"))


def measure(model, optimizer, batch, steps: int, device: str):
    train_step(model, optimizer, batch)  # warm-up (and compile)
    times, peak = [], 0
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            train_step(model, optimizer, batch)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            with PeakResidentMemory() as memory:
                start = time.process_time()
                train_step(model, optimizer, batch)
                times.append(time.process_time() - start)
            peak = max(peak, memory.used)
    ops = aten_calls(model, optimizer, batch) if device == "cpu" else host_syncs(model, optimizer, batch)
    return statistics.median(times), peak, ops


def host_syncs(model, optimizer, batch) -> str:
    """Where a training step syncs with the host (``set_sync_debug_mode("warn")``): "none", or file:line of each."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(model, optimizer, batch)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    places = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchronizing" in str(w.message)})
    return "none" if not places else f"{len(places)}: " + ", ".join(places)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--seconds", nargs="+", type=float, default=[4.0, 16.0, 32.0], help="utterance lengths")
    parser.add_argument("--batch-seconds", type=float, default=None, help="audio per batch (GPU 384, CPU 32)")
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager", "compiled"])
    parser.add_argument("--steps", type=int, default=None, help="timed steps (GPU 10, CPU 2)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1: steadiest on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    on_gpu = args.device == "cuda"
    batch_seconds = args.batch_seconds or (384.0 if on_gpu else 32.0)
    steps = args.steps or (10 if on_gpu else 2)
    torch.manual_seed(0)

    columns = ["size", "mode", "utt s", "B", "RWKV-BAT s/step", "conformer s/step", "time ratio"]
    columns += ["RWKV-BAT MiB", "conformer MiB", "memory ratio"]
    counted = "host syncs" if on_gpu else "ATen calls"
    columns += [f"RWKV-BAT {counted}", f"conformer {counted}"]
    clock = "wall" if on_gpu else "process CPU"
    print(f"device {args.device}, {torch.get_num_threads()} threads, {batch_seconds:g} s of audio a batch, {clock} s")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for size in args.sizes:
        recipe, vocab, labels_per_second = SIZES[size]
        for mode in args.modes:
            torch._dynamo.reset()  # each size's blocks are new modules: do not count the last size's graphs
            models = [build_model(ROOT / recipe / name, vocab, mode == "compiled", args.device) for name in MODELS]
            for seconds in args.seconds:
                batch = make_batch(batch_seconds, seconds, vocab, labels_per_second, args.device)
                (t_ours, m_ours, ops_ours), (t_peer, m_peer, ops_peer) = (
                    measure(model, optimizer, batch, steps, args.device) for model, optimizer in models
                )
                row = [size, mode, f"{seconds:g}", str(batch[0].size(0)), f"{t_ours:.3f}", f"{t_peer:.3f}"]
                row += [f"{t_ours / t_peer:.2f}", f"{m_ours / 2**20:.0f}", f"{m_peer / 2**20:.0f}"]
                row += [f"{m_ours / max(m_peer, 1):.2f}"]
                row += [str(ops_ours), str(ops_peer)]
                row = "| " + " | ".join(row) + " |"
                print(row, flush=True)


if __name__ == "__main__":
    main()
