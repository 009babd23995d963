// The CPU kernels of the lstm_fused ops.
#include <torch/library.h>

#include "cpu/cpu_ops.h"
#include "host/op_binding.h"

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) { lstm_fused::bind_ops<lstm_fused::CpuOps>(m); }
