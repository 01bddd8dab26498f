"""Several processes: the CUDA build shared between them, and DDP training equal to one process.

- Three processes JIT-build one extension at once through ``espnet_rwkv.ops.extension.jit_build``
  (as ESPnet's spawned workers do on first use): nvcc runs once, all import it.
- A build killed half-way (torch leaves its ``lock`` file behind) does not
  block the next one.
- ESPnet's trainer in two processes (torchrun on the CPU with gloo; on two
  GPUs ESPnet's own ``--ngpu 2`` spawn with NCCL) gives the losses and gradient
  norms of one process with the same global batch: ``bench/distributed.py
  --tiny`` runs both through ``espnet_rwkv.launch``.

All marked ``distributed`` (deselect with ``-m "not distributed"``).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed

# A CUDA source with one kernel and a bare Python module (no torch headers: compiles in seconds).
TINY_CU = textwrap.dedent("""\
    #include <Python.h>
    #define CAT(a, b) a##b
    #define INIT(name) CAT(PyInit_, name)
    #define STR2(x) #x
    #define STR(x) STR2(x)
    __global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), NULL, -1, NULL};
    PyMODINIT_FUNC INIT(TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&module); }
""")

# Builds the tiny extension through the plugin's loader and prints the built library's name.
BUILD = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from espnet_rwkv.ops.extension import jit_build
    print(Path(jit_build("tiny_ext", [sys.argv[1]], cuda=True)).stem)
""")


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    if not os.access(os.path.join(home, "bin", "nvcc"), os.X_OK) or shutil.which("ninja") is None:
        pytest.skip("a JIT build needs nvcc (CUDA_HOME or /usr/local/cuda) and ninja")
    return home


@pytest.fixture
def build_env(tmp_path):
    """Environment of a JIT build in a fresh extension dir, nvcc wrapped to log each run."""
    cuda_home = _cuda_home()
    source = tmp_path / "tiny.cu"
    source.write_text(TINY_CU)
    calls = tmp_path / "nvcc_calls"
    wrapper = tmp_path / "nvcc"
    # With NVCC_HOLD set, the wrapper writes its pid there (whole, through a rename) and hangs as
    # that process: a build to kill mid-way.
    wrapper.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo run >> {calls}
        if [ -n "$NVCC_HOLD" ]; then echo $$ > "$NVCC_HOLD.tmp"; mv "$NVCC_HOLD.tmp" "$NVCC_HOLD"; exec sleep 600; fi
        exec {cuda_home}/bin/nvcc "$@"
    """)
    )
    wrapper.chmod(0o755)
    env = dict(
        os.environ,
        CUDA_HOME=cuda_home,
        PYTORCH_NVCC=str(wrapper),
        TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
        MAX_JOBS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    return env, source, calls


def _nvcc_runs(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_parallel_builds_compile_once(build_env):
    env, source, calls = build_env
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD, source], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
        assert out.strip() == "tiny_ext"
    assert _nvcc_runs(calls) == 1


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie that no one has reaped yet does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _kill_and_wait(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_killed_build_does_not_block_the_next(build_env, tmp_path):
    env, source, calls = build_env
    started = tmp_path / "nvcc_started"
    victim = subprocess.Popen(
        [sys.executable, "-c", BUILD, source],
        env=dict(env, NVCC_HOLD=str(started)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    held = None
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert victim.poll() is None and time.monotonic() < deadline, "the build never reached nvcc"
            time.sleep(0.2)
        held = int(started.read_text())
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
    finally:
        # ninja starts each command in a process group of its own, which killpg above does not
        # reach: the hung nvcc stand-in is killed by its pid.
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        if held is not None:
            _kill_and_wait(held)
    assert held is not None and not _alive(held), "no process of the killed build may outlive the test"
    assert list((tmp_path / "ext").glob("tiny_ext/lock")), "torch's lock file should outlive the killed build"

    result = subprocess.run([sys.executable, "-c", BUILD, source], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "tiny_ext"
    assert _nvcc_runs(calls) == 2


def _bench(tmp_path, *flags):
    """``bench/distributed.py --tiny`` (RWKV-BAT, 1 and 2 processes, throughput and equivalence runs); its results."""
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            ROOT / "bench" / "distributed.py",
            "--tiny",
            *flags,
            "--workdir",
            tmp_path / "work",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert (out / "distributed.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    print((out / "distributed.txt").read_text())
    (results,) = json.loads((out / "distributed.json").read_text())["results"]
    return result.returncode, results


def _check_runs(results):
    assert results["world_sizes"] == [1, 2, 1, 2]  # rank 0's log prefix: the 2-process runs are distributed
    assert results["batch_sizes"] == {
        "rwkv_bat/throughput_1": [4, 4],
        "rwkv_bat/throughput_2": [8, 8],
        "rwkv_bat/equivalence_1": [5, 5],
        "rwkv_bat/equivalence_2": [5, 5],
    }
    for n in ("1", "2"):
        assert results[f"throughput_{n}"]["steps"] == 5 and results[f"throughput_{n}"]["utt_per_s"] > 0
    assert len(results["equivalence"]["steps"]) == 3


@pytest.mark.slow
def test_two_processes_train_as_one_on_cpu(tmp_path):
    """torchrun, 2 processes (gloo), against 1 process: a global batch of 5 split 3 + 2.

    ESPnet weights each rank's loss by its utterance count before DDP averages
    the gradients, and every term of the plugin's loss is a mean over
    utterances, so the uneven split gives the single process's loss and
    gradient to float rounding.
    """
    code, results = _bench(tmp_path, "--cpu")
    _check_runs(results)
    step1, *later = results["equivalence"]["steps"]
    assert step1["loss_rel"] <= 1e-6 and step1["grad_norm_rel"] <= 2e-5, step1
    assert all(s["loss_rel"] <= 1e-5 for s in later), later
    assert code == 0


@pytest.mark.slow
@pytest.mark.gpu
def test_two_gpus_train_as_one(tmp_path):
    """ESPnet's own --ngpu 2 (spawned workers, NCCL) against --ngpu 1, as bench/distributed.py checks it."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    code, results = _bench(tmp_path)
    _check_runs(results)
    assert results["equivalence"]["equal"], results["equivalence"]
    assert all(results["memory"][n]["rank0_max_reserved_gib"] > 0 for n in ("1", "2"))
    assert code == 0
