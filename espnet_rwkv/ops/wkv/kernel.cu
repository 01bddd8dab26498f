// RWKV-4 WKV (docs/rwkv.md; kernel design in docs/kernels.md): forward and backward with a
// streaming (a, b, p) state, the CUDA implementation of the registered ops
// espnet_rwkv::wkv_forward and wkv_backward (schemas and CPU kernels: kernel.cpp).
//
// Parallel over time by the associativity of the state update (RWKV paper,
// arXiv 2305.13048): a block owns 32 channels (one per lane) of one batch row
// and walks time in super-chunks of G*R frames, G thread rows of R frames
// each (R = 16 for 2-byte I/O in the forward, else kL = 8). A row summarises
// its frames from the empty state, one warp folds the G summaries of each
// channel in order into the carry from the previous super-chunk, giving each
// row its entering state, and each row then produces its outputs from it. k
// and v are read once, the next super-chunk's are loaded while the current one
// is computed. In training the state entering every kL frames is saved, so the
// backward (rows of kL) needs no forward pass over the sequence.
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
// lambda_start = R + P lambda_end. Each row builds its map in time order while it
// recomputes the forward, the rows are chained from the end, and one reverse pass
// per row then has the exact adjoints: no per-frame partial results are kept.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include "wkv.h"

namespace {

using namespace espnet_rwkv_wkv;  // kEmptyP, kL, the input checks

constexpr int kLog2Lanes = 5;
constexpr int kLanes = 1 << kLog2Lanes;  // channels per block, one per lane
constexpr int kFwdRows = 16;     // most thread rows of the forward (512 threads, 2 blocks/SM)
constexpr int kFwdMaxLog2R = 4;  // longest forward row: 16 frames
constexpr int kBwdRows = 8;      // of the backward (more registers per frame)

template <typename T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}
template <typename T>
__device__ __forceinline__ T from_f(float x) {
  return static_cast<T>(x);
}

