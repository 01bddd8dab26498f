"""The registered ops (torch.ops.espnet_rwkv.*): the C++ CPU kernels against independent references,
``torch.library.opcheck``, ``torch.compile(fullgraph=True)``, and the loader's fallbacks (issue #20)."""

import subprocess
import sys
import warnings

import pytest
import torch
from conftest import DEVICES, wkv_inputs
from conftest import rel_error as _rel

from espnet_rwkv.ops import extension, pruned_rnnt_loss, wkv
from espnet_rwkv.ops.pruned_rnnt.library import lattice_loss_kernel
from espnet_rwkv.ops.wkv.chunk import wkv_chunk, wkv_chunk_masks
from espnet_rwkv.ops.wkv.reference import wkv_reference


def _state(B, C, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(B, C, generator=g), torch.rand(B, C, generator=g) + 0.1, torch.randn(B, C, generator=g)]
    return torch.stack(parts, dim=1).to(dtype)


def _wkv_grads(fn, leaves, gy, gs):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y, s = fn(*leaves)
    ((y.double() * gy).sum() + (s.double() * gs).sum()).backward()
    return y, s, [t.grad for t in leaves]


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    for op in extension.KERNEL_OPS:
        extension.load(op, "cpu")


@pytest.mark.parametrize("B,T,C", [(2, 1, 5), (3, 7, 17), (2, 64, 32), (1, 203, 40)])
@pytest.mark.parametrize("with_state", [False, True])
def test_wkv_cpu_kernel_outputs_and_gradients_match_reference(B, T, C, with_state):
    td, tf, k, v = wkv_inputs(B, T, C, k_scale=3.0, seed=T)
    leaves = [td, tf, k, v] + ([_state(B, C)] if with_state else [])
    g = torch.Generator().manual_seed(2)
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    gs = torch.randn(B, 3, C, generator=g, dtype=torch.float64)
    y, s, grads = _wkv_grads(lambda *a: wkv(*a, backend="cpu"), leaves, gy, gs)
    y_ref, s_ref, grads_ref = _wkv_grads(wkv_reference, [t.double() for t in leaves], gy, gs)
    assert _rel(y, y_ref) < 1e-5 and _rel(s, s_ref) < 1e-5
    for name, got, ref in zip(["time_decay", "time_first", "k", "v", "state"], grads, grads_ref):
        assert _rel(got, ref) < 1e-5, (name, _rel(got, ref))


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
def test_wkv_cpu_kernel_half_precision(dtype, tol):
    td, tf, k, v = wkv_inputs(2, 50, 24, dtype=dtype)
    y, state = wkv(td, tf, k, v, backend="cpu")
    assert y.dtype == dtype and state.dtype == torch.float32
    y_ref, _ = wkv_reference(td, tf, k.float(), v.float())
    assert _rel(y, y_ref) < tol


def test_wkv_cpu_kernel_gradcheck_float64():
    td, tf, k, v = (t.double() for t in wkv_inputs(2, 19, 3))
    leaves = [t.requires_grad_() for t in (td, tf, k, v, _state(2, 3, torch.float64))]
    assert torch.autograd.gradcheck(lambda *a: wkv(*a, backend="cpu"), leaves)
    assert torch.autograd.gradcheck(lambda *a: wkv(*a, backend="cpu"), leaves[:4])


def test_wkv_cpu_kernel_chunks_equal_one_call_and_auto_picks_it():
    td, tf, k, v = wkv_inputs(2, 45, 8)
    y_full, s_full = wkv(td, tf, k, v, backend="cpu")
    state, ys = None, []
    for lo, hi in ((0, 1), (1, 17), (17, 45)):
        y, state = wkv(td, tf, k[:, lo:hi], v[:, lo:hi], state, backend="cpu")
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, s_full, rtol=1e-6, atol=1e-6)
    y_auto, _ = wkv(td, tf, k, v)
    assert torch.equal(y_auto, y_full)


def _lattice_inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    B, T, S = 3, 6, 3
    blank = torch.randn(B, T, S, generator=g, dtype=dtype).log_softmax(-1)
    emit = torch.randn(B, T, S, generator=g, dtype=dtype).log_softmax(-1)
    emit[..., -1] = float("-inf")
    start = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 1]])
    return blank, emit, start, torch.tensor([6, 5, 4]), torch.tensor([4, 3, 2])


