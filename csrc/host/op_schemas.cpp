// Defines the lstm_fused ops (their signatures: host/op_schemas.h). The library holds no Python:
// lstm_fused/__init__.py loads it with torch.ops.load_library, and a C++ program (an AOTInductor or TorchScript
// runner) can link or dlopen it as it is; loading runs the static registrars. Each backend adds its kernels with
// TORCH_LIBRARY_IMPL in its own file (cpu/, cuda/); fake kernels and autograd are registered from Python
// (lstm_fused/ops.py).
#include <string>

#include <torch/library.h>

#include "host/autocast_off.h"
#include "host/op_schemas.h"

TORCH_LIBRARY(lstm_fused, m) {
  for (const auto& op : lstm_fused::schema::kOps) m.def((std::string(op.name) + op.signature).c_str());
}

// autocast_off.h says why.
TORCH_LIBRARY_IMPL(lstm_fused, AutocastCPU, m) { lstm_fused::register_autocast_off(m, lstm_fused::schema::kOps); }
TORCH_LIBRARY_IMPL(lstm_fused, AutocastCUDA, m) { lstm_fused::register_autocast_off(m, lstm_fused::schema::kOps); }
