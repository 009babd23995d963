// The CUDA step kernels: each is the phase functions of kernels/lstm_step_phases.h between barriers. Lean headers only
// (no torch/extension.h): c10's Half/BFloat16 for the storage types.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/step_launch.h"

namespace lstm_fused {
namespace cuda_step {
namespace {

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) fwd_step_kernel(const DirectionParams<FwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 4> smem;
  const FwdStepParams<T, A>& p = dp.dir[blockIdx.z];
  if (!block_has_rows(p, blockIdx.y)) return;  // this direction has fewer rows at this step
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kJT + tx;
  A acc[4] = {A(0), A(0), A(0), A(0)};
  for (int64_t k0 = 0; k0 < fwd_reduction_length(p); k0 += kKT) {
    fwd_load_tiles(p, blockIdx.x, blockIdx.y, tid, k0, smem);
    __syncthreads();
    tile_accumulate(smem, tx, ty, acc);
    __syncthreads();
  }
  fwd_epilogue(p, blockIdx.x, blockIdx.y, tx, ty, acc);
}

template <typename T, typename A, int kMode>
__global__ void __launch_bounds__(kThreads) bwd_step_kernel(const DirectionParams<BwdStepParams<T, A>> dp) {
  __shared__ TileSmem<A, 1> smem;
  const BwdStepParams<T, A>& p = dp.dir[blockIdx.z];
  if (!block_has_rows(p, blockIdx.y)) return;
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kJT + tx;
  A acc[1] = {A(0)};
  if (kMode != kPointwiseOnly) {
    for (int64_t k0 = 0; k0 < bwd_reduction_length(p, kMode); k0 += kKT) {
      bwd_load_tiles(p, blockIdx.x, blockIdx.y, tid, k0, smem);
      __syncthreads();
      tile_accumulate(smem, tx, ty, acc);
      __syncthreads();
    }
  }
  bwd_epilogue(p, kMode, blockIdx.x, blockIdx.y, tx, ty, acc);
}

}  // namespace

template <typename T, typename A>
cudaError_t launch_fwd_step(const DirectionParams<FwdStepParams<T, A>>& p, cudaStream_t stream) {
  int64_t gx, gy;
  launch_grid(p, gx, gy);
  if (gx == 0 || gy == 0) return cudaSuccess;
  fwd_step_kernel<T, A><<<dim3(gx, gy, p.count), dim3(kJT, kBT), 0, stream>>>(p);
  return cudaGetLastError();
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
  template cudaError_t launch_bwd_step<T, A>(const DirectionParams<BwdStepParams<T, A>>&, int, cudaStream_t);

LF_INSTANTIATE(float, float)
LF_INSTANTIATE(double, double)
LF_INSTANTIATE(c10::Half, float)
LF_INSTANTIATE(c10::BFloat16, float)

}  // namespace cuda_step
}  // namespace lstm_fused