def test_lattice_cpu_kernel_gradcheck_float64():
    blank, emit, *rest = _lattice_inputs()
    leaves = [blank.requires_grad_(), emit.requires_grad_()]
    # -inf entries are impossible moves: perturb only the finite ones.
    mask = torch.isfinite(emit)

    def loss(b, e):
        return lattice_loss_kernel(b, torch.where(mask, e, float("-inf")), *rest)

    assert torch.autograd.gradcheck(loss, leaves)


def test_opcheck_wkv():
    td, tf, k, v = wkv_inputs(2, 13, 5)
    state = _state(2, 5)
    for args in ((td, tf, k, v, None, False), (td, tf, k, v, state, False)):
        torch.library.opcheck(torch.ops.espnet_rwkv.wkv_forward, args)
    grads = [t.clone().requires_grad_() for t in (td, tf, k, v, state)]
    torch.library.opcheck(torch.ops.espnet_rwkv.wkv_forward, (*grads, True))
    torch.library.opcheck(torch.ops.espnet_rwkv.wkv_forward, (*grads[:4], None, True))


def test_opcheck_pruned_rnnt_lattice():
    blank, emit, *rest = _lattice_inputs(torch.float32)
    torch.library.opcheck(torch.ops.espnet_rwkv.pruned_rnnt_lattice, (blank, emit, *rest))
    leaves = (blank.clone().requires_grad_(), emit.clone().requires_grad_())
    torch.library.opcheck(torch.ops.espnet_rwkv.pruned_rnnt_lattice, (*leaves, *rest))


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_fullgraph_matches_eager(device):
    assert extension.usable("pruned_rnnt", device)  # lattice_loss_kernel is the op itself: load its library
    td, tf, k, v = wkv_inputs(2, 30, 16, device=device)
    blank, emit, start, t_len, u_len = (x.to(device) for x in _lattice_inputs(torch.float32))

    def step(td, tf, k, v, blank, emit):
        y, state = wkv(td, tf, k, v)
        loss = lattice_loss_kernel(blank, emit, start, t_len, u_len)
        return (y * y).sum() + state[:, :2].sum() + loss.sum()

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (td, tf, k, v, blank, emit)]
        out = fn(*leaves)
        out.backward()
        return [out] + [t.grad for t in leaves]

    eager = run(step)
    compiled = run(torch.compile(step, fullgraph=True))
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# Issue #20, ops-level cases.

BACKENDS_ON_DEVICES = [
    ("cpu", "torch"),
    ("cpu", "cpu"),
    pytest.param("cuda", "torch", marks=pytest.mark.gpu),
    pytest.param("cuda", "cuda", marks=pytest.mark.gpu),
]


