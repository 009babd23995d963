// Autocast stops at the ops' boundary. The modules pick the dtype an op computes in (nn's autocast dtypes); inside,
// the bindings' ATen calls (at::addmm, at::mm, ...) must not be re-cast by the caller's autocast region: a half
// input projection would fail the kernels' dtype checks, and a backward() run inside autocast would round dG to
// half before the weight-gradient GEMMs. So each op runs with autocast excluded, in the dtype of its inputs.
#pragma once

#include <string>

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace lstm_fused {

inline void run_without_autocast(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  op.callBoxed(stack);
}

// For a TORCH_LIBRARY_IMPL(<namespace>, AutocastCPU / AutocastCUDA, m) block: every op of `ops` (host/op_schemas.h),
// its name prefixed by `prefix`.
template <typename Ops>
void register_autocast_off(torch::Library& m, const Ops& ops, const char* prefix = "") {
  for (const auto& op : ops)
    m.impl((std::string(prefix) + op.name).c_str(), torch::CppFunction::makeFromBoxedFunction<&run_without_autocast>());
}

}  // namespace lstm_fused
