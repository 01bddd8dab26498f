// Forward-backward over the pruned RNN-T lattice of BAT (arXiv 2305.11571),
// the DP of espnet_rwkv.ops.pruned_rnnt.torch_impl on the GPU: the CUDA implementation of
// the registered op espnet_rwkv::pruned_rnnt_lattice (schema and CPU kernel: kernel.cpp).
//
// Utterance b has frames t < T_b and, at frame t, the window of S labels
// u = start[t] + s. With slots s instead of labels and d_t = start[t] - start[t-1]:
//   alpha(t, s) = logaddexp(alpha(t-1, s + d_t) + blank(t-1, s + d_t),
//                           alpha(t, s-1) + emit(t, s-1))
//   beta(t, s)  = logaddexp(blank(t, s) + next(t, s), emit(t, s) + beta(t, s+1))
//   next(t, s)  = beta(t+1, s - d_{t+1}), or at the last frame 0 in the slot of U_b
// (docs/bat.md#the-pruned-lattice).
// Time is serial; within a frame each recursion is x_s = logaddexp(e_s, c_s + x_{s-1}),
// a chain of maps x -> logaddexp(e, c + x) that compose into maps of the same
// form, so one warp per utterance and direction (alpha or beta) scans a frame's
// slots in log2(32) shuffle steps instead of S serial steps. The previous
// frame stays in shared memory. A second, elementwise kernel turns alpha and
// beta into the occupation of every move, which is minus the gradient of the
// loss with respect to that move's log-probability.
//
// The occupations are exponentiated in double: --use_fast_math makes expf an
// approximation whose error grows with |x|, and they are the gradients.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include <limits>
#include <string>

#include "lattice.h"

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarp = 32;

template <typename acc_t>
__device__ __forceinline__ acc_t log_add(acc_t a, acc_t b) {
  const acc_t m = a > b ? a : b;
  if (m == -INFINITY) return -INFINITY;
  return m + log1p(exp(-fabs(a - b)));
}

template <typename scalar_t>
struct Lattice {
  const scalar_t* blank;  // (B, T, S)
  const scalar_t* emit;   // (B, T, S)
  const int64_t* start;   // (B, T)
  const int64_t* t_len;   // (B,)
  const int64_t* u_len;   // (B,)
  scalar_t* alpha;        // (B, T, S)
  scalar_t* beta;         // (B, T, S)
  int B, T, S;
};

// Lane i's map becomes f_i o ... o f_0 (lanes of one tile); f(x) = logaddexp(e, c + x).
template <typename acc_t>
__device__ __forceinline__ void compose_prefix(acc_t& e, acc_t& c, int lane) {
  for (int offset = 1; offset < kWarp; offset <<= 1) {
    const acc_t e_before = __shfl_up_sync(kFullMask, e, offset);
    const acc_t c_before = __shfl_up_sync(kFullMask, c, offset);
    if (lane >= offset) {
      e = log_add(e, c + e_before);
      c = c + c_before;
    }
  }
}

// x_i = logaddexp(e_i, c_i + x_{i-1}) for the chain positions i = tile + lane, x_{-1} = -inf.
// Every lane of the warp calls it with the same tile; returns the new carry x_{tile+31}.
template <typename acc_t>
__device__ __forceinline__ acc_t chain_tile(acc_t e, acc_t c, acc_t carry, int lane, acc_t& x) {
  compose_prefix(e, c, lane);
  x = log_add(e, c + carry);
  return __shfl_sync(kFullMask, x, kWarp - 1);
}

// next(t, s) from beta(t+1, .) in `later` (shared memory), at frame t < T_b.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t next_from(const Lattice<scalar_t>& L, const int64_t* start,
                                           int64_t last, int64_t U_b, int t, int s,
                                           const acc_t* later) {
  if (t == last) return (start[t] + s == U_b) ? acc_t(0) : acc_t(-INFINITY);
  const int64_t j = s - (start[t + 1] - start[t]);
  return (j >= 0 && j < L.S) ? later[j] : acc_t(-INFINITY);
}

