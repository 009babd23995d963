// CUDA binding of the fused LSTM and GRU layer ops: device guard, current stream, and the sequence loops of
// drivers/ (drivers/driver_ops.h) with the step and persistent kernels. No private streams, no host syncs.
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "drivers/driver_ops.h"
#include "host/op_binding.h"
#include "cuda/step_launch.h"
#include "cuda/persistent_launch.h"
#include "kernels/persistent_mma_phases.h"

namespace lstm_fused {
namespace {

using at::Tensor;

// The step parameters of a whole sequence, copied to the device for the persistent kernel (pinned staging,
// asynchronous on the current stream; the caching allocators keep both buffers alive until the copy and the
// kernel are done with them).
template <typename Step>
Tensor upload_steps(const std::vector<Step>& steps, at::Device device) {
  const int64_t bytes = static_cast<int64_t>(steps.size() * sizeof(Step));
  Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.data_ptr(), steps.data(), bytes);
  return host.to(device, /*non_blocking=*/true);
}

struct GpuRunner {
  cudaStream_t stream;
  at::Device device;

  // What the planner may use: the kernel's real shared-memory limits on this device (static as compiled, dynamic
  // as set), and tensor cores where both the GPU and the kernel's compiled code have them (sm_80+).
  template <typename Step>
  persistent::DeviceLimits limits() const {
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(device.index());
    persistent::KernelLimits k;
    C10_CUDA_CHECK(persistent::kernel_limits<Step>(k));
    persistent::DeviceLimits d;
    d.sms = prop->multiProcessorCount;
    d.smem = k.static_smem + k.max_dynamic_smem;
    d.static_smem = k.static_smem;
    d.tensor_cores = prop->major >= 8 && k.arch >= 80;
    return d;
  }
  // A stream being captured into a CUDA graph takes the per-step kernels: the persistent launch reads step
  // parameters uploaded from a host buffer that a replay would not refresh.
  bool capturing() const {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
    return st != cudaStreamCaptureStatusNone;
  }

