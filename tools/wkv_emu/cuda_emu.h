// Runs CUDA kernels on the CPU for tools/wkv_emu/emulate.py: one std::thread per CUDA
// thread, blocks one after another, __syncthreads through a barrier, cp.async deferred
// until the wait.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>
#include <ATen/ATen.h>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};

namespace emu {
struct Block {
  explicit Block(int n) : bar(n), pending(n) {}
  std::barrier<> bar;
  struct Copy {
    void* dst;
    const void* src;
    size_t n;
  };
  std::vector<std::vector<Copy>> pending;
};
inline thread_local dim3 tIdx, bIdx;
inline dim3 bDim, gDim;
inline thread_local Block* blk = nullptr;
inline float4* g_dyn = nullptr;
inline int tid() { return (tIdx.z * bDim.y + tIdx.y) * bDim.x + tIdx.x; }

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 block, size_t smem, Args... args) {
  const int n = block.x * block.y * block.z;
  std::vector<float4> dyn(smem / 16 + 1);
  bDim = block;
  gDim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(dyn.data(), 0xff, dyn.size() * sizeof(float4));  // NaN: stale reads show
        g_dyn = dyn.data();
        Block b(n);
        std::vector<std::thread> ts;
        for (int i = 0; i < n; ++i)
          ts.emplace_back([&, i] {
            tIdx = dim3(i % block.x, (i / block.x) % block.y, i / (block.x * block.y));
            bIdx = dim3(bx, by, bz);
            blk = &b;
            kernel(args...);
            TORCH_CHECK(blk->pending[tid()].empty(), "emu: cp.async never waited for");
          });
        for (auto& t : ts) t.join();
      }
}

inline at::Tensor empty_poisoned(at::IntArrayRef sizes, const at::TensorOptions& o) {
  return at::full(sizes, o.dtype() == at::kInt ? -123456789.0 : NAN, o);
}
}  // namespace emu

// The host-side CUDA calls of kernel.cu: nothing to do on the CPU.
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename Kernel>
inline int cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return 0;
}
#define C10_CUDA_CHECK(x) (void)(x)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)

#define threadIdx emu::tIdx
#define blockIdx emu::bIdx
#define blockDim emu::bDim
#define gridDim emu::gDim
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__
#define __shared__ static

inline void __syncthreads() { emu::blk->bar.arrive_and_wait(); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, 4);
  return i;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
// Shared-window addresses are byte offsets into the block's dynamic shared memory, where all
// staging goes.
inline unsigned smem_addr(const void* p) {
  return static_cast<unsigned>(static_cast<const char*>(p) -
                               reinterpret_cast<const char*>(emu::g_dyn));
}
inline void cp_async(unsigned dst, const void* src, size_t n) {
  emu::blk->pending[emu::tid()].push_back({reinterpret_cast<char*>(emu::g_dyn) + dst, src, n});
}
inline void cp_async16(unsigned dst, const void* src) { cp_async(dst, src, 16); }
inline void cp_async4(unsigned dst, const void* src) { cp_async(dst, src, 4); }
inline void cp_async_commit() {}
inline void cp_async_wait_all() {
  for (auto& c : emu::blk->pending[emu::tid()]) std::memcpy(c.dst, c.src, c.n);
  emu::blk->pending[emu::tid()].clear();
}
