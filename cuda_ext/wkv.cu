// RWKV-4 WKV (NOTES.md §1): forward and backward with a streaming (a, b, p) state.
//
// Parallel over time by the associativity of the state update (RWKV paper,
// arXiv 2305.13048): a block owns 32 channels (one per lane) of one batch row
// and walks time in super-chunks of G*R frames, G thread rows of R frames
// each (R = 16 for 2-byte I/O in the forward, else kL = 8). A row summarises its frames from the empty state, the G summaries of a
// channel are scanned by G lanes of one warp with shuffles (Hillis-Steele),
// folded into the carry from the previous super-chunk, and each row then
// produces its outputs from its entering state. k and v are read once, the
// next super-chunk's are loaded while the current one is computed. In training
// the state entering every kL frames is saved, so the backward (rows of kL)
// needs no forward scan.
//
// All sums are kept scaled by their largest exponent (the running max p of
// RWKV-LM's kernel), so |k| of any size stays finite; each rescale needs one
// exp, as one of the two factors is e^0.
//
// Backward: with the adjoints Lambda_t = dL/dA_t, M_t = dL/dB_t of the true
// sums A_t = a_t e^{p_t}, B_t = b_t e^{p_t}, the scaled adjoints
// lambda_t = Lambda_t e^{p_t}, mu_t = M_t e^{p_t} obey a linear recurrence
// whose coefficients are the forward's own rescale factors:
//   lambda_t = c1_t lambda_{t+1} + (gy_t / d_t) e^{p_t - q_t},
//   mu_t     = c1_t mu_{t+1}     - (gy_t / d_t) e^{p_t - q_t} y_t,
// c1_t = e^{p_t + w - p_{t+1}} <= 1, d_t, q_t the output's scaled denominator
// and max exponent. They stay bounded (q_s >= p_t + (s-t) w for s >= t), the
// reverse pass needs no exp, and chunks combine as affine maps (P, R):
// lambda_start = R + P lambda_end. Per row, everything that depends on the
// adjoint at the row's end is split into a local part and a coefficient of
// (lambda_end, mu_end), so the reverse pass runs once before the scan.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

constexpr float kEmptyP = -1e38f;  // espnet_rwkv.ops.wkv.EMPTY_P
constexpr int kLanes = 32;         // channels per block, one per lane
constexpr int kLog2L = 3;
constexpr int kL = 1 << kLog2L;    // frames per thread row; states are saved every kL frames
constexpr int kFwdRows = 16;       // most thread rows of the forward (512 threads, 2 blocks/SM)
constexpr int kFwdMaxLog2R = 4;    // longest forward row: 16 frames
constexpr int kBwdRows = 8;        // of the backward (more registers per frame)
constexpr unsigned kFull = 0xffffffffu;

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <typename T> __device__ __forceinline__ T from_f(float x) { return static_cast<T>(x); }

// c1 = e^{x1 - m}, c2 = e^{x2 - m} with m = max(x1, x2): one of them is 1, so one exp.
__device__ __forceinline__ void rescale(float x1, float x2, float& c1, float& c2) {
  const float d = x1 - x2;
  const float e = __expf(-fabsf(d));
  c1 = d >= 0.f ? 1.f : e;
  c2 = d >= 0.f ? e : 1.f;
}

// The update's two factors in one register: the one that is not 1, with the sign bit
// set when it is c1 (bit operations, so fast math cannot drop the sign of a zero).
__device__ __forceinline__ float pack_factors(float c1, float c2, bool keep) {
  return keep ? c2 : __int_as_float(__float_as_int(c1) | 0x80000000);
}
__device__ __forceinline__ void unpack_factors(float f, float& c1, float& c2) {
  const int bits = __float_as_int(f);
  const float m = __int_as_float(bits & 0x7fffffff);
  c1 = bits >= 0 ? 1.f : m;
  c2 = bits >= 0 ? m : 1.f;
}

// (a, b, p, idx) <- (a, b, p) decayed by `decay`, plus the later (sa, sb, sp, sidx).
// idx: frame that set the max exponent; ties keep the earlier one.
__device__ __forceinline__ void merge(float& a, float& b, float& p, int& idx, float decay,
                                      float sa, float sb, float sp, int sidx) {
  const float pd = p + decay;
  float c1, c2;
  rescale(pd, sp, c1, c2);
  a = a * c1 + sa * c2;
  b = b * c1 + sb * c2;
  if (sp > pd) idx = sidx;
  p = fmaxf(pd, sp);
}

// w = -exp(time_decay), accurately: every exponent is a multiple of w.
__device__ __forceinline__ float decay_rate(const float* time_decay, int c) {
  return static_cast<float>(-exp(static_cast<double>(time_decay[c])));
}

// Frames per forward thread row: 16 for 2-byte I/O, which halves the per-frame share of
// the row scan (SASS: ~27 of 98 instructions per frame at 8), 8 for fp32, whose tiles of
// 16-frame rows would not leave two blocks per SM. A multiple of kL.
template <typename scalar_t>
constexpr int kFwdLog2R = sizeof(scalar_t) == 2 ? kFwdMaxLog2R : kLog2L;

