// What the WKV op's CPU (kernel.cpp) and CUDA (kernel.cu) implementations share: the schema's
// layout constants and the input checks of espnet_rwkv::wkv_forward / wkv_backward.
#pragma once
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace espnet_rwkv_wkv {

constexpr float kEmptyP = -1e38f;  // espnet_rwkv.ops.wkv.EMPTY_P: "no mass yet"
constexpr int kLog2L = 3;
constexpr int kL = 1 << kLog2L;  // training saves the state entering every kL frames

// Integers go into error messages as text: streaming an integer (or an IntArrayRef) into a
// TORCH_CHECK message from nvcc-compiled host code crashed the process (torch 2.11, CUDA 13.0)
// instead of raising; std::to_string does not. shape(t) is "(2, 8, 4)".
inline std::string shape(const at::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ")";
}

// The math (and state) dtype of I/O dtype `io`: float64 for float64, else float32.
inline at::ScalarType math_type(at::ScalarType io) {
  return io == at::kDouble ? at::kDouble : at::kFloat;
}

// k, v (B, T, C) of one I/O dtype, on one device with the (C,) parameters and the optional
// (B, 3, C) state in the math dtype. `io_types` names the I/O dtypes this implementation takes.
inline void check_inputs(const at::Tensor& time_decay, const at::Tensor& time_first,
                         const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& state, bool (*io_ok)(at::ScalarType),
                         const char* io_types) {
  TORCH_CHECK_VALUE(k.dim() == 3 && k.sizes() == v.sizes(),
                    "wkv: k and v must both be (B, T, C), got ", shape(k), " and ", shape(v));
  TORCH_CHECK_TYPE(k.scalar_type() == v.scalar_type() && io_ok(k.scalar_type()),
                   "wkv: k and v must share one of ", io_types, ", got ", k.scalar_type(), " and ",
                   v.scalar_type());
  const int64_t B = k.size(0), C = k.size(2);
  for (const auto& [name, param] :
       {std::pair<const char*, const at::Tensor&>{"time_decay", time_decay},
        {"time_first", time_first}}) {
    TORCH_CHECK_VALUE(param.dim() == 1 && param.size(0) == C, "wkv: ", name, " must be (",
                      std::to_string(C), ",), got ", shape(param));
    TORCH_CHECK_TYPE(param.is_floating_point(), "wkv: ", name, " must be floating point, got ",
                     param.scalar_type());
  }
  std::vector<at::Tensor> all{time_decay, time_first, v};
  if (state.has_value()) all.push_back(*state);
  for (const auto& t : all)
    TORCH_CHECK_VALUE(t.device() == k.device(), "wkv: all inputs must be on one device, k is on ",
                      k.device(), " and another input on ", t.device());
  if (state.has_value()) {
    const auto want = math_type(k.scalar_type());
    TORCH_CHECK_VALUE(state->dim() == 3 && state->size(0) == B && state->size(1) == 3 &&
                          state->size(2) == C && state->scalar_type() == want,
                      "wkv: state must be (", std::to_string(B), ", 3, ", std::to_string(C), ") ",
                      want, ", got ", shape(*state), " ", state->scalar_type());
  }
}

// What the backward reads of the training forward: the states entering every kL frames
// (B, ceil(T/kL), 3, C) and the frame that set each channel's final max exponent (B, C) int32.
inline void check_saved(const at::Tensor& k, const at::Tensor& saved,
                        const at::Tensor& last_reset) {
  const int64_t B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK_VALUE(saved.dim() == 4 && saved.size(0) == B && saved.size(1) == (T + kL - 1) / kL &&
                        saved.size(2) == 3 && saved.size(3) == C &&
                        last_reset.sizes() == at::IntArrayRef({B, C}),
                    "wkv_backward: needs the saved states of wkv_forward(..., train=True), got ",
                    shape(saved), " and ", shape(last_reset));
}

}  // namespace espnet_rwkv_wkv
