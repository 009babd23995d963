// Launchers of the persistent kernels (cuda/persistent_kernels.cu): torch-free, on the caller's stream. Step is
// one of FwdStepParams, BwdStepParams, GruFwdStepParams, GruBwdStepParams, each for (float, float),
// (double, double), (c10::Half, float) and (c10::BFloat16, float).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/persistent_phases.h"

namespace lstm_fused {
namespace persistent {

// Whether `count`·plan.nb blocks of the kernel, with plan.smem bytes of shared memory each, can all be resident
// at once on the current device (a cooperative launch needs it).
template <typename Step>
cudaError_t fits(const Plan& plan, int count, bool& ok);

// What the kernel has on the current device, read once per device: the architecture its code was compiled for
// (e.g. 90 for sm_90; the lower of the binary's and its PTX's, so a PTX-only build JIT-compiled for a newer GPU
// reports its PTX target; tensor cores are planned only for code that has them), the shared memory it declares
// statically, and the dynamic shared memory a launch may ask for (the device's opt-in maximum less the static).
struct KernelLimits {
  int arch = 0;
  int64_t static_smem = 0;
  int64_t max_dynamic_smem = 0;
};
template <typename Step>
cudaError_t kernel_limits(KernelLimits& out);

// One cooperative launch for the whole sequence. args.steps must point to device memory.
template <typename Step>
cudaError_t launch(const Args<Step>& args, cudaStream_t stream);

}  // namespace persistent
}  // namespace lstm_fused