// Runs body(FullRow) for a row of kN frames, else body(PartRow), which checks each frame
// against n: full rows, nearly all of them, run without per-frame guards.
struct FullRow { static constexpr bool value = true; };
struct PartRow { static constexpr bool value = false; };
template <int kN, typename Body>
__device__ __forceinline__ void rows_of(int n, Body&& body) {
  if (n == kN) body(FullRow{});
  else body(PartRow{});
}

// Asynchronous global -> shared copies (sm_80+): the next super-chunk's frames are
// staged in shared memory while the current one is computed, with no registers held.
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
      static_cast<unsigned>(__cvta_generic_to_shared(dst))), "l"(src));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(
      static_cast<unsigned>(__cvta_generic_to_shared(dst))), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Stages frames [base, base + 2^log2rows) of channels [c0, c0 + 32) of one (T, C) tensor
// into dst[rows][32]. vec (C a multiple of 16 bytes, 16-byte aligned data): 16-byte
// copies spread over the block; else each thread copies its own kN frames (rows g*kN..,
// channel x) with plain loads. Frames past T and channels past C are left as they are.
template <int kN, typename scalar_t>
__device__ __forceinline__ void stage_rows(scalar_t* dst, const scalar_t* src, int base,
                                           int log2rows, int T, int C, int c0, bool vec) {
  if (vec) {
    constexpr int kPer = 16 / sizeof(scalar_t);                      // elements per copy
    constexpr int kLog2Copies = sizeof(scalar_t) == 4 ? 3 : 2;        // copies per row
    const int tid = threadIdx.y * kLanes + threadIdx.x, n = blockDim.y * kLanes;
    for (int j = tid; j < (1 << (log2rows + kLog2Copies)); j += n) {
      const int r = j >> kLog2Copies, q = (j & ((1 << kLog2Copies) - 1)) * kPer;
      if (base + r < T && c0 + q < C)
        cp_async16(dst + r * kLanes + q, src + (base + r) * C + c0 + q);
    }
  } else {
    const int c = c0 + threadIdx.x;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int r = threadIdx.y * kN + i;
      if (base + r < T && c < C) dst[r * kLanes + threadIdx.x] = src[(base + r) * C + c];
    }
  }
}

// Row summaries (a, b, p, idx) of one super-chunk, then per row the state entering it:
// written back in place. Run by every thread of the block in the scan role: warp g,
// lane x scans channel xs = g*(32/G) + x/G, row gs = x%G. carry: the state entering
// the super-chunk for channel xs, advanced past it.
struct FwdShared {
  float a[kFwdRows][kLanes + 1], b[kFwdRows][kLanes + 1], p[kFwdRows][kLanes + 1];
  int idx[kFwdRows][kLanes + 1];
};

template <int kN, bool kArgmax>
__device__ __forceinline__ void forward_scan(FwdShared& sh, int G, int gs, int xs, float w,
                                             float& ca, float& cb, float& cp, int& ci) {
  float ra = sh.a[gs][xs], rb = sh.b[gs][xs], rp = sh.p[gs][xs];
  int ri = kArgmax ? sh.idx[gs][xs] : 0;
  for (int off = 1; off < G; off <<= 1) {  // inclusive scan over rows
    float oa = __shfl_up_sync(kFull, ra, off, G), ob = __shfl_up_sync(kFull, rb, off, G);
    float op = __shfl_up_sync(kFull, rp, off, G);
    int oi = kArgmax ? __shfl_up_sync(kFull, ri, off, G) : 0;
    if (gs >= off) {
      merge(oa, ob, op, oi, static_cast<float>(off * kN) * w, ra, rb, rp, ri);
      ra = oa; rb = ob; rp = op; ri = oi;
    }
  }
  // Rows 0..gs-1 end where row gs starts; the carry has decayed over them.
  float ea = __shfl_up_sync(kFull, ra, 1, G), eb = __shfl_up_sync(kFull, rb, 1, G);
  float ep = __shfl_up_sync(kFull, rp, 1, G);
  int ei = kArgmax ? __shfl_up_sync(kFull, ri, 1, G) : 0;
  float na = ca, nb = cb, np = cp;
  int ni = ci;
  if (gs > 0) merge(na, nb, np, ni, static_cast<float>(gs * kN) * w, ea, eb, ep, ei);
  sh.a[gs][xs] = na; sh.b[gs][xs] = nb; sh.p[gs][xs] = np;
  if (kArgmax) sh.idx[gs][xs] = ni;
  const float ta = __shfl_sync(kFull, ra, G - 1, G), tb = __shfl_sync(kFull, rb, G - 1, G);
  const float tp = __shfl_sync(kFull, rp, G - 1, G);
  const int ti = kArgmax ? __shfl_sync(kFull, ri, G - 1, G) : 0;
  merge(ca, cb, cp, ci, static_cast<float>(G * kN) * w, ta, tb, tp, ti);
}