// c1 = e^{x1 - m}, c2 = e^{x2 - m} with m = max(x1, x2): one of them is 1, so one exp.
// Returns whether x1 is the max (c1 = 1); callers take the max and the argmax from it too, so
// one comparison serves all three.
__device__ __forceinline__ bool rescale(float x1, float x2, float& c1, float& c2) {
  const float d = x1 - x2;
  const float e = __expf(-fabsf(d));
  const bool first = d >= 0.f;
  c1 = first ? 1.f : e;
  c2 = first ? e : 1.f;
  return first;
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

// (a, b, p) <- (a, b, p) decayed by `decay`, plus the later (sa, sb, sp). Returns whether the
// later one set the max exponent (ties keep the earlier).
__device__ __forceinline__ bool merge(float& a, float& b, float& p, float decay, float sa, float sb,
                                      float sp) {
  const float pd = p + decay;
  float c1, c2;
  const bool earlier = rescale(pd, sp, c1, c2);
  a = a * c1 + sa * c2;
  b = b * c1 + sb * c2;
  p = earlier ? pd : sp;
  return !earlier;
}

// w = -exp(time_decay), accurately: every exponent is a multiple of w.
__device__ __forceinline__ float decay_rate(const float* time_decay, int c) {
  return static_cast<float>(-exp(static_cast<double>(time_decay[c])));
}

// Frames per forward thread row: 16 for 2-byte I/O, which halves the per-frame share of
// the rows' chaining (a large share of the instructions per frame at 8), 8
// for fp32, whose tiles of 16-frame rows would not leave two blocks per SM. A multiple of kL.
template <typename scalar_t>
constexpr int kFwdLog2R = sizeof(scalar_t) == 2 ? kFwdMaxLog2R : kLog2L;

// Runs body(FullRow) for a row of kN frames, else body(PartRow), which checks each frame
// against n: full rows, nearly all of them, run without per-frame guards.
struct FullRow {
  static constexpr bool value = true;
};
struct PartRow {
  static constexpr bool value = false;
};
template <int kN, typename Body>
__device__ __forceinline__ void rows_of(int n, Body&& body) {
  if (n == kN)
    body(FullRow{});
  else
    body(PartRow{});
}

// Asynchronous global -> shared copies (sm_80+): the next super-chunk's frames are
// staged in shared memory while the current one is computed, with no registers held.
// dst is a shared-window address (smem_addr), taken once per kernel: converted from a
// generic pointer at each copy, the conversion was a large part of the instructions of a copy.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Stages super-chunks of kN frames per thread row (frames [base, base + G*kN)) of channels
// [c0, c0 + 32) of (T, C) tensors into tiles [G*kN][32]. vec (C a multiple of 16 bytes,
// 16-byte aligned data): 16-byte copies spread over the block, consecutive threads on
// consecutive pieces; every thread copies the same kCopies pieces of every super-chunk, so
// their offsets are set once here (recomputed per super-chunk, staging was a large share of
// the backward's instructions). Else each thread copies its own kN frames (rows g*kN..,
// channel x) with plain loads. Frames past T and channels past C are left as they are.
template <int kN, typename scalar_t>
struct Stager {
  static constexpr int kPer = 16 / sizeof(scalar_t);                 // elements per copy
  static constexpr int kLog2Pieces = sizeof(scalar_t) == 4 ? 3 : 2;  // copies per frame row
  static constexpr int kCopies = (kN << kLog2Pieces) / kLanes;       // per thread
  static_assert(kCopies >= 1 && kCopies * kLanes == (kN << kLog2Pieces), "whole pieces per thread");
  static constexpr int kLog2Row =
      kLog2Lanes + (sizeof(scalar_t) == 4 ? 2 : 1);  // a tile frame, bytes
  int src[kCopies];  // offset from the super-chunk's first frame at channel 0
  int dst[kCopies];  // byte offset in the tile, or -1; dst >> kLog2Row: the frame (-1 stays -1)
  int C, c0;
  bool vec;

  __device__ __forceinline__ Stager(int C_, int c0_, bool vec_) : C(C_), c0(c0_), vec(vec_) {
    const int tid = threadIdx.y * kLanes + threadIdx.x, threads = blockDim.y * kLanes;
#pragma unroll
    for (int j = 0; j < kCopies; ++j) {
      const int piece = j * threads + tid;
      const int r = piece >> kLog2Pieces, q = (piece & ((1 << kLog2Pieces) - 1)) * kPer;
      src[j] = r * C + c0 + q;
      dst[j] =
          c0 + q < C ? (r * kLanes + q) * static_cast<int>(sizeof(scalar_t)) : -1;  // -1: past C
    }
  }

  // tile: the tile's generic pointer, tile_s: its smem_addr.
  __device__ __forceinline__ void operator()(scalar_t* tile, unsigned tile_s, const scalar_t* src_,
                                             int base, int T) const {
    const scalar_t* s = src_ + base * C;
    if (vec) {
#pragma unroll
      for (int j = 0; j < kCopies; ++j)
        if (static_cast<unsigned>(dst[j] >> kLog2Row) < static_cast<unsigned>(T - base))
          cp_async16(tile_s + dst[j], s + src[j]);
    } else {
      const int c = c0 + threadIdx.x;
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const int r = threadIdx.y * kN + i;
        if (r < T - base && c < C) tile[r * kLanes + threadIdx.x] = s[r * C + c];
      }
    }
  }
};

// Row summaries (a, b, p) of one super-chunk, replaced by the state entering each row; at the
// end (training) each row's last reset frame.
struct FwdShared {
  float a[kFwdRows][kLanes], b[kFwdRows][kLanes], p[kFwdRows][kLanes];
  int last_reset[kFwdRows][kLanes];
};