@pytest.mark.parametrize("device,backend", BACKENDS_ON_DEVICES)
@pytest.mark.parametrize("name", ["k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_frame_affects_no_earlier_output(device, backend, name, bad):
    """Before: the PyTorch chunked WKV let a NaN/inf in v reach up to 3 earlier frames of its chunk."""
    td, tf, k, v = wkv_inputs(2, 21, 6, device=device)
    state = _state(2, 6).to(device)
    bad_frame = 14  # inside a chunk of 4 frames (12..15) and a kernel row
    inputs = {"k": k.clone(), "v": v.clone()}
    inputs[name][1, bad_frame, 2] = bad
    y, _ = wkv(td, tf, inputs["k"], inputs["v"], state, backend=backend)
    y_ref, _ = wkv_reference(td.cpu(), tf.cpu(), k[:, :bad_frame].cpu(), v[:, :bad_frame].cpu(), state.cpu())
    assert torch.isfinite(y[:, :bad_frame]).all()
    assert _rel(y[:, :bad_frame], y_ref) < 1e-5


@pytest.mark.parametrize("name", ["k", "v"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_frame_affects_no_earlier_output_when_streaming(name, bad):
    """Before: the streaming form (one masked weighting a chunk) gave later frames a weight of e^-80, not 0."""
    td, tf, k, v = wkv_inputs(1, 8, 6)
    state = _state(1, 6)
    bad_frame = 5
    inputs = {"k": k[0].clone(), "v": v[0].clone()}
    inputs[name][bad_frame, 2] = bad
    masks = wkv_chunk_masks(-torch.exp(td), tf, 8)
    y, _ = wkv_chunk(inputs["k"], inputs["v"], state[0], *masks)
    y_ref, _ = wkv_reference(td, tf, k[:, :bad_frame], v[:, :bad_frame], state)
    assert torch.isfinite(y[:bad_frame]).all()
    assert _rel(y[None, :bad_frame], y_ref) < 1e-5


def test_cuda_backend_with_cpu_tensors_is_an_immediate_value_error(monkeypatch):
    """Before: it compiled the CUDA extension for minutes and then failed to link."""

    def no_build(*args):
        raise AssertionError("nothing may be built for this call")

    monkeypatch.setattr(extension, "load", no_build)
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors, got cpu"):
        wkv(*wkv_inputs(1, 4, 3), backend="cuda")


def test_gpu_below_sm80_falls_back_with_a_warning_naming_its_capability(monkeypatch):
    """Before: usable() only checked that the module loads, so every call then failed at launch."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(extension, "_usable", {})
    with pytest.warns(RuntimeWarning, match=r"Tesla T4 has compute capability 7\.5; the kernels need 8\.0"):
        assert extension.usable("wkv", "cuda:0") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert extension.usable("wkv", "cuda:0") is False


def test_toolkit_below_the_floor_is_refused_with_its_version(tmp_path):
    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 11.4, V11.4.48'\n")
    nvcc.chmod(0o755)
    with pytest.raises(RuntimeError, match=r"nvcc is 11\.4; the kernels need 12\.0 or newer"):
        extension.nvcc_version(str(nvcc))


@pytest.fixture
def broken_build(tmp_path, monkeypatch):
    """A JIT build in a fresh extension directory whose compiler always fails; counts the attempts."""
    import torch.utils.cpp_extension as cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    attempts = []

    def failing_compile(**kwargs):
        attempts.append(kwargs["name"])
        raise RuntimeError("Error building extension: g++ exploded")

    monkeypatch.setattr(cpp_extension, "load", failing_compile)
    source = tmp_path / "kernel.cpp"
    source.write_text("int broken(;\n")
    return source, attempts


def test_failed_build_is_remembered(broken_build):
    """Before: every process paid the failed build again."""
    source, attempts = broken_build
    for _ in range(2):
        with pytest.raises(RuntimeError, match="g\\+\\+ exploded"):
            extension.jit_build("broken_ext", [source], cuda=False)
    assert attempts == ["broken_ext"]
    # A later process finds the record too, and says how to retry.
    code = (
        "import sys; from espnet_rwkv.ops import extension\n"
        "try:\n    extension.jit_build('broken_ext', [sys.argv[1]], cuda=False)\n"
        "except RuntimeError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True, text=True, timeout=120)
    assert "g++ exploded" in out.stdout and "an earlier build failed; delete" in out.stdout
    source.write_text("int fixed;\n")  # new sources: built again
    with pytest.raises(RuntimeError, match="g\\+\\+ exploded"):
        extension.jit_build("broken_ext", [source], cuda=False)
    assert attempts == ["broken_ext", "broken_ext"]


def test_build_lock_wait_has_a_timeout(broken_build):
    """Before: a process waited forever on a build lock that another process held."""
    from filelock import FileLock
    from torch.utils.cpp_extension import _get_build_directory

    source, attempts = broken_build
    lock = FileLock(str(_get_build_directory("locked_ext", verbose=False) + "/build.lock"))
    with lock:
        code = (
            "import sys; from espnet_rwkv.ops import extension\n"
            "extension.jit_build('locked_ext', [sys.argv[1]], cuda=False, lock_timeout_s=1)"
        )
        out = subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "waited 1 s for another process's build of locked_ext" in out.stderr
    assert attempts == []


def test_pruned_loss_cpu_kernel_matches_torch_backend():
    from espnet_rwkv.ops import bat_ranges

    g = torch.Generator().manual_seed(4)
    B, T, U, V = 5, 30, 12, 9
    logits = torch.randn(B, T, 4, V, generator=g, requires_grad=True)
    targets = torch.randint(1, V, (B, U), generator=g)
    t_len, u_len = torch.tensor([30, 28, 20, 25, 11]), torch.tensor([12, 10, 12, 3, 7])
    ranges = bat_ranges(torch.rand(B, T, generator=g), t_len, u_len, 2, 2)
    losses, grads = [], []
    for backend in ("torch", "cpu"):
        loss = pruned_rnnt_loss(logits, targets, ranges, t_len, u_len, reduction="none", backend=backend)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss.sum(), logits)[0])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    assert _rel(grads[1], grads[0]) < 1e-5