// Block b: warp 0 walks alpha forward in time, warp 1 beta backward.
template <typename scalar_t>
__global__ void alpha_beta_kernel(Lattice<scalar_t> L) {
  using acc_t = scalar_t;
  extern __shared__ unsigned char shared_bytes[];
  const int b = blockIdx.x;
  const int lane = threadIdx.x % kWarp;
  const bool is_beta = threadIdx.x >= kWarp;
  const int T = L.T, S = L.S;
  // Two frames per warp: the one being read and the one being written.
  acc_t* frames = reinterpret_cast<acc_t*>(shared_bytes) + (is_beta ? 2 * S : 0);
  const int64_t base = static_cast<int64_t>(b) * T * S;
  const scalar_t* blank = L.blank + base;
  const scalar_t* emit = L.emit + base;
  const int64_t* start = L.start + static_cast<int64_t>(b) * T;
  const int T_b = static_cast<int>(L.t_len[b]);
  const acc_t neg_inf = -INFINITY;

  if (!is_beta) {
    scalar_t* alpha = L.alpha + base;
    for (int t = 0; t < T; ++t) {
      const acc_t* before = frames + ((t + 1) & 1) * S;  // alpha + blank of frame t-1
      acc_t* now = frames + (t & 1) * S;
      const int64_t shift = t > 0 ? start[t] - start[t - 1] : 0;
      acc_t carry = neg_inf;
      for (int tile = 0; tile < S; tile += kWarp) {
        const int s = tile + lane;
        const int64_t i = static_cast<int64_t>(t) * S + s;
        acc_t e = neg_inf, c = neg_inf, x;
        if (s < S && t < T_b) {
          if (t == 0) {
            e = (s == 0 && start[0] == 0) ? acc_t(0) : neg_inf;
          } else if (s + shift < S) {
            e = before[s + shift];
          }
          if (s > 0) c = static_cast<acc_t>(emit[i - 1]);
        }
        carry = chain_tile(e, c, carry, lane, x);
        if (s < S) {
          alpha[i] = static_cast<scalar_t>(x);
          now[s] = x + static_cast<acc_t>(blank[i]);
        }
      }
      __syncwarp();
    }
  } else {
    scalar_t* beta = L.beta + base;
    const int64_t last = T_b - 1, U_b = L.u_len[b];
    for (int t = T - 1; t >= 0; --t) {
      const acc_t* later = frames + ((t + 1) & 1) * S;  // beta of frame t+1
      acc_t* now = frames + (t & 1) * S;
      acc_t carry = neg_inf;
      // Chain position r is slot S-1-r: beta runs from the window's top down.
      for (int tile = 0; tile < S; tile += kWarp) {
        const int s = S - 1 - (tile + lane);
        const int64_t i = static_cast<int64_t>(t) * S + s;
        acc_t e = neg_inf, c = neg_inf, x;
        if (s >= 0 && t < T_b) {
          e = static_cast<acc_t>(blank[i]) +
              next_from<scalar_t, acc_t>(L, start, last, U_b, t, s, later);
          if (s + 1 < S) c = static_cast<acc_t>(emit[i]);
        }
        carry = chain_tile(e, c, carry, lane, x);
        if (s >= 0) {
          beta[i] = static_cast<scalar_t>(x);
          now[s] = x;
        }
      }
      __syncwarp();
    }
  }
}

// next(t, s) read back from beta in global memory, for the occupations.
template <typename scalar_t>
__device__ __forceinline__ double next_beta(const Lattice<scalar_t>& L, int b, int t, int s) {
  const int64_t last = L.t_len[b] - 1;
  const int64_t* start = L.start + static_cast<int64_t>(b) * L.T;
  if (t > last) return -INFINITY;
  if (t == last) return (start[t] + s == L.u_len[b]) ? 0.0 : -INFINITY;
  const int64_t j = s - (start[t + 1] - start[t]);
  if (j < 0 || j >= L.S) return -INFINITY;
  return static_cast<double>(L.beta[(static_cast<int64_t>(b) * L.T + t + 1) * L.S + j]);
}

