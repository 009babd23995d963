// The CUDA GRU step kernels: the phase functions of kernels/gru_step_phases.h between barriers (one launch per step for
// both directions, blockIdx.z = direction).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include "cuda/step_launch.h"

namespace lstm_fused {
namespace cuda_step {
namespace {

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) gru_fwd_step_kernel(const DirectionParams<GruFwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 3> smem;
  const GruFwdStepParams<T, A>& p = dp.dir[blockIdx.z];
  if (!block_has_rows(p, blockIdx.y)) return;  // block-uniform, before any barrier
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kJT + tx;
  A acc[3] = {A(0), A(0), A(0)};
  for (int64_t k0 = 0; k0 < gru_fwd_reduction_length(p); k0 += kKT) {
    gru_fwd_load_tiles(p, blockIdx.x, blockIdx.y, tid, k0, smem);
    __syncthreads();
    tile_accumulate(smem, tx, ty, acc);
    __syncthreads();
  }
  gru_fwd_epilogue(p, blockIdx.x, blockIdx.y, tx, ty, acc);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) gru_bwd_step_kernel(const DirectionParams<GruBwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 1> smem;
  const GruBwdStepParams<T, A>& p = dp.dir[blockIdx.z];
  if (!block_has_rows(p, blockIdx.y)) return;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kJT + tx;
  A acc[1] = {A(0)};
  for (int64_t k0 = 0; k0 < gru_bwd_reduction_length(p); k0 += kKT) {
    gru_bwd_load_tiles(p, blockIdx.x, blockIdx.y, tid, k0, smem);
    __syncthreads();
    tile_accumulate(smem, tx, ty, acc);
    __syncthreads();
  }
  gru_bwd_epilogue(p, blockIdx.x, blockIdx.y, tx, ty, acc);
}

}  // namespace

template <typename T, typename A>
cudaError_t launch_gru_fwd_step(const DirectionParams<GruFwdStepParams<T, A>>& p, cudaStream_t stream) {
  int64_t gx, gy;
  launch_grid(p, gx, gy);
  if (gx == 0 || gy == 0) return cudaSuccess;
  gru_fwd_step_kernel<T, A><<<dim3(gx, gy, p.count), dim3(kJT, kBT), 0, stream>>>(p);
  return cudaGetLastError();
}

template <typename T, typename A>
cudaError_t launch_gru_bwd_step(const DirectionParams<GruBwdStepParams<T, A>>& p, cudaStream_t stream) {
  int64_t gx, gy;
  launch_grid(p, gx, gy);
  if (gx == 0 || gy == 0) return cudaSuccess;
  gru_bwd_step_kernel<T, A><<<dim3(gx, gy, p.count), dim3(kJT, kBT), 0, stream>>>(p);
  return cudaGetLastError();
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
