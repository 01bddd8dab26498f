// The input checks of espnet_rwkv::pruned_rnnt_lattice, shared by its CPU (kernel.cpp) and
// CUDA (kernel.cu) implementations.
#pragma once
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace espnet_rwkv_lattice {

// blank, emit (B, T, S) float32 or float64 of one dtype; start (B, T), lengths (B,) int64; one
// device. Integers go into messages as text (see ops/wkv/wkv.h).
inline void check_inputs(const at::Tensor& blank, const at::Tensor& emit, const at::Tensor& start,
                         const at::Tensor& logit_lengths, const at::Tensor& target_lengths) {
  TORCH_CHECK_VALUE(blank.dim() == 3 && blank.sizes() == emit.sizes(),
                    "pruned_rnnt_lattice: blank and emit must be (B, T, S) of one shape, got ",
                    std::to_string(blank.dim()), " and ", std::to_string(emit.dim()), " dims");
  TORCH_CHECK_TYPE(blank.scalar_type() == emit.scalar_type() &&
                       (blank.scalar_type() == at::kFloat || blank.scalar_type() == at::kDouble),
                   "pruned_rnnt_lattice: blank and emit must both be float32 or both float64");
  const int64_t B = blank.size(0), T = blank.size(1);
  TORCH_CHECK_VALUE(start.dim() == 2 && start.size(0) == B && start.size(1) == T &&
                        logit_lengths.dim() == 1 && logit_lengths.size(0) == B &&
                        target_lengths.dim() == 1 && target_lengths.size(0) == B,
                    "pruned_rnnt_lattice: start must be (B, T) and the lengths (B,)");
  TORCH_CHECK_TYPE(start.scalar_type() == at::kLong && logit_lengths.scalar_type() == at::kLong &&
                       target_lengths.scalar_type() == at::kLong,
                   "pruned_rnnt_lattice: start and lengths must be int64");
  for (const auto* t : {&emit, &start, &logit_lengths, &target_lengths})
    TORCH_CHECK_VALUE(t->device() == blank.device(),
                      "pruned_rnnt_lattice: all inputs must be on one device");
}

}  // namespace espnet_rwkv_lattice
