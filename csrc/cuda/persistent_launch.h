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

// The architecture the kernel's code was compiled for (e.g. 90 for sm_90; the lower of the binary's and its PTX's,
// so a PTX-only build JIT-compiled for a newer GPU reports its PTX target), so tensor cores are planned only for
// code that has them.
template <typename Step>
cudaError_t compiled_arch(int& version);

// One cooperative launch for the whole sequence. args.steps must point to device memory.
template <typename Step>
cudaError_t launch(const Args<Step>& args, cudaStream_t stream);

}  // namespace persistent
}  // namespace lstm_fused
