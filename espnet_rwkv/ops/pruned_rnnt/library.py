"""The Python side of the registered op ``torch.ops.espnet_rwkv.pruned_rnnt_lattice`` (kernel.cpp, kernel.cu).

``register()`` (called by ``espnet_rwkv.ops.extension.load`` once the library that defines
the schema is loaded) adds its fake kernel, for ``torch.compile``, and its autograd: the
gradient of log Z with respect to each move's log-probability is that move's occupation,
which the op returns beside log Z.
"""

import torch


def lattice_loss_kernel(blank, emit, start, logit_lengths, target_lengths):
    """-log Z (B,) of the pruned lattice by the registered op; arguments as ``torch_impl.lattice_forward_backward``."""
    log_z, _, _ = torch.ops.espnet_rwkv.pruned_rnnt_lattice(blank, emit, start, logit_lengths, target_lengths)
    return -log_z


def _fake(blank, emit, start, logit_lengths, target_lengths):
    return blank.new_empty(blank.size(0)), torch.empty_like(blank), torch.empty_like(blank)


def _setup_context(ctx, inputs, output):
    _, blank_occ, emit_occ = output
    ctx.save_for_backward(blank_occ, emit_occ)
    ctx.mark_non_differentiable(blank_occ, emit_occ)


def _backward(ctx, grad_log_z, _grad_blank_occ, _grad_emit_occ):
    blank_occ, emit_occ = ctx.saved_tensors
    scale = grad_log_z[:, None, None]
    return blank_occ * scale, emit_occ * scale, None, None, None


def register():
    torch.library.register_fake("espnet_rwkv::pruned_rnnt_lattice", _fake)
    torch.library.register_autograd("espnet_rwkv::pruned_rnnt_lattice", _backward, setup_context=_setup_context)
