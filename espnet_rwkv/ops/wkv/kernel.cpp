// The WKV op's schemas (namespace espnet_rwkv) and its CPU implementation: the stable
// recurrence of docs/rwkv.md, one frame after another per channel, parallel over batch rows
// and blocks of channels (at::parallel_for). The same arithmetic as kernel.cu's scan: every
// rescale takes both factors relative to their max, ties keep the earlier exponent, training
// saves the state entering every kL frames and the frame that set the final max exponent, and
// the backward replays each kL-frame segment from its saved state, then runs the scaled
// adjoints (lambda, mu) through it in reverse (docs/kernels.md, WKV backward). A frame only
// ever reaches outputs at or after it.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "wkv.h"

namespace {

using namespace espnet_rwkv_wkv;

constexpr int64_t kChannels = 16;  // channels per work item: one frame of them is one cache line

bool cpu_io(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// c1 = e^{x1 - m}, c2 = e^{x2 - m}, m = max(x1, x2): one is 1, so one exp. Returns whether
// x1 is the max (ties: x1).
template <typename acc_t>
inline bool rescale(acc_t x1, acc_t x2, acc_t& c1, acc_t& c2) {
  const acc_t d = x1 - x2;
  const acc_t e = std::exp(-std::abs(d));
  const bool first = d >= 0;
  c1 = first ? acc_t(1) : e;
  c2 = first ? e : acc_t(1);
  return first;
}

// (C,) parameters as w = -exp(time_decay) (taken in double) and u, in the math dtype.
template <typename acc_t>
std::pair<std::vector<acc_t>, std::vector<acc_t>> decay_and_first(const at::Tensor& time_decay,
                                                                  const at::Tensor& time_first) {
  const auto td = time_decay.to(at::kDouble).contiguous();
  const auto tf = time_first.to(at::kDouble).contiguous();
  const int64_t C = td.size(0);
  std::vector<acc_t> w(C), u(C);
  for (int64_t c = 0; c < C; ++c) {
    w[c] = static_cast<acc_t>(-std::exp(td.data_ptr<double>()[c]));
    u[c] = static_cast<acc_t>(tf.data_ptr<double>()[c]);
  }
  return {w, u};
}

// Calls body(b, c0, c1) for every batch row b and block [c0, c1) of channels, in parallel.
template <typename Body>
void for_rows_and_channel_blocks(int64_t B, int64_t C, const Body& body) {
  const int64_t blocks = (C + kChannels - 1) / kChannels;
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t c0 = (i % blocks) * kChannels;
      body(i / blocks, c0, std::min(c0 + kChannels, C));
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_forward_cpu(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& state, bool train) {
  check_inputs(time_decay, time_first, k_in, v_in, state, cpu_io,
               "float32, float64, bfloat16, float16");
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  const auto k = k_in.contiguous(), v = v_in.contiguous();
  const auto math = k.options().dtype(math_type(k.scalar_type()));
  auto y = at::empty({B, T, C}, k.options());
  auto state_out = at::empty({B, 3, C}, math);
  auto saved = train ? at::empty({B, (T + kL - 1) / kL, 3, C}, math) : at::empty({0}, math);
  auto last_reset = at::empty(train ? at::IntArrayRef({B, C}) : at::IntArrayRef({0}),
                              k.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, k.scalar_type(), "wkv_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto [w, u] = decay_and_first<acc_t>(time_decay, time_first);
        const auto s_in = state.has_value() ? state->contiguous() : at::Tensor();
        const int64_t n_saved = (T + kL - 1) / kL;
        for_rows_and_channel_blocks(B, C, [&](int64_t b, int64_t c0, int64_t c1) {
          acc_t a[kChannels], d[kChannels], p[kChannels];
          int last[kChannels];
          for (int64_t c = c0; c < c1; ++c) {
            const acc_t* s = s_in.defined() ? s_in.data_ptr<acc_t>() + b * 3 * C : nullptr;
            a[c - c0] = s ? s[c] : acc_t(0);
            d[c - c0] = s ? s[C + c] : acc_t(0);
            p[c - c0] = s ? s[2 * C + c] : acc_t(kEmptyP);
            last[c - c0] = -1;
          }
          const scalar_t* kb = k.data_ptr<scalar_t>() + b * T * C;
          const scalar_t* vb = v.data_ptr<scalar_t>() + b * T * C;
          scalar_t* yb = y.data_ptr<scalar_t>() + b * T * C;
          for (int64_t t = 0; t < T; ++t) {
            if (train && t % kL == 0) {
              acc_t* sv = saved.data_ptr<acc_t>() + (b * n_saved + t / kL) * 3 * C;
              for (int64_t c = c0; c < c1; ++c) {
                sv[c] = a[c - c0];
                sv[C + c] = d[c - c0];
                sv[2 * C + c] = p[c - c0];
              }
            }
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t j = c - c0;
              const acc_t kt = static_cast<acc_t>(kb[t * C + c]),
                          vt = static_cast<acc_t>(vb[t * C + c]);
              acc_t c1f, c2f;
              rescale(p[j], u[c] + kt, c1f, c2f);
              yb[t * C + c] = static_cast<scalar_t>((a[j] * c1f + vt * c2f) / (d[j] * c1f + c2f));
              const acc_t pw = p[j] + w[c];
              const bool earlier = rescale(pw, kt, c1f, c2f);
              a[j] = a[j] * c1f + vt * c2f;
              d[j] = d[j] * c1f + c2f;
              p[j] = earlier ? pw : kt;
              if (!earlier) last[j] = static_cast<int>(t);
            }
          }
          acc_t* so = state_out.data_ptr<acc_t>() + b * 3 * C;
          for (int64_t c = c0; c < c1; ++c) {
            so[c] = a[c - c0];
            so[C + c] = d[c - c0];
            so[2 * C + c] = p[c - c0];
            if (train) last_reset.data_ptr<int>()[b * C + c] = last[c - c0];
          }
        });
      });
  return {y, state_out, saved, last_reset};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_backward_cpu(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& state, const at::Tensor& saved_in,
    const at::Tensor& state_out_in, const at::Tensor& last_reset_in,
    const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_state) {
  check_inputs(time_decay, time_first, k_in, v_in, state, cpu_io,
               "float32, float64, bfloat16, float16");
  check_saved(k_in, saved_in, last_reset_in);
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  const auto k = k_in.contiguous(), v = v_in.contiguous();
  const auto saved = saved_in.contiguous(), state_out = state_out_in.contiguous();
  const auto last_reset = last_reset_in.contiguous();
  const auto math = k.options().dtype(math_type(k.scalar_type()));
  const auto gy = grad_y.has_value() ? grad_y->to(k.scalar_type()).contiguous() : at::Tensor();
  const auto gs = grad_state.has_value() ? grad_state->to(math.dtype()).contiguous() : at::Tensor();
  const auto s_in = state.has_value() ? state->contiguous() : at::Tensor();
  auto gk = at::empty({B, T, C}, k.options());
  auto gv = at::empty({B, T, C}, k.options());
  auto gstate = state.has_value() ? at::empty({B, 3, C}, math) : at::empty({0}, math);
  auto parts = at::empty({2, B, C}, math);  // gw, gu per batch row
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, k.scalar_type(), "wkv_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto [w, u] = decay_and_first<acc_t>(time_decay, time_first);
        const int64_t n_saved = (T + kL - 1) / kL;
        for_rows_and_channel_blocks(B, C, [&](int64_t b, int64_t c0, int64_t c1) {
          const int64_t off = b * T * C, so = b * 3 * C;
          const scalar_t* kb = k.data_ptr<scalar_t>() + off;
          const scalar_t* vb = v.data_ptr<scalar_t>() + off;
          const scalar_t* gyb = gy.defined() ? gy.data_ptr<scalar_t>() + off : nullptr;
          scalar_t* gkb = gk.data_ptr<scalar_t>() + off;
          scalar_t* gvb = gv.data_ptr<scalar_t>() + off;
          const acc_t* sout = state_out.data_ptr<acc_t>() + so;
          const acc_t* g_out = gs.defined() ? gs.data_ptr<acc_t>() + so : nullptr;
          // Per channel of the block: the adjoints, the gradient sums, the cotangent left on the
          // final p (it flows to the frame that set it, or to the initial p) and that frame.
          acc_t lam[kChannels], mu[kChannels], gw[kChannels], gu[kChannels], rest[kChannels];
          int amax[kChannels];
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t j = c - c0;
            amax[j] = last_reset.data_ptr<int>()[b * C + c];
            rest[j] =
                g_out ? g_out[2 * C + c] - g_out[c] * sout[c] - g_out[C + c] * sout[C + c] : 0;
            gw[j] = rest[j] * static_cast<acc_t>(T - 1 - amax[j]);  // amax -1: T decays
            gu[j] = 0;
            lam[j] = g_out ? g_out[c] : 0;
            mu[j] = g_out ? g_out[C + c] : 0;
          }
          // Per frame of a segment and channel: the output, the update's factors, a and b times
          // its c1, and the adjoint sources (gy / d times the output's two factors).
          acc_t yr[kL][kChannels], f1[kL][kChannels], f2[kL][kChannels], ar[kL][kChannels],
              br[kL][kChannels], alr[kL][kChannels], gmr[kL][kChannels];
          for (int64_t seg = n_saved - 1; seg >= 0; --seg) {
            const int64_t t0 = seg * kL, n = std::min<int64_t>(kL, T - t0);
            const acc_t* sv = saved.data_ptr<acc_t>() + (b * n_saved + seg) * 3 * C;
            for (int64_t c = c0; c < c1; ++c) {
              const int64_t j = c - c0;
              acc_t a = sv[c], d = sv[C + c], p = sv[2 * C + c];
              for (int64_t i = 0; i < n; ++i) {  // replay the forward from the saved state
                const int64_t at_t = (t0 + i) * C + c;
                const acc_t kt = static_cast<acc_t>(kb[at_t]), vt = static_cast<acc_t>(vb[at_t]);
                acc_t ep, eu;
                rescale(p, u[c] + kt, ep, eu);
                const acc_t rd = acc_t(1) / (d * ep + eu);
                yr[i][j] = (a * ep + vt * eu) * rd;
                const acc_t g = gyb ? static_cast<acc_t>(gyb[at_t]) * rd : acc_t(0);
                alr[i][j] = g * ep;
                gmr[i][j] = g * eu;
                const acc_t pw = p + w[c];
                const bool keep = rescale(pw, kt, f1[i][j], f2[i][j]);
                ar[i][j] = a * f1[i][j];
                br[i][j] = d * f1[i][j];
                a = ar[i][j] + vt * f2[i][j];
                d = br[i][j] + f2[i][j];
                p = keep ? pw : kt;
              }
              for (int64_t i = n - 1; i >= 0; --i) {  // the adjoints, from the segment's end
                const int64_t at_t = (t0 + i) * C + c;
                const acc_t vt = static_cast<acc_t>(vb[at_t]);
                gw[j] += ar[i][j] * lam[j] + br[i][j] * mu[j];
                const acc_t du = gmr[i][j] * (vt - yr[i][j]);
                gu[j] += du;
                acc_t gkt = f2[i][j] * (vt * lam[j] + mu[j]) + du;
                if (t0 + i == amax[j]) gkt += rest[j];
                gkb[at_t] = static_cast<scalar_t>(gkt);
                gvb[at_t] = static_cast<scalar_t>(f2[i][j] * lam[j] + gmr[i][j]);
                lam[j] = f1[i][j] * lam[j] + alr[i][j];
                mu[j] = f1[i][j] * mu[j] - alr[i][j] * yr[i][j];
              }
            }
          }
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t j = c - c0;
            if (s_in.defined()) {  // the adjoints at frame 0 are the initial (a, b)'s gradient
              const acc_t* s0 = s_in.data_ptr<acc_t>() + so;
              acc_t* g0 = gstate.data_ptr<acc_t>() + so;
              g0[c] = lam[j];
              g0[C + c] = mu[j];
              g0[2 * C + c] = lam[j] * s0[c] + mu[j] * s0[C + c] + (amax[j] == -1 ? rest[j] : 0);
            }
            parts.data_ptr<acc_t>()[b * C + c] = gw[j];
            parts.data_ptr<acc_t>()[(B + b) * C + c] = gu[j];
          }
        });
      });
  // Sum over the batch in a fixed order (deterministic); d w / d time_decay = w.
  const auto sums = parts.sum(1);
  const auto w = -time_decay.to(math.dtype()).exp();
  return {sums[0] * w, sums[1].clone(), gk, gv, gstate};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(espnet_rwkv, m) {
  m.def(
      "wkv_forward(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor? state, "
      "bool train) -> (Tensor y, Tensor state_out, Tensor saved, Tensor last_reset)");
  m.def(
      "wkv_backward(Tensor time_decay, Tensor time_first, Tensor k, Tensor v, Tensor? state, "
      "Tensor saved, Tensor state_out, Tensor last_reset, Tensor? grad_y, Tensor? grad_state) -> "
      "(Tensor grad_time_decay, Tensor grad_time_first, Tensor grad_k, Tensor grad_v, "
      "Tensor grad_state)");
}

TORCH_LIBRARY_IMPL(espnet_rwkv, CPU, m) {
  m.impl("wkv_forward", &wkv_forward_cpu);
  m.impl("wkv_backward", &wkv_backward_cpu);
}