// Run by warp 0: lane x folds channel x's G row summaries in order into the carry (the state
// entering the super-chunk, advanced past it), one merge per row, while the other warps wait
// at the barrier (a shuffle scan over the rows by every warp cost more instructions per
// warp-frame than this serial fold). With all rows there (long T) the loop has no guards, so
// the rows' loads and exps overlap: only p's add and max chain one row to the next.
template <int kN>
__device__ __forceinline__ void forward_carry(FwdShared& sh, int G, int x, float w, float& ca,
                                              float& cb, float& cp) {
  rows_of<kFwdRows>(G, [&](auto all) {
#pragma unroll
    for (int r = 0; r < kFwdRows; ++r) {
      if (all.value || r < G) {
        const float sa = sh.a[r][x], sb = sh.b[r][x], sp = sh.p[r][x];
        sh.a[r][x] = ca;
        sh.b[r][x] = cb;
        sh.p[r][x] = cp;
        merge(ca, cb, cp, static_cast<float>(kN) * w, sa, sb, sp);
      }
    }
  });
}

// Grid: B * ceil(C/32) blocks; block (32, G), G a power of two <= kFwdRows; dynamic
// shared memory: two stages of k and v tiles, 2 * 2 * G*R * 32 elements, R frames a row.
// kTrain: also save the state entering every kL frames ((B, ceil(T/kL), 3, C)) and the
// frame that set the final max exponent (argmax, (B, C); -1: the initial p).
template <typename scalar_t, bool kTrain>
__global__ void __launch_bounds__(kLanes* kFwdRows, 2)
    wkv_forward_kernel(const float* __restrict__ time_decay, const float* __restrict__ time_first,
                       const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
                       const float* __restrict__ state_in, scalar_t* __restrict__ y_,
                       float* __restrict__ state_out, int* __restrict__ argmax_out,
                       float* __restrict__ saved, int T, int C, int log2G, bool vec) {
  __shared__ FwdShared sh;
  extern __shared__ float4 dyn[];
  scalar_t* tiles = reinterpret_cast<scalar_t*>(dyn);
  const unsigned tiles_s = smem_addr(tiles);
  constexpr int kR = 1 << kFwdLog2R<scalar_t>;  // frames per thread row
  const int G = 1 << log2G, g = threadIdx.y, x = threadIdx.x;
  const int log2rows = log2G + kFwdLog2R<scalar_t>, rows = 1 << log2rows;
  const int n_cb = (C + kLanes - 1) / kLanes;
  const int bi = blockIdx.x / n_cb, c0 = (blockIdx.x % n_cb) * kLanes;
  const int c = c0 + x;
  const bool live = c < C;
  const int cc = live ? c : 0;  // a valid channel for lanes past C
  const float w = decay_rate(time_decay, cc), u = time_first[cc];
  const size_t off = (size_t)bi * T * C;
  const scalar_t* k = k_ + off;
  const scalar_t* v = v_ + off;
  scalar_t* y = y_ + off;
  const int n_saved = (T + kL - 1) / kL;

  // The carry of this lane's channel (kept by warp 0).
  float ca = 0.f, cb = 0.f, cp = kEmptyP;
  int last_reset = -1;  // training: the last frame of this thread's rows that set the max exponent
  if (state_in != nullptr && g == 0) {
    const float* s0 = state_in + (size_t)bi * 3 * C;
    ca = s0[cc];
    cb = s0[C + cc];
    cp = s0[2 * C + cc];
  }

  const Stager<kR, scalar_t> stager(C, c0, vec);
  auto stage = [&](int st, int base) {
    const int tk = st * 2 * rows * kLanes, tv = tk + rows * kLanes;  // tile offsets
    stager(tiles + tk, tiles_s + tk * sizeof(scalar_t), k, base, T);
    stager(tiles + tv, tiles_s + tv * sizeof(scalar_t), v, base, T);
    cp_async_commit();
  };
  stage(0, 0);
  int st = 0;
  for (int base = 0; base < T; base += rows, st ^= 1) {
    cp_async_wait_all();
    __syncthreads();  // this stage landed; everyone is done with the other one
    if (base + rows < T) stage(st ^ 1, base + rows);
    const scalar_t* ks =
        tiles + st * 2 * rows * kLanes + g * kR * kLanes + x;  // frame i: ks[i * 32]
    const scalar_t* vs = ks + rows * kLanes;
    const int t0 = base + g * kR;
    const int n = live ? max(0, min(kR, T - t0)) : 0;  // this row's frames
    // Row summary from the empty state: max exponent first, then one exp per frame.
    float sp = kEmptyP, sa = 0.f, sb = 0.f;
    rows_of<kR>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kR; ++i)
        if (all.value || i < n)
          sp = fmaxf(sp, fmaf(static_cast<float>(kR - 1 - i), w, to_f(ks[i * kLanes])));
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        if (all.value || i < n) {
          const float e =
              __expf(fmaf(static_cast<float>(kR - 1 - i), w, to_f(ks[i * kLanes])) - sp);
          sa = fmaf(e, to_f(vs[i * kLanes]), sa);
          sb += e;
        }
      }
    });
    sh.a[g][x] = sa;
    sh.b[g][x] = sb;
    sh.p[g][x] = sp;
    __syncthreads();
    if (g == 0) forward_carry<kR>(sh, G, x, w, ca, cb, cp);
    __syncthreads();
    float a = sh.a[g][x], b = sh.b[g][x], p = sh.p[g][x];
    scalar_t* yr = y + t0 * C + c;
    float* sv = saved + ((size_t)bi * n_saved + t0 / kL) * 3 * C + c;
    rows_of<kR>(n, [&](auto all) {
#pragma unroll
      for (int i = 0; i < kR; ++i) {
        if (all.value || i < n) {
          if (kTrain && i % kL == 0) {  // the state entering frame t0 + i, for the backward
            float* svi = sv + (i / kL) * 3 * C;
            svi[0] = a;
            svi[C] = b;
            svi[2 * C] = p;
          }
          const float kt = to_f(ks[i * kLanes]), vt = to_f(vs[i * kLanes]);
          float c1, c2;
          rescale(p, u + kt, c1, c2);
          yr[i * C] = from_f<scalar_t>(__fdividef(a * c1 + vt * c2, b * c1 + c2));
          const bool reset = merge(a, b, p, w, vt, 1.f, kt);  // the state after frame t0 + i
          if (kTrain && reset) last_reset = t0 + i;
        }
      }
    });
    if (n > 0 && t0 + n == T) {
      float* so = state_out + (size_t)bi * 3 * C;
      so[c] = a;
      so[C + c] = b;
      so[2 * C + c] = p;
    }
  }
  if (kTrain) {
    // The frame that set the final max exponent is the sequence's last reset: the latest of the
    // rows' last resets. Tracked in the output pass, it costs the summaries and the carry nothing.
    sh.last_reset[g][x] = last_reset;
    __syncthreads();
    if (g == 0 && live) {
      int latest = -1;
      for (int r = 0; r < G; ++r) latest = max(latest, sh.last_reset[r][x]);
      argmax_out[(size_t)bi * C + c] = latest;
    }
  }
}