// Grid: B * ceil(C/32) blocks; block (32, G), G a power of two <= kFwdRows; dynamic
// shared memory: two stages of k and v tiles, 2 * 2 * G*R * 32 elements, R frames a row.
// kTrain: also save the state entering every kL frames ((B, ceil(T/kL), 3, C)) and the
// frame that set the final max exponent (argmax, (B, C); -1: the initial p).
template <typename scalar_t, bool kTrain>
__global__ void __launch_bounds__(kLanes * kFwdRows, 2) wkv_forward_kernel(
    const float* __restrict__ time_decay, const float* __restrict__ time_first,
    const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
    const float* __restrict__ state_in, scalar_t* __restrict__ y_,
    float* __restrict__ state_out, int* __restrict__ argmax_out, float* __restrict__ saved,
    int T, int C, int log2G, bool vec) {
  __shared__ FwdShared sh;
  extern __shared__ float4 dyn[];
  scalar_t* tiles = reinterpret_cast<scalar_t*>(dyn);
  constexpr int kR = 1 << kFwdLog2R<scalar_t>;  // frames per thread row
  const int G = 1 << log2G, g = threadIdx.y, x = threadIdx.x;
  const int log2rows = log2G + kFwdLog2R<scalar_t>, rows = 1 << log2rows;
  const int n_cb = (C + kLanes - 1) / kLanes;
  const int bi = blockIdx.x / n_cb, c0 = (blockIdx.x % n_cb) * kLanes;
  const int c = c0 + x;
  const bool live = c < C;
  const float w = decay_rate(time_decay, live ? c : 0), u = time_first[live ? c : 0];
  const size_t off = (size_t)bi * T * C;
  const scalar_t* k = k_ + off;
  const scalar_t* v = v_ + off;
  scalar_t* y = y_ + off;
  const int n_saved = (T + kL - 1) / kL;

  // Scan role: this lane's channel and row, and the carry of that channel.
  const int gs = x & (G - 1), xs = (g << (5 - log2G)) + (x >> log2G);
  const int cs = min(c0 + xs, C - 1);
  const float ws = decay_rate(time_decay, cs);
  float ca = 0.f, cb = 0.f, cp = kEmptyP;
  int ci = -1;
  if (state_in != nullptr) {
    const float* s0 = state_in + (size_t)bi * 3 * C;
    ca = s0[cs]; cb = s0[C + cs]; cp = s0[2 * C + cs];
  }

  auto stage = [&](int st, int base) {
    scalar_t* tk = tiles + st * 2 * rows * kLanes;
    stage_rows<kR>(tk, k, base, log2rows, T, C, c0, vec);
    stage_rows<kR>(tk + rows * kLanes, v, base, log2rows, T, C, c0, vec);
    cp_async_commit();
  };
  stage(0, 0);
  int st = 0;
  for (int base = 0; base < T; base += rows, st ^= 1) {
    cp_async_wait_all();
    __syncthreads();  // this stage landed; everyone is done with the other one
    if (base + rows < T) stage(st ^ 1, base + rows);
    const scalar_t* ks = tiles + st * 2 * rows * kLanes + g * kR * kLanes + x;  // frame i: ks[i * 32]
    const scalar_t* vs = ks + rows * kLanes;
    const int t0 = base + g * kR;
    const int n = live ? max(0, min(kR, T - t0)) : 0;  // this row's frames
    // Row summary from the empty state: max exponent first, then one exp per frame.
    float sp = kEmptyP, sa = 0.f, sb = 0.f;
    int sidx = -1;
    rows_of<kR>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        if (all.value || i < n) {
          const float e = fmaf(static_cast<float>(kR - 1 - i), w, to_f(ks[i * kLanes]));
          if (e > sp) {
            sp = e;
            if (kTrain) sidx = t0 + i;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        if (all.value || i < n) {
          const float e = __expf(fmaf(static_cast<float>(kR - 1 - i), w, to_f(ks[i * kLanes])) - sp);
          sa = fmaf(e, to_f(vs[i * kLanes]), sa);
          sb += e;
        }
      }
    });
    sh.a[g][x] = sa; sh.b[g][x] = sb; sh.p[g][x] = sp;
    if (kTrain) sh.idx[g][x] = sidx;
    __syncthreads();
    forward_scan<kR, kTrain>(sh, G, gs, xs, ws, ca, cb, cp, ci);
    __syncthreads();
    float a = sh.a[g][x], b = sh.b[g][x], p = sh.p[g][x];
    int idx = kTrain ? sh.idx[g][x] : 0;
    scalar_t* yr = y + t0 * C + c;
    float* sv = saved + ((size_t)bi * n_saved + t0 / kL) * 3 * C + c;
    rows_of<kR>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        if (all.value || i < n) {
          if (kTrain && i % kL == 0) {  // the state entering frame t0 + i, for the backward
            float* svi = sv + (i / kL) * 3 * C;
            svi[0] = a; svi[C] = b; svi[2 * C] = p;
          }
          const float kt = to_f(ks[i * kLanes]), vt = to_f(vs[i * kLanes]);
          float c1, c2;
          rescale(p, u + kt, c1, c2);
          yr[i * C] = from_f<scalar_t>(__fdividef(a * c1 + vt * c2, b * c1 + c2));
          merge(a, b, p, idx, w, vt, 1.f, kt, t0 + i);  // the state after frame t0 + i
        }
      }
    });
    if (n > 0 && t0 + n == T) {
      float* so = state_out + (size_t)bi * 3 * C;
      so[c] = a; so[C + c] = b; so[2 * C + c] = p;
      if (kTrain) argmax_out[(size_t)bi * C + c] = idx;
    }
  }
}

