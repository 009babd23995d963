// Launchers of the persistent LSTM kernels (lstm_persistent_kernels.cu): torch-free, on the caller's stream.
// Instantiated for (float, float), (double, double), (c10::Half, float) and (c10::BFloat16, float).
#pragma once

#include <cuda_runtime_api.h>

#include "lstm_persistent.h"

namespace lstm_fused {
namespace persistent {

// Whether `count`·plan.nb blocks of the kernel, with plan.smem bytes of shared memory each, can all be resident
// at once on the current device (a cooperative launch needs it).
template <typename T, typename A>
cudaError_t fwd_fits(const Plan& plan, int count, bool& fits);
template <typename T, typename A>
cudaError_t bwd_fits(const Plan& plan, int count, bool& fits);

// One cooperative launch for the whole sequence. args.steps must point to device memory.
template <typename T, typename A>
cudaError_t launch_fwd(const Args<FwdStepParams<T, A>>& args, cudaStream_t stream);
template <typename T, typename A>
cudaError_t launch_bwd(const Args<BwdStepParams<T, A>>& args, cudaStream_t stream);

}  // namespace persistent
}  // namespace lstm_fused
