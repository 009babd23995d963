// How a CUDA kernel's block is written once for the GPU and for its CPU emulation. Each kernel's schedule (the
// order of its phases, its barriers, the per-thread state that lives across them) is one function of (block
// index, Exec) in kernels/step_schedule.h and kernels/persistent_schedule.h. The __global__ kernels
// (cuda/*.cu) call it with GpuExec below: a phase is the calling thread's share, a barrier is __syncthreads().
// The emulation (testing/emulated_exec.h) calls the same function with an Exec that runs each phase for every
// thread of the block in turn, so a barrier is implied when a phase returns. The only code the CPU tests do not
// run is GpuExec itself and the grid barrier between the persistent kernel's time steps.
//
// An Exec provides:
//   threads(f)     f(tid) for each thread of the block, tid in [0, kBlockThreads)
//   warps(f)       f(warp) once per warp, all its lanes together (warp-level primitives such as WMMA go here,
//                  so every call of one is warp-uniform by construction)
//   sync()         the block barrier
//   PerThread<X>   a value per thread living across barriers (registers on the GPU), indexed by tid
//   PerWarp<X>     a value per warp, indexed by warp (on the GPU each lane holds its part, as a WMMA fragment)
#pragma once

#if !defined(__CUDA_ARCH__)
#include <stdexcept>
#endif

#include "kernels/cell_math.h"

namespace lstm_fused {

constexpr int kBlockThreads = 256;  // every kernel of this project runs 256-thread blocks
constexpr int kWarpSize = 32;
constexpr int kBlockWarps = kBlockThreads / kWarpSize;

// A rule the hardware imposes on an access (alignment, leading dimensions): on the GPU a violation faults or
// computes garbage, so the phase functions state their rules here and the CPU emulation checks them.
LF_HOST_DEVICE void hardware_rule(bool ok, const char* rule) {
#if !defined(__CUDA_ARCH__)
  if (!ok) throw std::logic_error(rule);
#else
  (void)ok, (void)rule;
#endif
}

#if defined(__CUDACC__)
// The GPU's Exec: every thread of the block calls the schedule and runs its own share of each phase. Host-device
// so that host-device schedules may call it; its host side is never run (the host-side bodies are empty).
struct GpuExec {
  template <typename X>
  struct PerThread {
    X v;
    LF_HOST_DEVICE X& operator[](int) { return v; }
  };
  template <typename X>
  using PerWarp = PerThread<X>;

  template <typename F>
  LF_HOST_DEVICE void threads(const F& f) const {
#if defined(__CUDA_ARCH__)
    f(static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x));
#else
    (void)f;
#endif
  }
  template <typename F>
  LF_HOST_DEVICE void warps(const F& f) const {
#if defined(__CUDA_ARCH__)
    f(static_cast<int>((threadIdx.y * blockDim.x + threadIdx.x) / kWarpSize));
#else
    (void)f;
#endif
  }
  LF_HOST_DEVICE void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }
};
#endif

}  // namespace lstm_fused