// Reverse scan of the rows' adjoint maps (P, R_lambda, R_mu), lambda_start = R + P lambda_end,
// in the scan role as forward_scan. Leaves in shared memory the adjoint at the end of
// each row; carry: the adjoint at the end of the super-chunk, moved to its start.
struct BwdShared {
  float P[kBwdRows][kLanes + 1], rl[kBwdRows][kLanes + 1], rm[kBwdRows][kLanes + 1];
};

__device__ __forceinline__ void backward_scan(BwdShared& sh, int G, int gs, int xs,
                                              float& cl, float& cm) {
  float P = sh.P[gs][xs], rl = sh.rl[gs][xs], rm = sh.rm[gs][xs];
  for (int off = 1; off < G; off <<= 1) {  // inclusive over rows gs..G-1
    const float oP = __shfl_down_sync(kFull, P, off, G), ol = __shfl_down_sync(kFull, rl, off, G);
    const float om = __shfl_down_sync(kFull, rm, off, G);
    if (gs + off < G) {
      rl = fmaf(P, ol, rl);
      rm = fmaf(P, om, rm);
      P *= oP;
    }
  }
  float eP = __shfl_down_sync(kFull, P, 1, G), el = __shfl_down_sync(kFull, rl, 1, G);
  float em = __shfl_down_sync(kFull, rm, 1, G);
  if (gs == G - 1) { eP = 1.f; el = 0.f; em = 0.f; }
  sh.rl[gs][xs] = fmaf(eP, cl, el);
  sh.rm[gs][xs] = fmaf(eP, cm, em);
  const float tP = __shfl_sync(kFull, P, 0, G), tl = __shfl_sync(kFull, rl, 0, G);
  const float tm = __shfl_sync(kFull, rm, 0, G);
  cl = fmaf(tP, cl, tl);
  cm = fmaf(tP, cm, tm);
}

