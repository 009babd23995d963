// The CPU backend of the six ops (host/op_binding.h registers it; cpu/cpu_binding.cpp): the LSTM layer and stack
// in cpu/lstm_cpu.cpp, the GRU layer in cpu/gru_cpu.cpp.
#pragma once

#include "host/op_args.h"

namespace lstm_fused {

struct CpuOps {
  static LayerOutputs lstm_layer_fwd(const LayerArgs& a);
  static LayerGrads lstm_layer_bwd(const LayerBwdArgs& a);
  static StackOutputs lstm_stack_fwd(const LayerArgs& a);
  static LayerGrads lstm_stack_bwd(const StackBwdArgs& a);
  static LayerOutputs gru_layer_fwd(const LayerArgs& a);
  static LayerGrads gru_layer_bwd(const LayerBwdArgs& a);
};

}  // namespace lstm_fused
