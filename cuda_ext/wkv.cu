// RWKV-4 WKV (NOTES.md §1): forward and backward with a streaming (a, b, p) state.
//
// Parallel over time by the associativity of the state update: a block owns
// 32 channels of one batch row and walks time in super-chunks of G*L frames.
// In a super-chunk each of the G thread rows takes L consecutive frames,
// summarises them from the empty state, the G summaries are combined in
// shared memory (each row folds the rows before it into the carried state),
// and each row then produces its outputs from its entering state. k and v are
// read once; the state entering every super-chunk is saved (O(B*C*T/(G*L)))
// so the backward can recompute per-frame states without an fp32 dump.
//
// The backward walks super-chunks in reverse time: it recomputes the forward
// states as above, then runs the reverse scan of the adjoint
// lambda_t = dL/dA_t (and mu_t = dL/dB_t), lambda_t = gy_t/den_t + e^w lambda_{t+1},
// with the same summary/combine scheme. All sums are kept scaled by a running
// maximum exponent, so |k| of any size stays finite.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr float kEmptyP = -1e38f;  // espnet_rwkv.ops.wkv.EMPTY_P
constexpr int kChannels = 32;      // channels per block: one warp row
constexpr int kL = 8;              // frames per thread
constexpr int kG = 8;              // thread rows (time groups) per block
constexpr int kSpan = kL * kG;     // frames per super-chunk

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <typename T> __device__ __forceinline__ T from_f(float x) { return static_cast<T>(x); }

// (a, b, p) after n more decays of w, then plus a summary (sa, sb, sp).
__device__ __forceinline__ void merge(float& a, float& b, float& p, int& idx, float decay,
                                      float sa, float sb, float sp, int sidx) {
  const float pd = p + decay;
  const float np = fmaxf(pd, sp);
  const float c1 = __expf(pd - np);
  const float c2 = __expf(sp - np);
  a = a * c1 + sa * c2;
  b = b * c1 + sb * c2;
  if (sp > pd) idx = sidx;
  p = np;
}

// One frame into the state: (a, b, p) <- e^w (a, b, p) + e^k (v, 1).
__device__ __forceinline__ void step(float& a, float& b, float& p, int& idx, float w,
                                     float k, float v, int t) {
  const float pd = p + w;
  const float np = fmaxf(pd, k);
  const float c1 = __expf(pd - np);
  const float c2 = __expf(k - np);
  a = a * c1 + v * c2;
  b = b * c1 + c2;
  if (k > pd) idx = t;
  p = np;
}

struct Shared {
  float a[kG][kChannels], b[kG][kChannels], p[kG][kChannels];
  int idx[kG][kChannels];
};

// Loads this thread's frames and leaves in (a, b, p, idx) the state entering
// them; carry (the state entering the super-chunk) is advanced past it.
template <typename scalar_t>
__device__ __forceinline__ void forward_enter(
    Shared& sh, const scalar_t* __restrict__ k, const scalar_t* __restrict__ v,
    int T, int C, int c, bool live, int t0, float w,
    float (&kr)[kL], float (&vr)[kL], float& ca, float& cb, float& cp, int& cidx,
    float& a, float& b, float& p, int& idx) {
  const int g = threadIdx.y, x = threadIdx.x;
  float sa = 0.f, sb = 0.f, sp = kEmptyP;
  int sidx = -1;
#pragma unroll
  for (int i = 0; i < kL; ++i) {
    const int t = t0 + i;
    if (live && t < T) {
      kr[i] = to_f(k[(size_t)t * C + c]);
      vr[i] = to_f(v[(size_t)t * C + c]);
      step(sa, sb, sp, sidx, w, kr[i], vr[i], t);
    }
  }
  sh.a[g][x] = sa; sh.b[g][x] = sb; sh.p[g][x] = sp; sh.idx[g][x] = sidx;
  __syncthreads();
  const int base = t0 - g * kL;
  for (int j = 0; j < kG; ++j) {
    if (j == g) { a = ca; b = cb; p = cp; idx = cidx; }
    const int n = max(0, min(kL, T - (base + j * kL)));  // real frames of row j
    merge(ca, cb, cp, cidx, n * w, sh.a[j][x], sh.b[j][x], sh.p[j][x], sh.idx[j][x]);
  }
  __syncthreads();
}

