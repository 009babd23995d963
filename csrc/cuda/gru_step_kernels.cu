// The CUDA GRU step kernels: the schedule of kernels/step_schedule.h run by the GPU's threads (GpuExec).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include "cuda/step_launch.h"
#include "kernels/step_schedule.h"

namespace lstm_fused {
namespace cuda_step {
namespace {

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) gru_fwd_step_kernel(const DirectionParams<GruFwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 3> smem;
  GpuExec ex;
  gru_fwd_step_block(dp, blockIdx.x, blockIdx.y, blockIdx.z, smem, ex);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) gru_bwd_step_kernel(const DirectionParams<GruBwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 1> smem;
  GpuExec ex;
  gru_bwd_step_block(dp, blockIdx.x, blockIdx.y, blockIdx.z, smem, ex);
}

}  // namespace

template <typename T, typename A>
cudaError_t launch_gru_fwd_step(const DirectionParams<GruFwdStepParams<T, A>>& p, cudaStream_t stream) {
  return launch_on_step_grid(gru_fwd_step_kernel<T, A>, p, stream);
}

template <typename T, typename A>
cudaError_t launch_gru_bwd_step(const DirectionParams<GruBwdStepParams<T, A>>& p, cudaStream_t stream) {
  return launch_on_step_grid(gru_bwd_step_kernel<T, A>, p, stream);
}

#define LF_INSTANTIATE_GRU(T, A)                                                                          \
  template cudaError_t launch_gru_fwd_step<T, A>(const DirectionParams<GruFwdStepParams<T, A>>&, cudaStream_t); \
  template cudaError_t launch_gru_bwd_step<T, A>(const DirectionParams<GruBwdStepParams<T, A>>&, cudaStream_t);

LF_INSTANTIATE_GRU(float, float)
LF_INSTANTIATE_GRU(double, double)
LF_INSTANTIATE_GRU(c10::Half, float)
LF_INSTANTIATE_GRU(c10::BFloat16, float)

}  // namespace cuda_step
}  // namespace lstm_fused
