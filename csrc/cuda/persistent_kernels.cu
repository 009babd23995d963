// The persistent kernels (LSTM and variants, GRU, layer stacks): the phase functions of kernels/persistent_phases.h and
// kernels/persistent_mma_phases.h between block barriers, a grid-wide barrier (cooperative groups) between time steps.
// Lean headers only.
#include <cooperative_groups.h>

#include <mutex>
#include <set>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/persistent_launch.h"
#include "kernels/persistent_mma_phases.h"

namespace lstm_fused {
namespace persistent {
namespace {

namespace cg = cooperative_groups;

// This step's parameters, copied into shared memory by the whole block: the phase functions read their fields
// for every element, and from global memory (unrestricted pointers) each read would be a dependent load.
template <typename Step>
__device__ __forceinline__ void fetch_step(const Step* src, Step* dst, int tid) {
  static_assert(sizeof(Step) % sizeof(unsigned long long) == 0 && sizeof(Step) <= kStaticSmem, "step params");
  const auto* from = reinterpret_cast<const unsigned long long*>(src);
  auto* to = reinterpret_cast<unsigned long long*>(dst);
  for (int i = tid; i < int(sizeof(Step) / sizeof(unsigned long long)); i += kThreads) to[i] = from[i];
  __syncthreads();
}

// One block per multiprocessor (the resident slice takes most of its shared memory); blocks
// [d·nb, (d+1)·nb) serve lane d: a direction of a layer, or a layer of a stack.
template <typename R, typename T, typename A>
__global__ void __launch_bounds__(kThreads, 1) persistent_kernel(const Args<typename R::Step> a) {
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ __align__(16) typename R::Step step_p;  // the previous step's users passed a grid barrier first
  const Plan& pl = a.plan;
  const int tid = threadIdx.x;
  const int d = static_cast<int>(blockIdx.x / pl.nb);
  const int64_t bx = blockIdx.x % pl.nb;
  const Smem<T, A> s = carve<T, A>(pl, smem_raw);
  load_resident<R>(pl, a.steps[d], bx, tid, s);
  __syncthreads();
  cg::grid_group grid = cg::this_grid();
  if constexpr (kHasMmaPath<R, T>) {
    if (pl.mma) {  // grid-uniform
      const MmaSmem<T> m = carve_mma<T>(pl, smem_raw);
      const int warp = tid / 32;
      const bool once = pl.kc >= pl.kp;  // the whole k range staged at once: stage it once per step
      for (int64_t step = 0; step < a.n_steps; ++step) {
        fetch_step(&a.steps[step * a.count + d], &step_p, tid);
        const typename R::Step& p = step_p;
        const MmaTiling mt = mma_tiling<R::NG>(pl, p.rows);
        if (once) {
          mma_stage_left<R>(pl, p, 0, tid, m);
          __syncthreads();
        }
        for (int64_t r0 = 0; r0 < mt.units; r0 += kWarps) {  // block-uniform; a warp owns one unit per round
          const int64_t u = r0 + warp;
          MmaAcc<R::NG> acc;
          mma_zero(acc);
          for (int64_t k0 = 0; k0 < pl.kp; k0 += pl.kc) {
            if (!once) {
              mma_stage_left<R>(pl, p, k0, tid, m);
              __syncthreads();
            }
            if (u < mt.units) mma_accumulate<R::NG>(pl, mt, u, k0, m, acc);  // warp-uniform
            if (!once) __syncthreads();
          }
          if (u < mt.units) mma_store<R::NG>(u, m, acc);
        }
        __syncthreads();
        mma_reduce_epilogue<R>(pl, p, mt, bx, tid, m);
        __syncthreads();
        grid.sync();
      }
      return;
    }
  }
  for (int64_t step = 0; step < a.n_steps; ++step) {
    fetch_step(&a.steps[step * a.count + d], &step_p, tid);
    const typename R::Step& p = step_p;
    const StepTiling st = step_tiling(pl.kj, p.rows);
    for (int64_t r0 = 0; r0 < st.items; r0 += st.groups) {
      A acc[kRows][R::NG];
      for (int r = 0; r < kRows; ++r)
        for (int g = 0; g < R::NG; ++g) acc[r][g] = A(0);
      for (int64_t k0 = 0; k0 < R::K(p); k0 += pl.kc) {
        stage_left<R>(pl, p, k0, tid, s);
        __syncthreads();
        accumulate<R>(pl, p, st, r0, k0, tid, s, acc);
        __syncthreads();
      }
      store_partials<R::NG>(tid, s, acc);
      __syncthreads();
      reduce_epilogue<R>(pl, p, st, r0, bx, tid, s);
      __syncthreads();
    }
    grid.sync();  // publishes this step's h_t (dG_t) to every block
  }
}

// Lets the kernel use the device's whole opt-in shared memory, once per device (not per call with each layer's
// size: another host thread could lower it between our set and our launch).
template <typename R, typename T, typename A>
cudaError_t allow_full_smem(int dev) {
  static std::mutex mu;
  static std::set<int> done;
  const std::lock_guard<std::mutex> lock(mu);
  if (done.count(dev)) return cudaSuccess;
  int optin = 0;
  cudaFuncAttributes attr{};
  cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (e == cudaSuccess) e = cudaFuncGetAttributes(&attr, persistent_kernel<R, T, A>);
  if (e == cudaSuccess) {
    // Dynamic bytes on top of the static ones (the step parameters, as the compiler laid them out).
    e = cudaFuncSetAttribute(persistent_kernel<R, T, A>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             optin - static_cast<int>(attr.sharedSizeBytes));
  }
  if (e == cudaSuccess) done.insert(dev);
  return e;
}

template <typename R, typename T, typename A>
cudaError_t fits_impl(const Plan& plan, int count, bool& fits) {
  fits = false;
  auto kernel = persistent_kernel<R, T, A>;
  int dev = 0, sms = 0, coop = 0, per_sm = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = allow_full_smem<R, T, A>(dev);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem);
  if (e != cudaSuccess) return e;
  fits = coop != 0 && int64_t(per_sm) * sms >= count * plan.nb;
  return cudaSuccess;
}

template <typename R, typename T, typename A>
cudaError_t launch_impl(const Args<typename R::Step>& a, cudaStream_t stream) {
  auto kernel = persistent_kernel<R, T, A>;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = allow_full_smem<R, T, A>(dev);
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
cudaError_t compiled_arch(int& version) {
  using R = typename RecurrenceOf<Step>::type;
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, persistent_kernel<R, typename R::Storage, typename R::Acc>);
  // binaryVersion alone is the GPU's architecture when the code was JIT-compiled from older PTX (whose
  // __CUDA_ARCH__ has no tensor cores); ptxVersion is the PTX the code came from. Both must be sm_80+.
  version = attr.ptxVersion < attr.binaryVersion ? attr.ptxVersion : attr.binaryVersion;
  return e;
}
template <typename Step>
cudaError_t launch(const Args<Step>& args, cudaStream_t stream) {
  using R = typename RecurrenceOf<Step>::type;
  return launch_impl<R, typename R::Storage, typename R::Acc>(args, stream);
}

#define LF_INSTANTIATE_STEP(...)                                                   \
  template cudaError_t fits<__VA_ARGS__>(const Plan&, int, bool&);                 \
  template cudaError_t compiled_arch<__VA_ARGS__>(int&);                           \
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