template <typename scalar_t>
__global__ void __launch_bounds__(kChannels * kG) wkv_forward_kernel(
    const float* __restrict__ w_, const float* __restrict__ u_,
    const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
    const float* __restrict__ state_in, scalar_t* __restrict__ y_,
    float* __restrict__ state_out, int* __restrict__ argmax_out,
    float* __restrict__ saved, int T, int C, int n_span) {
  __shared__ Shared sh;
  const int bi = blockIdx.y, g = threadIdx.y;
  const int c = blockIdx.x * kChannels + threadIdx.x;
  const bool live = c < C;
  const int cc = live ? c : 0;
  const float w = w_[cc], u = u_[cc];
  const size_t off = (size_t)bi * T * C;
  const scalar_t* k = k_ + off;
  const scalar_t* v = v_ + off;
  scalar_t* y = y_ + off;
  const float* s0 = state_in + (size_t)bi * 3 * C;
  float ca = s0[cc], cb = s0[C + cc], cp = s0[2 * C + cc];
  int cidx = -1;
  for (int s = 0; s < n_span; ++s) {
    if (g == 0 && live) {
      float* sv = saved + ((size_t)bi * n_span + s) * 3 * C;
      sv[c] = ca; sv[C + c] = cb; sv[2 * C + c] = cp;
    }
    const int t0 = s * kSpan + g * kL;
    float kr[kL], vr[kL], a, b, p;
    int idx;
    forward_enter(sh, k, v, T, C, c, live, t0, w, kr, vr, ca, cb, cp, cidx, a, b, p, idx);
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const int t = t0 + i;
      if (live && t < T) {
        const float e = u + kr[i];
        const float q = fmaxf(p, e);
        const float c1 = __expf(p - q), c2 = __expf(e - q);
        y[(size_t)t * C + c] = from_f<scalar_t>((a * c1 + vr[i] * c2) / (b * c1 + c2));
        step(a, b, p, idx, w, kr[i], vr[i], t);
        if (t == T - 1) {
          float* so = state_out + (size_t)bi * 3 * C;
          so[c] = a; so[C + c] = b; so[2 * C + c] = p;
          argmax_out[(size_t)bi * C + c] = idx;
        }
      }
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kChannels * kG) wkv_backward_kernel(
    const float* __restrict__ w_, const float* __restrict__ u_,
    const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
    const float* __restrict__ state_in, const float* __restrict__ saved,
    const float* __restrict__ state_out, const int* __restrict__ argmax,
    const scalar_t* __restrict__ gy_, const float* __restrict__ gstate_out,
    scalar_t* __restrict__ gk_, scalar_t* __restrict__ gv_, float* __restrict__ gstate_in,
    float* __restrict__ gw_part, float* __restrict__ gu_part, int T, int C, int n_span) {
  __shared__ Shared sh;
  __shared__ float red_w[kG][kChannels], red_u[kG][kChannels];
  const int bi = blockIdx.y, g = threadIdx.y, x = threadIdx.x;
  const int c = blockIdx.x * kChannels + x;
  const bool live = c < C;
  const int cc = live ? c : 0;
  const float w = w_[cc], u = u_[cc];
  const size_t off = (size_t)bi * T * C;
  const scalar_t* k = k_ + off;
  const scalar_t* v = v_ + off;
  const scalar_t* gy = gy_ + off;
  scalar_t* gk = gk_ + off;
  scalar_t* gv = gv_ + off;

  // Cotangent of the final state: on A_T = a e^p and B_T = b e^p, plus what
  // is left on p itself, which flows to the frame (or initial p) that set the max.
  const size_t so = (size_t)bi * 3 * C;
  const float fa = state_out[so + cc], fb = state_out[so + C + cc], fp = state_out[so + 2 * C + cc];
  const float ga = gstate_out[so + cc], gb = gstate_out[so + C + cc];
  const float gp_rest = gstate_out[so + 2 * C + cc] - ga * fa - gb * fb;
  const int amax = argmax[(size_t)bi * C + cc];
  float gw_acc = 0.f, gu_acc = 0.f;
  if (g == 0) gw_acc = gp_rest * (float)(T - 1 - amax);  // amax = -1: initial p, T decays
  // Adjoint carry (lambda, mu) = (la, mu) e^rho, at the frame after the super-chunk.
  float la = ga, mu = gb, rho = -fp;

  for (int s = n_span - 1; s >= 0; --s) {
    const float* sv = saved + ((size_t)bi * n_span + s) * 3 * C;
    float ca = sv[cc], cb = sv[C + cc], cp = sv[2 * C + cc];
    int cidx = -1;
    const int t0 = s * kSpan + g * kL;
    float kr[kL], vr[kL], a, b, p;
    int idx;
    forward_enter(sh, k, v, T, C, c, live, t0, w, kr, vr, ca, cb, cp, cidx, a, b, p, idx);
    // Per-frame forward quantities: state before the frame, max exponent, scaled denominator, y.
    float ar[kL], br[kL], pr[kL], qr[kL], dr[kL], yr[kL], gr[kL];
    float ra = 0.f, rm = 0.f, rr = kEmptyP;  // this row's adjoint summary, from zero at its end
#pragma unroll
    for (int i = 0; i < kL; ++i) {
      const int t = t0 + i;
      if (live && t < T) {
        ar[i] = a; br[i] = b; pr[i] = p;
        const float e = u + kr[i];
        qr[i] = fmaxf(p, e);
        const float c1 = __expf(p - qr[i]), c2 = __expf(e - qr[i]);
        dr[i] = b * c1 + c2;
        yr[i] = (a * c1 + vr[i] * c2) / dr[i];
        gr[i] = to_f(gy[(size_t)t * C + c]);
        step(a, b, p, idx, w, kr[i], vr[i], t);
      }
    }
#pragma unroll
    for (int i = kL - 1; i >= 0; --i) {
      const int t = t0 + i;
      if (live && t < T) {
        const float nr = fmaxf(rr + w, -qr[i]);
        const float c1 = __expf(rr + w - nr), c2 = __expf(-qr[i] - nr) * gr[i] / dr[i];
        ra = ra * c1 + c2;
        rm = rm * c1 - c2 * yr[i];
        rr = nr;
      }
    }
    sh.a[g][x] = ra; sh.b[g][x] = rm; sh.p[g][x] = rr;
    __syncthreads();
    // Reverse exclusive combine: adjoint at the frame after this row's frames.
    const int base = s * kSpan;
    float la_g = 0.f, mu_g = 0.f, rho_g = 0.f;
    int unused = 0;
    for (int j = kG - 1; j >= 0; --j) {
      if (j == g) { la_g = la; mu_g = mu; rho_g = rho; }
      const int n = max(0, min(kL, T - (base + j * kL)));
      merge(la, mu, rho, unused, n * w, sh.a[j][x], sh.b[j][x], sh.p[j][x], 0);
    }
    __syncthreads();
#pragma unroll
    for (int i = kL - 1; i >= 0; --i) {
      const int t = t0 + i;
      if (live && t < T) {
        const float ek = __expf(rho_g + kr[i]);         // e^k lambda-scale, <= 1 by construction
        const float eu = __expf(u + kr[i] - qr[i]) * gr[i] / dr[i];
        float gkt = ek * (vr[i] * la_g + mu_g) + eu * (vr[i] - yr[i]);
        if (t == amax) gkt += gp_rest;
        gk[(size_t)t * C + c] = from_f<scalar_t>(gkt);
        gv[(size_t)t * C + c] = from_f<scalar_t>(ek * la_g + eu);
        gu_acc += eu * (vr[i] - yr[i]);
        gw_acc += (la_g * ar[i] + mu_g * br[i]) * __expf(rho_g + pr[i] + w);
        const float nr = fmaxf(rho_g + w, -qr[i]);
        const float c1 = __expf(rho_g + w - nr), c2 = __expf(-qr[i] - nr) * gr[i] / dr[i];
        la_g = la_g * c1 + c2;
        mu_g = mu_g * c1 - c2 * yr[i];
        rho_g = nr;
      }
    }
    if (s == 0 && g == 0 && live) {
      // Adjoint at frame 0 onto the initial (a0, b0, p0).
      const size_t si = (size_t)bi * 3 * C;
      const float a0 = state_in[si + c], b0 = state_in[si + C + c], p0 = state_in[si + 2 * C + c];
      const float sc = __expf(rho_g + p0);
      gstate_in[si + c] = la_g * sc;
      gstate_in[si + C + c] = mu_g * sc;
      gstate_in[si + 2 * C + c] = (la_g * a0 + mu_g * b0) * sc + (amax == -1 ? gp_rest : 0.f);
    }
  }
  red_w[g][x] = gw_acc;
  red_u[g][x] = gu_acc;
  __syncthreads();
  if (g == 0 && live) {
    float sw = 0.f, su = 0.f;
    for (int j = 0; j < kG; ++j) { sw += red_w[j][x]; su += red_u[j][x]; }
    gw_part[(size_t)bi * C + c] = sw;
    gu_part[(size_t)bi * C + c] = su;
  }
}

void check(const torch::Tensor& t, const char* name, int dim) {
  TORCH_CHECK(t.is_cuda(), "wkv: ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.is_contiguous(), "wkv: ", name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, "wkv: ", name, " must have ", dim, " dims");
}

// fp32, fp16 and bf16 I/O; float64 stays on the PyTorch path.
#define WKV_DISPATCH(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                           \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

int spans(int T) { return (T + kSpan - 1) / kSpan; }

// w, u: (C,) fp32 (w already -exp(time_decay)); k, v: (B, T, C); state: (B, 3, C) fp32.
// Returns y (B, T, C), state_out (B, 3, C), argmax (B, C) int32, saved (B, S, 3, C).
std::vector<torch::Tensor> forward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                   torch::Tensor v, torch::Tensor state) {
  check(w, "w", 1); check(u, "u", 1); check(k, "k", 3); check(v, "v", 3); check(state, "state", 3);
  TORCH_CHECK(w.scalar_type() == at::kFloat && u.scalar_type() == at::kFloat &&
              state.scalar_type() == at::kFloat, "wkv: w, u and state must be float32");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), "wkv: k and v must share a dtype");
  const at::cuda::CUDAGuard guard(k.device());
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  TORCH_CHECK(T > 0, "wkv: T must be positive");
  const int S = spans(T);
  auto y = torch::empty_like(k);
  auto f32 = state.options();
  auto state_out = torch::empty({B, 3, C}, f32);
  auto amax = torch::empty({B, C}, f32.dtype(at::kInt));
  auto saved = torch::empty({B, S, 3, C}, f32);
  const dim3 grid((C + kChannels - 1) / kChannels, B), block(kChannels, kG);
  auto stream = c10::cuda::getCurrentCUDAStream();
  WKV_DISPATCH(k.scalar_type(), "wkv_forward", [&] {
    wkv_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        w.data_ptr<float>(), u.data_ptr<float>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        state.data_ptr<float>(), y.data_ptr<scalar_t>(), state_out.data_ptr<float>(),
        amax.data_ptr<int>(), saved.data_ptr<float>(), T, C, S);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, state_out, amax, saved};
}

