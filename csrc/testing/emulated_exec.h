// The CPU emulation's Exec (kernels/block_exec.h): runs each phase of a kernel's schedule for every thread of the
// block in turn, so when a phase returns every thread has finished it — the block barrier — and per-thread
// state lives in an array indexed by thread. Shared memory comes from the caller: SharedMemory below fills it with
// 0xFF bytes (NaN in every floating type, so a read of anything not staged shows in the results), aligns it as the
// GPU does, and keeps a guard zone after it that must still hold 0xFF when the launch ends.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include <c10/util/Exception.h>

#include "kernels/block_exec.h"

namespace lstm_fused {
namespace emulation {

struct EmulatedExec {
  template <typename X>
  struct PerThread {
    std::vector<X> v = std::vector<X>(kBlockThreads);
    X& operator[](int tid) { return v[tid]; }
  };
  template <typename X>
  struct PerWarp {
    std::vector<X> v = std::vector<X>(kBlockWarps);
    X& operator[](int warp) { return v[warp]; }
  };

  template <typename F>
  void threads(const F& f) const {
    for (int tid = 0; tid < kBlockThreads; ++tid) f(tid);
  }
  template <typename F>
  void warps(const F& f) const {
    for (int warp = 0; warp < kBlockWarps; ++warp) f(warp);
  }
  void sync() const {}
};

// One block's shared memory: `bytes` usable, 128-byte aligned (the alignment the kernels declare, which the
// tensor-core and vector loads rely on), then a guard zone.
class SharedMemory {
 public:
  static constexpr size_t kAlign = 128, kGuard = 256;
  explicit SharedMemory(size_t bytes) : bytes_(bytes), raw_(bytes + kAlign + kGuard, 0xFF) {
    const auto addr = reinterpret_cast<uintptr_t>(raw_.data());
    base_ = raw_.data() + (kAlign - addr % kAlign) % kAlign;
  }
  unsigned char* data() { return base_; }
  template <typename X>
  X& as() {
    TORCH_CHECK(sizeof(X) <= bytes_, "lstm_fused emulation: shared memory of ", bytes_, " bytes cannot hold ", sizeof(X));
    return *reinterpret_cast<X*>(base_);
  }
  void check_guard(const char* kernel) const {
    for (size_t i = 0; i < kGuard; ++i)
      TORCH_CHECK(base_[bytes_ + i] == 0xFF, "lstm_fused emulation: the ", kernel, " wrote past its shared memory");
  }

 private:
  size_t bytes_;
  std::vector<unsigned char> raw_;
  unsigned char* base_;
};

}  // namespace emulation
}  // namespace lstm_fused
