// The CUDA LSTM step kernels: the schedule of kernels/step_schedule.h run by the GPU's threads (GpuExec). Lean
// headers only (no torch/extension.h): c10's Half/BFloat16 for the storage types.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/step_launch.h"
#include "kernels/step_schedule.h"

namespace lstm_fused {
namespace cuda_step {
namespace {

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) fwd_step_kernel(const DirectionParams<FwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 4> smem;
  GpuExec ex;
  lstm_fwd_step_block(dp, blockIdx.x, blockIdx.y, blockIdx.z, smem, ex);
}

// 4 blocks per multiprocessor: without a bound ptxas aims at 5 and spills (64 registers suffice).
template <typename T, typename A, int kMode>
__global__ void __launch_bounds__(kThreads, 4) bwd_step_kernel(const DirectionParams<BwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 1> smem;
  GpuExec ex;
  lstm_bwd_step_block<kMode>(dp, blockIdx.x, blockIdx.y, blockIdx.z, smem, ex);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) proj_zoneout_kernel(const DirectionParams<ProjZoneoutParams<T, A>> dp) {
  GpuExec ex;
  proj_zoneout_block(dp, blockIdx.x, blockIdx.y, blockIdx.z, ex);
}

}  // namespace

template <typename T, typename A>
cudaError_t launch_proj_zoneout(const DirectionParams<ProjZoneoutParams<T, A>>& p, cudaStream_t stream) {
  return launch_on_step_grid(proj_zoneout_kernel<T, A>, p, stream);
}

template <typename T, typename A>
cudaError_t launch_fwd_step(const DirectionParams<FwdStepParams<T, A>>& p, cudaStream_t stream) {
  return launch_on_step_grid(fwd_step_kernel<T, A>, p, stream);
}

template <typename T, typename A>
cudaError_t launch_bwd_step(const DirectionParams<BwdStepParams<T, A>>& p, int mode, cudaStream_t stream) {
  int64_t gx, gy;
  launch_grid(p, mode, gx, gy);
  if (gx == 0 || gy == 0) return cudaSuccess;
  const dim3 grid(gx, gy, p.count), block(kJT, kBT);
  switch (mode) {
    case kFused:
      bwd_step_kernel<T, A, kFused><<<grid, block, 0, stream>>>(p);
      break;
    case kReduceOnly:
      bwd_step_kernel<T, A, kReduceOnly><<<grid, block, 0, stream>>>(p);
      break;
    default:
      bwd_step_kernel<T, A, kPointwiseOnly><<<grid, block, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

#define LF_INSTANTIATE(T, A)                                                            \
  template cudaError_t launch_fwd_step<T, A>(const DirectionParams<FwdStepParams<T, A>>&, cudaStream_t); \
  template cudaError_t launch_bwd_step<T, A>(const DirectionParams<BwdStepParams<T, A>>&, int, cudaStream_t); \
  template cudaError_t launch_proj_zoneout<T, A>(const DirectionParams<ProjZoneoutParams<T, A>>&, cudaStream_t);

LF_INSTANTIATE(float, float)
LF_INSTANTIATE(double, double)
LF_INSTANTIATE(c10::Half, float)
LF_INSTANTIATE(c10::BFloat16, float)

}  // namespace cuda_step
}  // namespace lstm_fused