// Grid and block as the forward, G <= kBwdRows; super-chunks in reverse time. Dynamic
// shared memory: two stages of k, v, gy tiles (3 * G*kL * 32 elements) and of the rows'
// saved states (G * 3 * 32 floats). gy, gstate_out, state_in, gstate_in may be null
// (zero cotangent / empty initial state). gw_part, gu_part (B, C): this batch row's
// gradient of w and u.
template <typename scalar_t>
__global__ void __launch_bounds__(kLanes * kBwdRows, 2) wkv_backward_kernel(
    const float* __restrict__ time_decay, const float* __restrict__ time_first,
    const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
    const float* __restrict__ state_in, const float* __restrict__ saved,
    const float* __restrict__ state_out, const int* __restrict__ argmax,
    const scalar_t* __restrict__ gy_, const float* __restrict__ gstate_out,
    scalar_t* __restrict__ gk_, scalar_t* __restrict__ gv_, float* __restrict__ gstate_in,
    float* __restrict__ gw_part, float* __restrict__ gu_part, int T, int C, int log2G,
    bool vec) {
  __shared__ BwdShared sh;
  __shared__ float red_w[kBwdRows][kLanes], red_u[kBwdRows][kLanes];
  extern __shared__ float4 dyn[];
  const int G = 1 << log2G, g = threadIdx.y, x = threadIdx.x;
  const int log2rows = log2G + kLog2L, rows = 1 << log2rows;
  scalar_t* tiles = reinterpret_cast<scalar_t*>(dyn);                        // [2][3][rows][32]
  float* states = reinterpret_cast<float*>(dyn) + (6 * rows * kLanes * sizeof(scalar_t) + 3) / 4;
  const int n_cb = (C + kLanes - 1) / kLanes;
  const int bi = blockIdx.x / n_cb, c0 = (blockIdx.x % n_cb) * kLanes;
  const int c = c0 + x;
  const bool live = c < C;
  const int cc = live ? c : 0;
  const float w = decay_rate(time_decay, cc), u = time_first[cc];
  const size_t off = (size_t)bi * T * C;
  const scalar_t* k = k_ + off;
  const scalar_t* v = v_ + off;
  const scalar_t* gy = gy_ == nullptr ? nullptr : gy_ + off;
  scalar_t* gk = gk_ + off;
  scalar_t* gv = gv_ + off;
  const int n_saved = (T + kL - 1) / kL;
  const float* sv = saved + (size_t)bi * n_saved * 3 * C;

  // Cotangent of the final state: on A_T = a e^p and B_T = b e^p, so lambda_T = g_a and
  // mu_T = g_b, plus what is left on p itself, which flows to the frame (or the
  // initial p) that set the max: to its k and, through the decays since, to w.
  const size_t so = (size_t)bi * 3 * C;
  float rest = 0.f;
  if (gstate_out != nullptr)
    rest = gstate_out[so + 2 * C + cc] - gstate_out[so + cc] * state_out[so + cc] -
           gstate_out[so + C + cc] * state_out[so + C + cc];
  const int amax = argmax[(size_t)bi * C + cc];
  float gw_acc = g == 0 ? rest * static_cast<float>(T - 1 - amax) : 0.f;  // amax -1: T decays
  float gu_acc = 0.f;

  // Scan role: the adjoint carry of channel xs, entering from the end of the sequence.
  const int gs = x & (G - 1), xs = (g << (5 - log2G)) + (x >> log2G);
  const int cs = min(c0 + xs, C - 1);
  float cl = 0.f, cm = 0.f;
  if (gstate_out != nullptr) { cl = gstate_out[so + cs]; cm = gstate_out[so + C + cs]; }

  auto stage = [&](int st, int base) {
    scalar_t* tk = tiles + st * 3 * rows * kLanes;
    stage_rows<kL>(tk, k, base, log2rows, T, C, c0, vec);
    stage_rows<kL>(tk + rows * kLanes, v, base, log2rows, T, C, c0, vec);
    if (gy != nullptr) stage_rows<kL>(tk + 2 * rows * kLanes, gy, base, log2rows, T, C, c0, vec);
    const int t0 = base + g * kL;
    if (live && t0 < T) {
      const float* s = sv + (size_t)(t0 / kL) * 3 * C + c;
      float* d = states + ((st * G + g) * 3) * kLanes + x;
      cp_async4(d, s);
      cp_async4(d + kLanes, s + C);
      cp_async4(d + 2 * kLanes, s + 2 * C);
    }
    cp_async_commit();
  };
  const int last = (T - 1) >> log2rows << log2rows;
  stage(0, last);
  int st = 0;
  for (int base = last; base >= 0; base -= rows, st ^= 1) {
    cp_async_wait_all();
    __syncthreads();  // this stage landed; everyone is done with the other one
    if (base > 0) stage(st ^ 1, base - rows);
    const scalar_t* ks = tiles + st * 3 * rows * kLanes + g * kL * kLanes + x;  // frame i: ks[i * 32]
    const scalar_t* vs = ks + rows * kLanes;
    const scalar_t* gys = vs + rows * kLanes;
    const float* s = states + ((st * G + g) * 3) * kLanes + x;
    const int t0 = base + g * kL;
    const int n = live ? max(0, min(kL, T - t0)) : 0;  // this row's frames
    float a = s[0], b = s[kLanes], p = s[2 * kLanes];
    // Pass A, forward in time: recompute the output's and the update's factors. Per
    // frame: y, the update's factors (packed), a and b times the update's c1, and the
    // sources of lambda and of gv.
    float yr[kL], fr[kL], ar[kL], br[kL], alr[kL], gmr[kL];
    rows_of<kL>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        if (all.value || i < n) {
          const float kt = to_f(ks[i * kLanes]), vt = to_f(vs[i * kLanes]);
          float ep, eu;
          rescale(p, u + kt, ep, eu);
          const float rd = __fdividef(1.f, b * ep + eu);
          yr[i] = (a * ep + vt * eu) * rd;
          const float gt = gy != nullptr ? to_f(gys[i * kLanes]) * rd : 0.f;  // gy / d
          alr[i] = gt * ep;
          gmr[i] = gt * eu;
          const float pw = p + w;
          float c1, c2;
          rescale(pw, kt, c1, c2);
          fr[i] = pack_factors(c1, c2, pw >= kt);
          ar[i] = a * c1;
          br[i] = b * c1;
          a = ar[i] + vt * c2;
          b = br[i] + c2;
          p = fmaxf(pw, kt);
        }
      }
    });
    // Pass B, reverse: the row's adjoint map from its end (S = P, lambda/mu local = R),
    // and each output's local part plus its coefficient of the adjoint at the row's end.
    float S = 1.f, ll = 0.f, ml = 0.f, gwl = 0.f, Ga = 0.f, Gb = 0.f;
    float gkl[kL], gvl[kL], sg[kL];
    rows_of<kL>(n, [&](auto all) {
#pragma unroll
      for (int i = kL - 1; i >= 0; --i) {
        if (all.value || i < n) {
          const float vt = to_f(vs[i * kLanes]);
          float c1, c2;
          unpack_factors(fr[i], c1, c2);
          gwl = fmaf(ar[i], ll, fmaf(br[i], ml, gwl));
          Ga = fmaf(ar[i], S, Ga);
          Gb = fmaf(br[i], S, Gb);
          const float du = gmr[i] * (vt - yr[i]);  // this frame's part of du, also in dk
          gu_acc += du;
          gvl[i] = fmaf(c2, ll, gmr[i]);
          gkl[i] = fmaf(c2, fmaf(vt, ll, ml), du);
          sg[i] = c2 * S;
          ll = fmaf(c1, ll, alr[i]);
          ml = fmaf(c1, ml, -alr[i] * yr[i]);
          S *= c1;
        }
      }
    });
    sh.P[g][x] = S; sh.rl[g][x] = ll; sh.rm[g][x] = ml;
    __syncthreads();
    backward_scan(sh, G, gs, xs, cl, cm);
    __syncthreads();
    const float le = sh.rl[g][x], me = sh.rm[g][x];  // adjoint at this row's end
    gw_acc += fmaf(le, Ga, fmaf(me, Gb, gwl));
    scalar_t* gkr = gk + t0 * C + c;
    scalar_t* gvr = gv + t0 * C + c;
    rows_of<kL>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kL; ++i) {
        if (all.value || i < n) {
          float gkt = fmaf(sg[i], fmaf(to_f(vs[i * kLanes]), le, me), gkl[i]);
          if (t0 + i == amax) gkt += rest;
          gkr[i * C] = from_f<scalar_t>(gkt);
          gvr[i * C] = from_f<scalar_t>(fmaf(sg[i], le, gvl[i]));
        }
      }
    });
    if (t0 == 0 && live && gstate_in != nullptr) {
      // Adjoint at frame 0, scaled by the initial p, is the gradient of the initial (a, b).
      const float l0 = fmaf(S, le, ll), m0 = fmaf(S, me, ml);
      const float* s0 = state_in + so;
      gstate_in[so + c] = l0;
      gstate_in[so + C + c] = m0;
      gstate_in[so + 2 * C + c] = l0 * s0[c] + m0 * s0[C + c] + (amax == -1 ? rest : 0.f);
    }
  }
  red_w[g][x] = gw_acc;
  red_u[g][x] = gu_acc;
  __syncthreads();
  if (g == 0 && live) {
    float sw = 0.f, su = 0.f;
    for (int j = 0; j < G; ++j) { sw += red_w[j][x]; su += red_u[j][x]; }
    gw_part[(size_t)bi * C + c] = sw;
    gu_part[(size_t)bi * C + c] = su;
  }
}

