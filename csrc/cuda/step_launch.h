// Launchers of the CUDA step kernels: torch-free, on the caller's stream; they return the launch status for
// the binding to check. Instantiated for (float, float), (double, double), (c10::Half, float) and
// (c10::BFloat16, float).
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/gru_step_phases.h"
#include "kernels/layer_norm_phases.h"
#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace cuda_step {

#if defined(__CUDACC__)
// One launch of `kernel` on the grid launch_grid(p) gives (kernels/lstm_step_phases.h: units or outputs × rows ×
// directions), none when it has no block.
template <typename Params, typename Kernel>
cudaError_t launch_on_step_grid(Kernel kernel, const Params& p, cudaStream_t stream) {
  int64_t gx, gy;
  launch_grid(p, gx, gy);
  if (gx == 0 || gy == 0) return cudaSuccess;
  kernel<<<dim3(gx, gy, p.count), dim3(kJT, kBT), 0, stream>>>(p);
  return cudaGetLastError();
}
#endif

template <typename T, typename A>
cudaError_t launch_fwd_step(const DirectionParams<FwdStepParams<T, A>>& p, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_bwd_step(const DirectionParams<BwdStepParams<T, A>>& p, int mode, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_proj_zoneout(const DirectionParams<ProjZoneoutParams<T, A>>& p, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_gru_fwd_step(const DirectionParams<GruFwdStepParams<T, A>>& p, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_gru_bwd_step(const DirectionParams<GruBwdStepParams<T, A>>& p, cudaStream_t stream);

// Layer norm (cuda/layer_norm_kernels.cu): a block per row.
template <typename T, typename A>
cudaError_t launch_row_norm(const RowLaunch<RowNormParams<T, A>>& l, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_row_norm_bwd(const RowLaunch<RowNormBwdParams<T, A>>& l, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_lstm_ln_fwd_step(const DirectionParams<FwdStepParams<T, A>>& p, cudaStream_t stream);

template <typename T, typename A>
cudaError_t launch_lstm_ln_bwd_step(const DirectionParams<BwdStepParams<T, A>>& p, cudaStream_t stream);

}  // namespace cuda_step
}  // namespace lstm_fused
