// The pruned RNN-T lattice op's schema (namespace espnet_rwkv) and its CPU implementation:
// the DP of kernel.cu and torch_impl.py (docs/bat.md), one utterance per task
// (at::parallel_for over the batch), alpha forward and beta backward in time, each frame's
// slots in order. Returns log Z (B,) and the occupation of every blank and emit move.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "lattice.h"

namespace {

template <typename acc_t>
inline acc_t log_add(acc_t a, acc_t b) {
  const acc_t m = a > b ? a : b;
  if (m == -std::numeric_limits<acc_t>::infinity()) return m;
  return m + std::log1p(std::exp(-std::abs(a - b)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lattice_cpu(const at::Tensor& blank_in,
                                                           const at::Tensor& emit_in,
                                                           const at::Tensor& start_in,
                                                           const at::Tensor& logit_lengths,
                                                           const at::Tensor& target_lengths) {
  espnet_rwkv_lattice::check_inputs(blank_in, emit_in, start_in, logit_lengths, target_lengths);
  const auto blank = blank_in.contiguous(), emit = emit_in.contiguous();
  const auto start_all = start_in.contiguous();
  const auto t_len = logit_lengths.contiguous(), u_len = target_lengths.contiguous();
  const int64_t B = blank.size(0), T = blank.size(1), S = blank.size(2);
  auto log_z = at::empty({B}, blank.options());
  auto blank_occ = at::empty({B, T, S}, blank.options());
  auto emit_occ = at::empty({B, T, S}, blank.options());
  AT_DISPATCH_FLOATING_TYPES(blank.scalar_type(), "pruned_rnnt_lattice_cpu", [&] {
    using acc_t = scalar_t;
    constexpr acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> alpha(T * S), beta(T * S), before(S);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* bl = blank.data_ptr<scalar_t>() + b * T * S;
        const scalar_t* em = emit.data_ptr<scalar_t>() + b * T * S;
        const int64_t* start = start_all.data_ptr<int64_t>() + b * T;
        const int64_t T_b = t_len.data_ptr<int64_t>()[b], U_b = u_len.data_ptr<int64_t>()[b];
        const int64_t last = T_b - 1;
        // alpha(t, s) = logaddexp(alpha(t-1, s + d_t) + blank(t-1, s + d_t), alpha(t, s-1) +
        // emit(t, s-1))
        for (int64_t t = 0; t < T; ++t) {
          const int64_t shift = t > 0 ? start[t] - start[t - 1] : 0;
          acc_t x = neg_inf;
          for (int64_t s = 0; s < S; ++s) {
            acc_t e = neg_inf, c = neg_inf;
            if (t < T_b) {
              if (t == 0)
                e = (s == 0 && start[0] == 0) ? acc_t(0) : neg_inf;
              else if (s + shift >= 0 && s + shift < S)
                e = before[s + shift];
              if (s > 0) c = em[t * S + s - 1];
            }
            x = log_add(e, c + x);
            alpha[t * S + s] = x;
          }
          for (int64_t s = 0; s < S; ++s) before[s] = alpha[t * S + s] + bl[t * S + s];
        }
        // next(t, s): beta(t+1, s - d_{t+1}), or at the last frame 0 in the slot of U_b.
        const auto next = [&](int64_t t, int64_t s) -> acc_t {
          if (t > last) return neg_inf;
          if (t == last) return start[t] + s == U_b ? acc_t(0) : neg_inf;
          const int64_t j = s - (start[t + 1] - start[t]);
          return j >= 0 && j < S ? beta[(t + 1) * S + j] : neg_inf;
        };
        // beta(t, s) = logaddexp(blank(t, s) + next(t, s), emit(t, s) + beta(t, s+1))
        for (int64_t t = T - 1; t >= 0; --t) {
          acc_t x = neg_inf;
          for (int64_t s = S - 1; s >= 0; --s) {
            acc_t e = neg_inf, c = neg_inf;
            if (t < T_b) {
              e = bl[t * S + s] + next(t, s);
              if (s + 1 < S) c = em[t * S + s];
            }
            x = log_add(e, c + x);
            beta[t * S + s] = x;
          }
        }
        // beta(0, 0) is the total only where the first window starts at u = 0.
        const acc_t z = start[0] == 0 ? beta[0] : neg_inf;
        log_z.data_ptr<scalar_t>()[b] = z;
        scalar_t* bo = blank_occ.data_ptr<scalar_t>() + b * T * S;
        scalar_t* eo = emit_occ.data_ptr<scalar_t>() + b * T * S;
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t s = 0; s < S; ++s) {
            const int64_t i = t * S + s;
            if (z == neg_inf) {
              bo[i] = eo[i] = 0;
              continue;
            }
            // In double, as kernel.cu: these are the gradients.
            const double a = alpha[i];
            const double after_emit = s + 1 < S ? double(beta[i + 1]) : double(neg_inf);
            bo[i] = static_cast<scalar_t>(std::exp(a + double(bl[i]) + double(next(t, s)) - z));
            eo[i] = static_cast<scalar_t>(std::exp(a + double(em[i]) + after_emit - z));
          }
        }
      }
    });
  });
  return {log_z, blank_occ, emit_occ};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(espnet_rwkv, m) {
  m.def(
      "pruned_rnnt_lattice(Tensor blank, Tensor emit, Tensor start, Tensor logit_lengths, "
      "Tensor target_lengths) -> (Tensor log_z, Tensor blank_occupation, Tensor emit_occupation)");
}

TORCH_LIBRARY_IMPL(espnet_rwkv, CPU, m) { m.impl("pruned_rnnt_lattice", &lattice_cpu); }