// Sum over the batch in a fixed order (deterministic, no atomics); d w / d time_decay = w.
__global__ void wkv_param_grad_kernel(const float* __restrict__ time_decay,
                                      const float* __restrict__ gw_part,
                                      const float* __restrict__ gu_part,
                                      float* __restrict__ g_decay, float* __restrict__ g_first,
                                      int B, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.f, su = 0.f;
  for (int b = 0; b < B; ++b) {
    sw += gw_part[(size_t)b * C + c];
    su += gu_part[(size_t)b * C + c];
  }
  g_decay[c] = sw * decay_rate(time_decay, c);
  g_first[c] = su;
}

// Integers go into error messages as text: streaming an integer (or an IntArrayRef) into a
// TORCH_CHECK message from this nvcc-compiled host code crashed the process on the H200
// machine (torch 2.11, CUDA 13.0) instead of raising; std::to_string does not.
// shape(t) is "(2, 8, 4)".
std::string shape(const torch::Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ")";
}

// t must have `dim` dims and live on `device`, k's CUDA device.
void check_on(const torch::Tensor& t, const char* name, int dim, const c10::Device& device) {
  TORCH_CHECK_VALUE(t.device() == device, "wkv: all inputs must be on one device, k is on ",
                    device, " and ", name, " on ", t.device());
  TORCH_CHECK_VALUE(t.dim() == dim, "wkv: ", name, " must have ", std::to_string(dim), " dims, got ",
                    std::to_string(t.dim()));
}

torch::Tensor contiguous(const torch::Tensor& t) { return t.is_contiguous() ? t : t.contiguous(); }

torch::Tensor float_param(const torch::Tensor& t, const char* name, int64_t C,
                          const c10::Device& device) {
  check_on(t, name, 1, device);
  TORCH_CHECK_VALUE(t.size(0) == C, "wkv: ", name, " must be (", std::to_string(C), ",), got ",
                    shape(t));
  return t.scalar_type() == at::kFloat ? contiguous(t) : t.to(at::kFloat).contiguous();
}

// The state (B, 3, C) float32, or nullptr for the empty state (undefined tensor).
const float* state_ptr(const torch::Tensor& s, torch::Tensor& keep, int64_t B, int64_t C,
                       const char* name, const c10::Device& device) {
  if (!s.defined()) return nullptr;
  check_on(s, name, 3, device);
  TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat && s.size(0) == B && s.size(1) == 3 &&
                    s.size(2) == C, "wkv: ", name, " must be (", std::to_string(B), ", 3, ",
                    std::to_string(C), ") float32, got ", shape(s), " ", s.scalar_type());
  keep = contiguous(s);
  return keep.data_ptr<float>();
}

