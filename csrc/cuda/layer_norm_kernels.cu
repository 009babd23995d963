// The CUDA layer-norm kernels: the row schedules of kernels/step_schedule.h (a block per row) run by the GPU's threads
// (GpuExec). Lean headers only, as the other step kernels.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/step_launch.h"
#include "kernels/step_schedule.h"

namespace lstm_fused {
namespace cuda_step {
namespace {

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) row_norm_kernel(const RowLaunch<RowNormParams<T, A>> l) {
  __shared__ RowSums<A, kRowSumsMax> sm;
  GpuExec ex;
  row_norm_block(l, blockIdx.x, blockIdx.z, sm, ex);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads) row_norm_bwd_kernel(const RowLaunch<RowNormBwdParams<T, A>> l) {
  __shared__ RowSums<A, kRowSumsMax> sm;
  GpuExec ex;
  row_norm_bwd_block(l, blockIdx.x, blockIdx.z, sm, ex);
}

// 2 blocks per multiprocessor: without a bound ptxas aims at more and spills the float cells (64 registers).
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) lstm_ln_fwd_step_kernel(const DirectionParams<FwdStepParams<T, A>> dp) {
  __shared__ RowSums<A, kRowSumsMax> sm;
  GpuExec ex;
  lstm_ln_fwd_step_block(dp, blockIdx.x, blockIdx.z, sm, ex);
}

template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, 2) lstm_ln_bwd_step_kernel(const DirectionParams<BwdStepParams<T, A>> dp) {
  __shared__ RowSums<A, kRowSumsMax> sm;
  GpuExec ex;
  lstm_ln_bwd_step_block(dp, blockIdx.x, blockIdx.z, sm, ex);
}

// A block per row of the longest set or direction (gridDim.x takes up to 2^31 − 1 rows); none when there is no row.
template <typename Params, typename Kernel>
cudaError_t launch_rows(Kernel kernel, const Params& p, int64_t rows, int count, cudaStream_t stream) {
  if (rows == 0 || count == 0) return cudaSuccess;
  kernel<<<dim3(static_cast<unsigned>(rows), 1, count), dim3(kJT, kBT), 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

template <typename T, typename A>
cudaError_t launch_row_norm(const RowLaunch<RowNormParams<T, A>>& l, cudaStream_t stream) {
  return launch_rows(row_norm_kernel<T, A>, l, row_grid(l), l.count, stream);
}

template <typename T, typename A>
cudaError_t launch_row_norm_bwd(const RowLaunch<RowNormBwdParams<T, A>>& l, cudaStream_t stream) {
  return launch_rows(row_norm_bwd_kernel<T, A>, l, row_grid(l), l.count, stream);
}

template <typename T, typename A>
cudaError_t launch_lstm_ln_fwd_step(const DirectionParams<FwdStepParams<T, A>>& p, cudaStream_t stream) {
  return launch_rows(lstm_ln_fwd_step_kernel<T, A>, p, row_grid(p), p.count, stream);
}

template <typename T, typename A>
cudaError_t launch_lstm_ln_bwd_step(const DirectionParams<BwdStepParams<T, A>>& p, cudaStream_t stream) {
  return launch_rows(lstm_ln_bwd_step_kernel<T, A>, p, row_grid(p), p.count, stream);
}

#define LF_INSTANTIATE_LN(T, A)                                                                                      \
  template cudaError_t launch_row_norm<T, A>(const RowLaunch<RowNormParams<T, A>>&, cudaStream_t);                   \
  template cudaError_t launch_row_norm_bwd<T, A>(const RowLaunch<RowNormBwdParams<T, A>>&, cudaStream_t);            \
  template cudaError_t launch_lstm_ln_fwd_step<T, A>(const DirectionParams<FwdStepParams<T, A>>&, cudaStream_t);     \
  template cudaError_t launch_lstm_ln_bwd_step<T, A>(const DirectionParams<BwdStepParams<T, A>>&, cudaStream_t);

LF_INSTANTIATE_LN(float, float)
LF_INSTANTIATE_LN(double, double)
LF_INSTANTIATE_LN(c10::Half, float)
LF_INSTANTIATE_LN(c10::BFloat16, float)

}  // namespace cuda_step
}  // namespace lstm_fused
