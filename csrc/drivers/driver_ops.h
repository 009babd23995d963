// The six ops on the CUDA path's drivers, for any runner: the GPU (cuda/cuda_binding.cpp) and the CPU emulation of
// the kernels (testing/cuda_emulation.cpp) differ only in `Backend::with_runner(args, f)`, which prepares what a call
// needs (the GPU: checks, device guard, current stream) and returns f(runner).
#pragma once

#include "drivers/layer_driver.h"
#include "drivers/stack_driver.h"
#include "host/op_args.h"

namespace lstm_fused {

template <class Backend>
struct DriverOps {
  using Lstm = cuda_driver::LstmTraits;
  using Gru = cuda_driver::GruTraits;
  static LayerOutputs lstm_layer_fwd(const LayerArgs& a) {
    return Backend::with_runner(a, [&](auto& run) { return cuda_driver::layer_fwd<Lstm>(a, run); });
  }
  static LayerGrads lstm_layer_bwd(const LayerBwdArgs& a) {
    return Backend::with_runner(a.fwd, [&](auto& run) { return cuda_driver::layer_bwd<Lstm>(a, run); });
  }
  static StackOutputs lstm_stack_fwd(const LayerArgs& a) {
    return Backend::with_runner(a, [&](auto& run) { return cuda_driver::stack_fwd(a, run); });
  }
  static LayerGrads lstm_stack_bwd(const StackBwdArgs& a) {
    return Backend::with_runner(a.fwd, [&](auto& run) { return cuda_driver::stack_bwd(a, run); });
  }
  static LayerOutputs gru_layer_fwd(const LayerArgs& a) {
    return Backend::with_runner(a, [&](auto& run) { return cuda_driver::layer_fwd<Gru>(a, run); });
  }
  static LayerGrads gru_layer_bwd(const LayerBwdArgs& a) {
    return Backend::with_runner(a.fwd, [&](auto& run) { return cuda_driver::layer_bwd<Gru>(a, run); });
  }
};

}  // namespace lstm_fused