// fp32, fp16 and bf16 I/O; float64 stays on the PyTorch path.
#define WKV_DISPATCH(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                           \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Thread rows of row_frames frames each for T frames: a power of two, at most `most`.
int log2_rows(int64_t T, int most, int row_frames) {
  int r = 0;
  while ((1 << r) < most && (int64_t)(1 << r) * row_frames < T) ++r;
  return r;
}

// Whether rows of these (B, T, C) tensors can be staged with 16-byte copies.
bool vec_ok(std::initializer_list<const torch::Tensor*> ts, int64_t C) {
  bool ok = C * ts.begin()[0]->element_size() % 16 == 0;
  for (auto t : ts) ok = ok && (!t->defined() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0);
  return ok;
}

// Launches with `smem` bytes of dynamic shared memory, raising the kernel's limit past 48 KiB.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<grid, block, smem, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// time_decay, time_first: (C,) any float dtype; k, v: (B, T, C), T > 0; state: (B, 3, C)
// float32 or undefined (empty). Returns y (B, T, C) and the state after the last frame
// (B, 3, C); with train, also what the backward needs: the state entering every kL frames
// (B, ceil(T/kL), 3, C) and the frame that set the final max exponent (B, C) int32.
std::vector<torch::Tensor> forward(const torch::Tensor& time_decay, const torch::Tensor& time_first,
                                   const torch::Tensor& k_in, const torch::Tensor& v_in,
                                   const torch::Tensor& state, bool train) {
  TORCH_CHECK_VALUE(k_in.is_cuda(), "wkv: k must be a CUDA tensor, got ", k_in.device());
  const auto dev = k_in.device();
  TORCH_CHECK_VALUE(k_in.dim() == 3 && k_in.sizes() == v_in.sizes(),
                    "wkv: k and v must both be (B, T, C), got ", shape(k_in), " and ", shape(v_in));
  check_on(v_in, "v", 3, dev);
  const auto io = k_in.scalar_type();
  TORCH_CHECK_TYPE(io == v_in.scalar_type() && (io == at::kFloat || io == at::kHalf ||
                   io == at::kBFloat16), "wkv: k and v must share float32, bfloat16 or float16, "
                   "got ", io, " and ", v_in.scalar_type());
  const at::cuda::CUDAGuard guard(dev);
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  TORCH_CHECK_VALUE(T > 0, "wkv: T must be positive");
  // Frame offsets t*C are int, t up to T plus one super-chunk.
  TORCH_CHECK_VALUE((T + (kFwdRows << kFwdMaxLog2R)) * C < (int64_t(1) << 31), "wkv: T*C too large");
  const auto td = float_param(time_decay, "time_decay", C, dev);
  const auto tf = float_param(time_first, "time_first", C, dev);
  const auto k = contiguous(k_in), v = contiguous(v_in);
  torch::Tensor s_keep;
  const float* s_in = state_ptr(state, s_keep, B, C, "state", dev);
  auto y = torch::empty_like(k);
  const auto f32 = k.options().dtype(at::kFloat);
  auto state_out = torch::empty({B, 3, C}, f32);
  torch::Tensor saved, amax;
  if (train) {
    saved = torch::empty({B, (T + kL - 1) / kL, 3, C}, f32);
    amax = torch::empty({B, C}, k.options().dtype(at::kInt));
  }
  if (B * C > 0) {
    const bool vec = vec_ok({&k, &v}, C);
    WKV_DISPATCH(k.scalar_type(), "wkv_forward", [&] {
      constexpr int kLog2R = kFwdLog2R<scalar_t>;
      const int log2G = log2_rows(T, kFwdRows, 1 << kLog2R);
      const dim3 grid(B * ((C + kLanes - 1) / kLanes)), block(kLanes, 1 << log2G);
      const size_t smem = 2 * 2 * (size_t(1) << (kLog2R + log2G)) * kLanes * sizeof(scalar_t);
      auto kernel = train ? wkv_forward_kernel<scalar_t, true> : wkv_forward_kernel<scalar_t, false>;
      launch(kernel, grid, block, smem, td.data_ptr<float>(), tf.data_ptr<float>(),
             k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), s_in, y.data_ptr<scalar_t>(),
             state_out.data_ptr<float>(), train ? amax.data_ptr<int>() : nullptr,
             train ? saved.data_ptr<float>() : nullptr, (int)T, (int)C, log2G, vec);
    });
  }
  if (train) return {y, state_out, saved, amax};
  return {y, state_out};
}

