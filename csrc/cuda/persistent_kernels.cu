// The persistent kernels (LSTM and variants, GRU, layer stacks): the schedule of kernels/persistent_schedule.h run
// by the GPU's threads (GpuExec), a grid-wide barrier (cooperative groups) between time steps. Lean headers only.
#include <cooperative_groups.h>

#include <map>
#include <mutex>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/persistent_launch.h"
#include "kernels/persistent_schedule.h"

namespace lstm_fused {
namespace persistent {
namespace {

namespace cg = cooperative_groups;

// One block per multiprocessor (the resident slice takes most of its shared memory), running the schedule of
// kernels/persistent_schedule.h with a grid-wide barrier between time steps.
template <typename R, typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) persistent_kernel(const Args<typename R::Step> a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ __align__(16) typename R::Step step_p;  // the previous step's users passed a grid barrier first
  GpuExec ex;
  persistent_block_init<R, T, A>(a, blockIdx.x, smem_raw, ex);
  cg::grid_group grid = cg::this_grid();
  for (int64_t step = 0; step < a.n_steps; ++step) {
    persistent_block_step<R, T, A>(a, step, blockIdx.x, smem_raw, step_p, ex);
    grid.sync();  // publishes this step's h_t (dG_t) to every block
  }
}

// Lets the kernel use the device's whole opt-in shared memory and reads back what it then has, once per device (not
// per call with each layer's size: another host thread could lower it between our set and our launch).
template <typename R, typename T, typename A>
cudaError_t limits_on(int dev, KernelLimits& out) {
  static std::mutex mu;
  static std::map<int, KernelLimits> known;
  const std::lock_guard<std::mutex> lock(mu);
  if (const auto it = known.find(dev); it != known.end()) {
    out = it->second;
    return cudaSuccess;
  }
  int optin = 0;
  cudaFuncAttributes attr{};
  cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&attr, persistent_kernel<R, T, A>);
  if (e == cudaSuccess) {
    // Dynamic bytes on top of the static ones (the step parameters, as the compiler laid them out).
    e = cudaFuncSetAttribute(persistent_kernel<R, T, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin - static_cast<int>(attr.sharedSizeBytes));
  }
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&attr, persistent_kernel<R, T, A>);  // as the driver now has it
  if (e != cudaSuccess) return e;
  KernelLimits k;
  // binaryVersion alone is the GPU's architecture when the code was JIT-compiled from older PTX (whose
  // __CUDA_ARCH__ has no tensor cores); ptxVersion is the PTX the code came from. Both must be sm_80+.
  k.arch = attr.ptxVersion < attr.binaryVersion ? attr.ptxVersion : attr.binaryVersion;
  k.static_smem = static_cast<int64_t>(attr.sharedSizeBytes);
  k.max_dynamic_smem = attr.maxDynamicSharedSizeBytes;
  known[dev] = k;
  out = k;
  return cudaSuccess;
}

template <typename R, typename T, typename A>
cudaError_t fits_impl(const Plan& plan, int count, bool& fits) {
  fits = false;
  auto kernel = persistent_kernel<R, T, A>;
  int dev = 0, sms = 0, coop = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  KernelLimits lim;
  if (e == cudaSuccess) e = limits_on<R, T, A>(dev, lim);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem);
  if (e != cudaSuccess) return e;
  fits = coop != 0 && int64_t(per_sm) * sms >= count * plan.nb;
  return cudaSuccess;
}

template <typename R, typename T, typename A>
cudaError_t launch_impl(const Args<typename R::Step>& a, cudaStream_t stream) {
  auto kernel = persistent_kernel<R, T, A>;
  int dev = 0;
  KernelLimits lim;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = limits_on<R, T, A>(dev, lim);
  if (e != cudaSuccess) return e;
  void* params[] = {const_cast<Args<typename R::Step>*>(&a)};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(a.count * a.plan.nb),
                                     dim3(kThreads), params, a.plan.smem, stream);
}

}  // namespace

template <typename Step>
cudaError_t fits(const Plan& plan, int count, bool& ok) {
  using R = typename RecurrenceOf<Step>::type;
  return fits_impl<R, typename R::Storage, typename R::Acc>(plan, count, ok);
}
template <typename Step>
cudaError_t kernel_limits(KernelLimits& out) {
  using R = typename RecurrenceOf<Step>::type;
  int dev = 0;
  const cudaError_t e = cudaGetDevice(&dev);
  return e == cudaSuccess ? limits_on<R, typename R::Storage, typename R::Acc>(dev, out) : e;
}
template <typename Step>
cudaError_t launch(const Args<Step>& args, cudaStream_t stream) {
  using R = typename RecurrenceOf<Step>::type;
  return launch_impl<R, typename R::Storage, typename R::Acc>(args, stream);
}

#define LF_INSTANTIATE_STEP(...)                                                   \
  template cudaError_t fits<__VA_ARGS__>(const Plan&, int, bool&);                 \
  template cudaError_t kernel_limits<__VA_ARGS__>(KernelLimits&);                  \
  template cudaError_t launch<__VA_ARGS__>(const Args<__VA_ARGS__>&, cudaStream_t);
#define LF_INSTANTIATE(T, A)                           \
  LF_INSTANTIATE_STEP(FwdStepParams<T, A>)             \
  LF_INSTANTIATE_STEP(BwdStepParams<T, A>)             \
  LF_INSTANTIATE_STEP(GruFwdStepParams<T, A>)          \
  LF_INSTANTIATE_STEP(GruBwdStepParams<T, A>)

LF_INSTANTIATE(float, float)
LF_INSTANTIATE(double, double)
LF_INSTANTIATE(c10::Half, float)
LF_INSTANTIATE(c10::BFloat16, float)

}  // namespace persistent
}  // namespace lstm_fused
