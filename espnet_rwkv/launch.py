"""Run a Python entry point with espnet_rwkv registered in ESPnet.

    python -m espnet_rwkv.launch -m espnet2.bin.asr_transducer_train --config ...
    python -m espnet_rwkv.launch path/to/script.py args ...
    python -m espnet_rwkv.launch -c "code" args ...

so that recipes run ``asr.sh --python "python3 -m espnet_rwkv.launch"``.

The target runs without replacing ``__main__``: this module stays the main
module, so processes that ESPnet starts with the ``spawn`` method (multi-GPU
training) import it again, and with it the plugin, before they build a model.

A process group the target leaves open (ESPnet's trainer under torchrun does) is
destroyed when the target ends: gloo's worker threads still alive at interpreter
teardown can abort the process after training finished (SIGABRT, "terminate called
without an active exception"; seen once in CI, pytorch/pytorch#179291).

Denormal floats are flushed to zero on the CPU: Adam's second moments and small
gradients of a model training from scratch underflow into the denormal range, where
x86 arithmetic is ~100x slower; one CPU training step of the demo's model took 9.5 s
with denormals and 2.1 s without (Adam's sqrt alone 1 s). Values below 1.2e-38 carry no
information for float32 training.
"""

import importlib.util
import runpy
import sys

import torch
import torch.distributed as dist

import espnet_rwkv.espnet  # noqa: F401  (registers the plugin in ESPnet, here and in spawned workers)

USAGE = "usage: python -m espnet_rwkv.launch (-m module | -c code | script.py) [args ...]"


def main(argv) -> None:
    if not argv or (argv[0] in ("-m", "-c") and len(argv) < 2):
        sys.exit(USAGE)
    torch.set_flush_denormal(True)
    try:
        _run(argv)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _run(argv) -> None:
    if argv[0] == "-m":
        module = argv[1]
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            sys.exit(f"espnet_rwkv.launch: no module named {module!r}")
        sys.argv = [spec.origin or module, *argv[2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    elif argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