// Returns gk, gv (B, T, C), gstate (B, 3, C), gw and gu per batch row (B, C), all
// w.r.t. w (not time_decay) and u.
std::vector<torch::Tensor> backward(torch::Tensor w, torch::Tensor u, torch::Tensor k,
                                    torch::Tensor v, torch::Tensor state, torch::Tensor saved,
                                    torch::Tensor state_out, torch::Tensor amax,
                                    torch::Tensor gy, torch::Tensor gstate_out) {
  check(k, "k", 3); check(v, "v", 3); check(gy, "grad y", 3); check(gstate_out, "grad state", 3);
  check(saved, "saved", 4); check(amax, "argmax", 2);
  TORCH_CHECK(gy.scalar_type() == k.scalar_type(), "wkv: grad y must have the dtype of k");
  TORCH_CHECK(gstate_out.scalar_type() == at::kFloat, "wkv: grad state must be float32");
  const at::cuda::CUDAGuard guard(k.device());
  const int B = k.size(0), T = k.size(1), C = k.size(2);
  const int S = spans(T);
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(k);
  auto f32 = state.options();
  auto gstate = torch::empty({B, 3, C}, f32);
  auto gw = torch::empty({B, C}, f32);
  auto gu = torch::empty({B, C}, f32);
  const dim3 grid((C + kChannels - 1) / kChannels, B), block(kChannels, kG);
  auto stream = c10::cuda::getCurrentCUDAStream();
  WKV_DISPATCH(k.scalar_type(), "wkv_backward", [&] {
    wkv_backward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        w.data_ptr<float>(), u.data_ptr<float>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        state.data_ptr<float>(), saved.data_ptr<float>(), state_out.data_ptr<float>(),
        amax.data_ptr<int>(), gy.data_ptr<scalar_t>(), gstate_out.data_ptr<float>(),
        gk.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), gstate.data_ptr<float>(),
        gw.data_ptr<float>(), gu.data_ptr<float>(), T, C, S);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {gk, gv, gstate, gw, gu};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "WKV forward: y, state_out, argmax, saved span states");
  m.def("backward", &backward, "WKV backward: gk, gv, gstate, gw and gu per batch row");
}