// Occupations exp(alpha + move + beta_after - log_z); zero for utterances with no path.
template <typename scalar_t>
__global__ void occupation_kernel(Lattice<scalar_t> L, const scalar_t* log_z, scalar_t* blank_occ,
                                  scalar_t* emit_occ) {
  const int64_t n = static_cast<int64_t>(L.B) * L.T * L.S;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int s = i % L.S;
    const int t = (i / L.S) % L.T;
    const int b = i / (static_cast<int64_t>(L.S) * L.T);
    const double z = static_cast<double>(log_z[b]);
    if (z == -INFINITY) {
      blank_occ[i] = 0;
      emit_occ[i] = 0;
      continue;
    }
    const double a = static_cast<double>(L.alpha[i]);
    const double after_emit = s + 1 < L.S ? static_cast<double>(L.beta[i + 1]) : -INFINITY;
    blank_occ[i] =
        static_cast<scalar_t>(exp(a + static_cast<double>(L.blank[i]) + next_beta(L, b, t, s) - z));
    emit_occ[i] = static_cast<scalar_t>(exp(a + static_cast<double>(L.emit[i]) + after_emit - z));
  }
}

// Returns log_z (B,), and the occupation of every blank and emit move, (B, T, S) each.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lattice_cuda(const at::Tensor& blank_in,
                                                            const at::Tensor& emit_in,
                                                            const at::Tensor& start_in,
                                                            const at::Tensor& logit_lengths,
                                                            const at::Tensor& target_lengths) {
  espnet_rwkv_lattice::check_inputs(blank_in, emit_in, start_in, logit_lengths, target_lengths);
  const auto blank = blank_in.contiguous(), emit = emit_in.contiguous();
  const auto start = start_in.contiguous();
  const auto t_len = logit_lengths.contiguous(), u_len = target_lengths.contiguous();
  const int B = blank.size(0), T = blank.size(1), S = blank.size(2);
  const c10::cuda::CUDAGuard guard(blank.device());
  auto alpha = at::empty_like(blank);
  auto beta = at::empty_like(blank);
  auto blank_occ = at::empty_like(blank);
  auto emit_occ = at::empty_like(blank);
  if (blank.numel() == 0) return {at::zeros({B}, blank.options()), blank_occ, emit_occ};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor log_z;
  AT_DISPATCH_FLOATING_TYPES(blank.scalar_type(), "pruned_rnnt_forward_backward", [&] {
    Lattice<scalar_t> L{blank.data_ptr<scalar_t>(),
                        emit.data_ptr<scalar_t>(),
                        start.data_ptr<int64_t>(),
                        t_len.data_ptr<int64_t>(),
                        u_len.data_ptr<int64_t>(),
                        alpha.data_ptr<scalar_t>(),
                        beta.data_ptr<scalar_t>(),
                        B,
                        T,
                        S};
    const size_t shared = 4 * static_cast<size_t>(S) * sizeof(scalar_t);
    TORCH_CHECK(shared <= 48 * 1024, "pruned_rnnt: window of ", std::to_string(S),
                " slots is too wide for shared memory");
    alpha_beta_kernel<scalar_t><<<B, 2 * kWarp, shared, stream>>>(L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // beta(0, 0), the lattice's total, where the first window starts at u = 0; else no path.
    log_z = at::where(start.select(1, 0).eq(0), beta.select(2, 0).select(1, 0),
                      at::full({B}, -std::numeric_limits<double>::infinity(), blank.options()));
    const int64_t n = blank.numel();
    const int threads = 256;
    const int grid = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 4096));
    occupation_kernel<scalar_t><<<grid, threads, 0, stream>>>(L, log_z.data_ptr<scalar_t>(),
                                                              blank_occ.data_ptr<scalar_t>(),
                                                              emit_occ.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {log_z, blank_occ, emit_occ};
}

}  // namespace

TORCH_LIBRARY_IMPL(espnet_rwkv, CUDA, m) { m.impl("pruned_rnnt_lattice", &lattice_cuda); }