// The forward's inputs and train outputs, and the cotangents of y and of the final state
// (undefined: zero). Returns the gradients of time_decay and time_first (C,) float32, of k
// and v (B, T, C), and of the initial state (B, 3, C), undefined when it was empty.
std::vector<torch::Tensor> backward(
    const torch::Tensor& time_decay, const torch::Tensor& time_first, const torch::Tensor& k_in,
    const torch::Tensor& v_in, const torch::Tensor& state, const torch::Tensor& saved,
    const torch::Tensor& state_out, const torch::Tensor& amax, const torch::Tensor& grad_y,
    const torch::Tensor& grad_state) {
  const auto dev = k_in.device();
  const at::cuda::CUDAGuard guard(dev);
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  const auto td = float_param(time_decay, "time_decay", C, dev);
  const auto tf = float_param(time_first, "time_first", C, dev);
  const auto k = contiguous(k_in), v = contiguous(v_in);
  torch::Tensor s_keep, gs_keep, gy;
  const float* s_in = state_ptr(state, s_keep, B, C, "state", dev);
  const float* gs_out = state_ptr(grad_state, gs_keep, B, C, "grad of state", dev);
  if (grad_y.defined()) gy = contiguous(grad_y.to(k.scalar_type()));
  auto gk = torch::empty_like(k);
  auto gv = torch::empty_like(v);
  const auto f32 = k.options().dtype(at::kFloat);
  torch::Tensor gstate = s_in != nullptr ? torch::empty({B, 3, C}, f32) : torch::Tensor();
  auto g_decay = torch::empty({C}, f32);
  auto g_first = torch::empty({C}, f32);
  if (B * C == 0) return {g_decay.zero_(), g_first.zero_(), gk, gv, gstate};
  auto parts = torch::empty({2, B, C}, f32);  // gw, gu per batch row
  const int log2G = log2_rows(T, kBwdRows, kL);
  const dim3 grid(B * ((C + kLanes - 1) / kLanes)), block(kLanes, 1 << log2G);
  const bool vec = vec_ok({&k, &v, &gy}, C);
  WKV_DISPATCH(k.scalar_type(), "wkv_backward", [&] {
    const size_t smem = (6 * (kL << log2G) * kLanes * sizeof(scalar_t) + 3) / 4 * 4 +
                        2 * (1 << log2G) * 3 * kLanes * sizeof(float);
    launch(wkv_backward_kernel<scalar_t>, grid, block, smem, td.data_ptr<float>(),
           tf.data_ptr<float>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), s_in,
           saved.data_ptr<float>(), state_out.data_ptr<float>(), amax.data_ptr<int>(),
           gy.defined() ? gy.data_ptr<scalar_t>() : nullptr, gs_out, gk.data_ptr<scalar_t>(),
           gv.data_ptr<scalar_t>(), gstate.defined() ? gstate.data_ptr<float>() : nullptr,
           parts.data_ptr<float>(), parts.data_ptr<float>() + B * C, (int)T, (int)C, log2G, vec);
  });
  launch(wkv_param_grad_kernel, dim3((C + 255) / 256), dim3(256), 0, td.data_ptr<float>(),
         parts.data_ptr<float>(), parts.data_ptr<float>() + B * C, g_decay.data_ptr<float>(),
         g_first.data_ptr<float>(), (int)B, (int)C);
  return {g_decay, g_first, gk, gv, gstate};
}

// The autograd node, in C++: the engine's backward takes no GIL and runs no Python, and each
// direction is one C++ call.
struct WKVFunction : torch::autograd::Function<WKVFunction> {
  // From the empty state: a C++ node takes no undefined input, so this one has four.
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const torch::Tensor& time_decay,
      const torch::Tensor& time_first, const torch::Tensor& k, const torch::Tensor& v) {
    return forward(ctx, time_decay, time_first, k, v, torch::Tensor());
  }

  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const torch::Tensor& time_decay,
      const torch::Tensor& time_first, const torch::Tensor& k, const torch::Tensor& v,
      const torch::Tensor& state) {
    ctx->set_materialize_grads(false);  // an unused output's cotangent stays undefined, not zeros
    auto out = ::forward(time_decay, time_first, k, v, state, /*train=*/true);
    ctx->save_for_backward({time_decay, time_first, k, v, state, out[2], out[1], out[3]});
    return {out[0], out[1]};
  }

  // Parameter gradients come as float32; the engine casts them to the parameters' dtype. The
  // state's gradient is undefined when the state was empty (the four-input node).
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto s = ctx->get_saved_variables();
    return ::backward(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], grads[0], grads[1]);
  }
};

// WKV with an optional state (None: empty): y (B, T, C) and the state after the last frame.
// One autograd node when grad mode is on and an input needs a gradient; otherwise (inference,
// streaming) nothing is saved.
std::tuple<torch::Tensor, torch::Tensor> wkv(const torch::Tensor& time_decay,
                                             const torch::Tensor& time_first,
                                             const torch::Tensor& k, const torch::Tensor& v,
                                             const std::optional<torch::Tensor>& state) {
  const torch::Tensor s = state.value_or(torch::Tensor());
  const bool needs_grad =
      at::GradMode::is_enabled() && (time_decay.requires_grad() || time_first.requires_grad() ||
                                     k.requires_grad() || v.requires_grad() ||
                                     (s.defined() && s.requires_grad()));
  const auto out = !needs_grad ? forward(time_decay, time_first, k, v, s, /*train=*/false)
                   : s.defined() ? WKVFunction::apply(time_decay, time_first, k, v, s)
                                 : WKVFunction::apply(time_decay, time_first, k, v);
  return {out[0], out[1]};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("wkv", &wkv, "WKV: y and the final state, differentiable through a C++ autograd node");
}