  // The whole sequence in one persistent launch (see drivers/layer_driver.h), or false for the per-step kernels.
  template <typename Step>
  bool sequence(const persistent::StepTable<Step>& table, int64_t B, bool optional = false) {
    using R = typename persistent::RecurrenceOf<Step>::type;
    persistent::Plan plan;
    if (!accepts<Step>(table.steps[0].H, persistent::max_k<R>(table), B, table.count, optional, &plan)) return false;
    const Tensor dev_steps = upload_steps(table.steps, device);
    persistent::Args<Step> args;
    args.steps = reinterpret_cast<const Step*>(dev_steps.const_data_ptr());
    args.n_steps = table.n_steps;
    args.count = table.count;
    args.plan = plan;
    const cudaError_t err = persistent::launch<Step>(args, stream);
    // The occupancy check passed, yet the launch may still find fewer multiprocessors than the grid (an MPS client
    // limited to part of the GPU): then the per-step kernels take the sequence, unless the persistent kernel was
    // demanded (a stack's wavefront is optional: its layers then run one by one).
    if (err == cudaErrorCooperativeLaunchTooLarge &&
        (optional || cuda_driver::algo_from_env() != cuda_driver::Algo::kPersistent)) {
      (void)cudaGetLastError();  // a launch-configuration error: clear it, nothing ran
      return false;
    }
    C10_CUDA_CHECK(err);
    return true;
  }
  // Whether sequence() would launch for `count` lanes of H units reducing over K (a layer stack asks before it
  // allocates anything).
  template <typename Step>
  bool accepts(int64_t H, int64_t K, int64_t B, int count, bool optional, persistent::Plan* out = nullptr) {
    using R = typename persistent::RecurrenceOf<Step>::type;
    const auto plan = persistent::choose_plan<typename R::Storage, typename R::Acc>(R::NG, H, K, B, count,
                                                                                 limits<Step>());
    if (!cuda_driver::want_persistent(plan, B, true, optional)) return false;
    if (capturing()) {
      TORCH_CHECK(optional || cuda_driver::algo_from_env() != cuda_driver::Algo::kPersistent, "lstm_fused: "
                  "LSTM_FUSED_CUDA_ALGO=persistent, but the persistent kernel cannot run while the stream is being "
                  "captured into a CUDA graph (a replay would not refresh its step parameters)");
      return false;
    }
    bool fits = false;
    C10_CUDA_CHECK(persistent::fits<Step>(plan, count, fits));
    if (!fits && !cuda_driver::want_persistent(plan, B, false, optional)) return false;
    if (out) *out = plan;
    return true;
  }
  // One step of every direction, per cell and pass (a backward LSTM step in one of the modes of a projection).
  template <typename T, typename A>
  void step(const cuda_step::DirectionParams<cuda_step::FwdStepParams<T, A>>& p) {
    // (Through a variable: the template argument list's comma would split the macro's argument.)
    const cudaError_t err = cuda_step::launch_fwd_step<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void step(const cuda_step::DirectionParams<cuda_step::BwdStepParams<T, A>>& p, int mode = cuda_step::kFused) {
    const cudaError_t err = cuda_step::launch_bwd_step<T, A>(p, mode, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void step(const cuda_step::DirectionParams<cuda_step::ProjZoneoutParams<T, A>>& p) {
    const cudaError_t err = cuda_step::launch_proj_zoneout<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void step(const cuda_step::DirectionParams<cuda_step::GruFwdStepParams<T, A>>& p) {
    const cudaError_t err = cuda_step::launch_gru_fwd_step<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void step(const cuda_step::DirectionParams<cuda_step::GruBwdStepParams<T, A>>& p) {
    const cudaError_t err = cuda_step::launch_gru_bwd_step<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
  // Layer norm: the row norms and the layer-norm LSTM's step kernels (a block per row).
  template <typename T, typename A>
  void step(const cuda_step::RowLaunch<cuda_step::RowNormParams<T, A>>& l) {
    const cudaError_t err = cuda_step::launch_row_norm<T, A>(l, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void step(const cuda_step::RowLaunch<cuda_step::RowNormBwdParams<T, A>>& l) {
    const cudaError_t err = cuda_step::launch_row_norm_bwd<T, A>(l, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void ln_step(const cuda_step::DirectionParams<cuda_step::FwdStepParams<T, A>>& p) {
    const cudaError_t err = cuda_step::launch_lstm_ln_fwd_step<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
  template <typename T, typename A>
  void ln_step(const cuda_step::DirectionParams<cuda_step::BwdStepParams<T, A>>& p) {
    const cudaError_t err = cuda_step::launch_lstm_ln_bwd_step<T, A>(p, stream);
    C10_CUDA_CHECK(err);
  }
};

void check_cuda_args(const Tensor& input, int64_t rows) {
  TORCH_CHECK(input.is_cuda(), "lstm_fused: expected CUDA tensors, got ", input.device());
  // Rows map to gridDim.y in blocks of kBT.
  TORCH_CHECK((rows + cuda_step::kBT - 1) / cuda_step::kBT <= 65535, "lstm_fused: batch of ", rows,
              " rows exceeds the CUDA kernels' limit of ", 65535 * cuda_step::kBT);
}

// Every op call: its checks, the input's device made current, and a runner on that device's current stream.
struct GpuBackend {
  template <typename F>
  static auto with_runner(const LayerArgs& a, F&& f) {
    check_cuda_args(a.input, a.h0.dim() == 3 ? a.h0.size(1) : 0);
    const c10::cuda::CUDAGuard guard(a.input.device());
    GpuRunner run{c10::cuda::getCurrentCUDAStream().stream(), a.input.device()};
    return f(run);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(lstm_fused, CUDA, m) { bind_ops<DriverOps<GpuBackend>>(m); }

}  // namespace lstm_fused