// The rows' adjoint maps (P, R_lambda, R_mu), lambda_start = R + P lambda_end.
struct BwdShared {
  float P[kBwdRows][kLanes], rl[kBwdRows][kLanes], rm[kBwdRows][kLanes];
};

// Run by warp 0, as forward_carry: lane x walks channel x's rows from the last, leaving in
// (rl, rm) the adjoint at the end of each row and moving the carry (the adjoint at the end
// of the super-chunk) to its start.
__device__ __forceinline__ void backward_carry(BwdShared& sh, int G, int x, float& cl, float& cm) {
  rows_of<kBwdRows>(G, [&](auto all) {
#pragma unroll
    for (int r = kBwdRows - 1; r >= 0; --r) {
      if (all.value || r < G) {
        const float P = sh.P[r][x], rl = sh.rl[r][x], rm = sh.rm[r][x];
        sh.rl[r][x] = cl;
        sh.rm[r][x] = cm;
        cl = fmaf(P, cl, rl);
        cm = fmaf(P, cm, rm);
      }
    }
  });
}

// Grid and block as the forward, G <= kBwdRows; super-chunks in reverse time. Dynamic
// shared memory: two stages of k, v, gy tiles (3 * G*kL * 32 elements) and of the rows'
// saved states (G * 3 * 32 floats). gy, gstate_out, state_in, gstate_in may be null
// (zero cotangent / empty initial state). gw_part, gu_part (B, C): this batch row's
// gradient of w and u.
template <typename scalar_t>
__global__ void __launch_bounds__(kLanes* kBwdRows, 2)
    wkv_backward_kernel(const float* __restrict__ time_decay, const float* __restrict__ time_first,
                        const scalar_t* __restrict__ k_, const scalar_t* __restrict__ v_,
                        const float* __restrict__ state_in, const float* __restrict__ saved,
                        const float* __restrict__ state_out, const int* __restrict__ argmax,
                        const scalar_t* __restrict__ gy_, const float* __restrict__ gstate_out,
                        scalar_t* __restrict__ gk_, scalar_t* __restrict__ gv_,
                        float* __restrict__ gstate_in, float* __restrict__ gw_part,
                        float* __restrict__ gu_part, int T, int C, int log2G, bool vec) {
  __shared__ BwdShared sh;
  __shared__ float red_w[kBwdRows][kLanes], red_u[kBwdRows][kLanes];
  extern __shared__ float4 dyn[];
  const int G = 1 << log2G, g = threadIdx.y, x = threadIdx.x;
  const int log2rows = log2G + kLog2L, rows = 1 << log2rows;
  scalar_t* tiles = reinterpret_cast<scalar_t*>(dyn);  // [2][3][rows][32]
  float* states = reinterpret_cast<float*>(dyn) + (6 * rows * kLanes * sizeof(scalar_t) + 3) / 4;
  const unsigned tiles_s = smem_addr(tiles), states_s = smem_addr(states);
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

  // The adjoint carry of this lane's channel (kept by warp 0), entering from the end.
  float cl = 0.f, cm = 0.f;
  if (gstate_out != nullptr && g == 0) {
    cl = gstate_out[so + cc];
    cm = gstate_out[so + C + cc];
  }

  const Stager<kL, scalar_t> stager(C, c0, vec);
  auto stage = [&](int st, int base) {
    const int tk = st * 3 * rows * kLanes, tv = tk + rows * kLanes, tg = tv + rows * kLanes;
    stager(tiles + tk, tiles_s + tk * sizeof(scalar_t), k, base, T);
    stager(tiles + tv, tiles_s + tv * sizeof(scalar_t), v, base, T);
    if (gy != nullptr) stager(tiles + tg, tiles_s + tg * sizeof(scalar_t), gy, base, T);
    const int t0 = base + g * kL;
    if (live && t0 < T) {
      const float* s = sv + (size_t)(t0 / kL) * 3 * C + c;
      const unsigned d = states_s + (((st * G + g) * 3) * kLanes + x) * sizeof(float);
      cp_async4(d, s);
      cp_async4(d + kLanes * sizeof(float), s + C);
      cp_async4(d + 2 * kLanes * sizeof(float), s + 2 * C);
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
    const scalar_t* ks =
        tiles + st * 3 * rows * kLanes + g * kL * kLanes + x;  // frame i: ks[i * 32]
    const scalar_t* vs = ks + rows * kLanes;
    const scalar_t* gys = vs + rows * kLanes;
    const float* s = states + ((st * G + g) * 3) * kLanes + x;
    const int t0 = base + g * kL;
    const int n = live ? max(0, min(kL, T - t0)) : 0;  // this row's frames
    float a = s[0], b = s[kLanes], p = s[2 * kLanes];
    // Pass A, forward in time: recompute the output's and the update's factors. Per
    // frame: y, the update's factors (packed), a and b times the update's c1, and the
    // sources of lambda and of gv. Also the row's adjoint map (P, R), built in time order:
    // lambda_start = sum_i (prod_{j<i} c1_j) source_i + (prod_j c1_j) lambda_end.
    float yr[kL], fr[kL], ar[kL], br[kL], alr[kL], gmr[kL];
    float P = 1.f, Rl = 0.f, Rm = 0.f;
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
          const bool keep = rescale(pw, kt, c1, c2);
          fr[i] = pack_factors(c1, c2, keep);
          ar[i] = a * c1;
          br[i] = b * c1;
          a = ar[i] + vt * c2;
          b = br[i] + c2;
          p = keep ? pw : kt;  // as the forward's merge
          Rl = fmaf(P, alr[i], Rl);
          Rm = fmaf(P, -alr[i] * yr[i], Rm);
          P *= c1;
        }
      }
    });
    sh.P[g][x] = P;
    sh.rl[g][x] = Rl;
    sh.rm[g][x] = Rm;
    __syncthreads();
    if (g == 0) backward_carry(sh, G, x, cl, cm);
    __syncthreads();
    // Pass B, reverse, from the adjoint at the row's end: the exact adjoints (lambda, mu) of
    // the state after each frame give its gk, gv and its shares of gw, gu.
    float lam = sh.rl[g][x], mu = sh.rm[g][x];
    scalar_t* gkr = gk + t0 * C + c;
    scalar_t* gvr = gv + t0 * C + c;
    const int i_amax = amax - t0;  // the frame in this row that set the final p, if one does
    rows_of<kL>(n, [&](auto all) {
#pragma unroll
      for (int i = kL - 1; i >= 0; --i) {
        if (all.value || i < n) {
          const float vt = to_f(vs[i * kLanes]);
          float c1, c2;
          unpack_factors(fr[i], c1, c2);
          gw_acc = fmaf(ar[i], lam, fmaf(br[i], mu, gw_acc));
          const float du = gmr[i] * (vt - yr[i]);  // this frame's part of du, also in dk
          gu_acc += du;
          float gkt = fmaf(c2, fmaf(vt, lam, mu), du);
          if (i == i_amax) gkt += rest;
          gkr[i * C] = from_f<scalar_t>(gkt);
          gvr[i * C] = from_f<scalar_t>(fmaf(c2, lam, gmr[i]));
          lam = fmaf(c1, lam, alr[i]);
          mu = fmaf(c1, mu, -alr[i] * yr[i]);
        }
      }
    });
    if (t0 == 0 && live && gstate_in != nullptr) {
      // Adjoint at frame 0, scaled by the initial p, is the gradient of the initial (a, b).
      const float* s0 = state_in + so;
      gstate_in[so + c] = lam;
      gstate_in[so + C + c] = mu;
      gstate_in[so + 2 * C + c] = lam * s0[c] + mu * s0[C + c] + (amax == -1 ? rest : 0.f);
    }
  }
  red_w[g][x] = gw_acc;
  red_u[g][x] = gu_acc;
  __syncthreads();
  if (g == 0 && live) {
    float sw = 0.f, su = 0.f;
    for (int j = 0; j < G; ++j) {
      sw += red_w[j][x];
      su += red_u[j][x];
    }
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

at::Tensor float_param(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

bool cuda_io(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// fp32, fp16 and bf16 I/O; float64 stays on the PyTorch path.
#define WKV_DISPATCH(TYPE, NAME, ...)                                            \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE( \
                         at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// Thread rows of row_frames frames each for T frames: a power of two, at most `most`.
int log2_rows(int64_t T, int most, int row_frames) {
  int r = 0;
  while ((1 << r) < most && (int64_t)(1 << r) * row_frames < T) ++r;
  return r;
}

// Whether rows of these (B, T, C) tensors can be staged with 16-byte copies.
bool vec_ok(std::initializer_list<const at::Tensor*> ts, int64_t C) {
  bool ok = C * ts.begin()[0]->element_size() % 16 == 0;
  for (auto t : ts)
    ok = ok && (!t->defined() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0);
  return ok;
}

// Dynamic shared memory above 48 KB must be asked for per kernel.
template <typename Kernel>
void allow_shared(Kernel kernel, size_t smem) {
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
}

// espnet_rwkv::wkv_forward on CUDA tensors. time_decay, time_first: (C,) any float dtype;
// k, v: (B, T, C); state: (B, 3, C) float32 or none (empty). Returns y (B, T, C) and the state
// after the last frame (B, 3, C); with train, also what the backward needs: the state entering
// every kL frames (B, ceil(T/kL), 3, C) and the frame that set the final max exponent (B, C)
// int32 (else both empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_forward_cuda(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& state, bool train) {
  check_inputs(time_decay, time_first, k_in, v_in, state, cuda_io, "float32, bfloat16, float16");
  const c10::cuda::CUDAGuard guard(k_in.device());
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  // Frame offsets t*C are int, t up to T plus one super-chunk.
  TORCH_CHECK_VALUE((T + (kFwdRows << kFwdMaxLog2R)) * C < (int64_t(1) << 31),
                    "wkv: T*C too large");
  const auto td = float_param(time_decay), tf = float_param(time_first);
  const auto k = k_in.contiguous(), v = v_in.contiguous();
  const auto s_in = state.has_value() ? state->contiguous() : at::Tensor();
  const auto f32 = k.options().dtype(at::kFloat);
  auto y = at::empty({B, T, C}, k.options());
  auto state_out = at::empty({B, 3, C}, f32);
  auto saved = train ? at::empty({B, (T + kL - 1) / kL, 3, C}, f32) : at::empty({0}, f32);
  auto amax = at::empty(train ? at::IntArrayRef({B, C}) : at::IntArrayRef({0}),
                        k.options().dtype(at::kInt));
  if (T == 0) {  // no frames: the state passes through
    if (s_in.defined())
      state_out.copy_(s_in);
    else
      state_out.zero_().select(1, 2).fill_(kEmptyP);
    return {y, state_out, saved, amax};
  }
  if (B * C > 0) {
    const bool vec = vec_ok({&k, &v}, C);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    WKV_DISPATCH(k.scalar_type(), "wkv_forward", [&] {
      constexpr int kLog2R = kFwdLog2R<scalar_t>;
      const int log2G = log2_rows(T, kFwdRows, 1 << kLog2R);
      const dim3 grid(B * ((C + kLanes - 1) / kLanes)), block(kLanes, 1 << log2G);
      const size_t smem = 2 * 2 * (size_t(1) << (kLog2R + log2G)) * kLanes * sizeof(scalar_t);
      const auto launch_forward = [&](auto train_tag) {
        constexpr bool kTrain = decltype(train_tag)::value;
        const auto kernel = wkv_forward_kernel<scalar_t, kTrain>;
        allow_shared(kernel, smem);
        kernel<<<grid, block, smem, stream>>>(
            td.data_ptr<float>(), tf.data_ptr<float>(), k.data_ptr<scalar_t>(),
            v.data_ptr<scalar_t>(), s_in.defined() ? s_in.data_ptr<float>() : nullptr,
            y.data_ptr<scalar_t>(), state_out.data_ptr<float>(),
            kTrain ? amax.data_ptr<int>() : nullptr, kTrain ? saved.data_ptr<float>() : nullptr,
            (int)T, (int)C, log2G, vec);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (train)
        launch_forward(std::true_type{});
      else
        launch_forward(std::false_type{});
    });
  }
  return {y, state_out, saved, amax};
}

// espnet_rwkv::wkv_backward on CUDA tensors: the forward's inputs and train outputs, and the
// cotangents of y and of the final state (none: zero). Returns the gradients of time_decay and
// time_first (C,) float32, of k and v (B, T, C), and of the initial state (B, 3, C), empty
// when there was none.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wkv_backward_cuda(
    const at::Tensor& time_decay, const at::Tensor& time_first, const at::Tensor& k_in,
    const at::Tensor& v_in, const std::optional<at::Tensor>& state, const at::Tensor& saved_in,
    const at::Tensor& state_out_in, const at::Tensor& amax_in,
    const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_state) {
  check_inputs(time_decay, time_first, k_in, v_in, state, cuda_io, "float32, bfloat16, float16");
  check_saved(k_in, saved_in, amax_in);
  const c10::cuda::CUDAGuard guard(k_in.device());
  const int64_t B = k_in.size(0), T = k_in.size(1), C = k_in.size(2);
  const auto td = float_param(time_decay), tf = float_param(time_first);
  const auto k = k_in.contiguous(), v = v_in.contiguous();
  const auto saved = saved_in.contiguous(), state_out = state_out_in.contiguous();
  const auto amax = amax_in.contiguous();
  const auto s_in = state.has_value() ? state->contiguous() : at::Tensor();
  const auto gy = grad_y.has_value() ? grad_y->to(k.scalar_type()).contiguous() : at::Tensor();
  const auto gs = grad_state.has_value() ? grad_state->to(at::kFloat).contiguous() : at::Tensor();
  auto gk = at::empty({B, T, C}, k.options());
  auto gv = at::empty({B, T, C}, k.options());
  const auto f32 = k.options().dtype(at::kFloat);
  auto gstate = s_in.defined() ? at::empty({B, 3, C}, f32) : at::empty({0}, f32);
  auto g_decay = at::empty({C}, f32);
  auto g_first = at::empty({C}, f32);
  if (B * C == 0 || T == 0) {
    if (s_in.defined()) gstate.copy_(gs.defined() ? gs : at::zeros_like(gstate));
    return {g_decay.zero_(), g_first.zero_(), gk, gv, gstate};
  }
  auto parts = at::empty({2, B, C}, f32);  // gw, gu per batch row
  const int log2G = log2_rows(T, kBwdRows, kL);
  const dim3 grid(B * ((C + kLanes - 1) / kLanes)), block(kLanes, 1 << log2G);
  const bool vec = vec_ok({&k, &v, &gy}, C);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  WKV_DISPATCH(k.scalar_type(), "wkv_backward", [&] {
    const size_t smem = (6 * (kL << log2G) * kLanes * sizeof(scalar_t) + 3) / 4 * 4 +
                        2 * (1 << log2G) * 3 * kLanes * sizeof(float);
    const auto kernel = wkv_backward_kernel<scalar_t>;
    allow_shared(kernel, smem);
    kernel<<<grid, block, smem, stream>>>(
        td.data_ptr<float>(), tf.data_ptr<float>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        s_in.defined() ? s_in.data_ptr<float>() : nullptr, saved.data_ptr<float>(),
        state_out.data_ptr<float>(), amax.data_ptr<int>(),
        gy.defined() ? gy.data_ptr<scalar_t>() : nullptr,
        gs.defined() ? gs.data_ptr<float>() : nullptr, gk.data_ptr<scalar_t>(),
        gv.data_ptr<scalar_t>(), s_in.defined() ? gstate.data_ptr<float>() : nullptr,
        parts.data_ptr<float>(), parts.data_ptr<float>() + B * C, (int)T, (int)C, log2G, vec);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  wkv_param_grad_kernel<<<dim3((C + 255) / 256), dim3(256), 0, stream>>>(
      td.data_ptr<float>(), parts.data_ptr<float>(), parts.data_ptr<float>() + B * C,
      g_decay.data_ptr<float>(), g_first.data_ptr<float>(), (int)B, (int)C);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g_decay, g_first, gk, gv, gstate};
}

}  // namespace

TORCH_LIBRARY_IMPL(espnet_rwkv, CUDA, m) {
  m.impl("wkv_forward", &wkv_forward_cuda);
  m.impl("wkv_backward", &wkv_backward_cuda);
}
