// CPU emulation of the CUDA path, for tests on machines without a GPU (built only with LSTM_FUSED_TESTING=1): the
// ops lstm_fused_testing::emu_* run the CUDA drivers (drivers/: buffers, GEMMs, step loop, path choice) on CPU tensors
// with a runner that executes each launch's blocks through the kernels' own schedules (kernels/step_schedule.h,
// kernels/persistent_schedule.h) on emulated threads (testing/emulated_exec.h) — the same phases, barriers, index
// math, tiling and bounds the GPU runs.
#include <algorithm>
#include <array>
#include <string>
#include <cstdlib>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "host/autocast_off.h"
#include "host/op_schemas.h"
#include "drivers/driver_ops.h"
#include "host/op_binding.h"
#include "kernels/persistent_schedule.h"
#include "kernels/step_schedule.h"
#include "testing/emulated_exec.h"

namespace lstm_fused {
namespace {

using at::Tensor;
using namespace cuda_step;

// Runs one step launch like the GPU: grid (gx, gy, directions), each block the kernel's own schedule
// (kernels/step_schedule.h) on emulated threads, with its own shared memory (static on the GPU: at most 48 KB).
template <typename A, int NG, typename Block>
void emulate_step_launch(int64_t gx, int64_t gy, int gz, const char* kernel, const Block& block) {
  static_assert(sizeof(TileSmem<A, NG>) <= 48 * 1024, "static shared memory over the 48 KB a launch may declare");
  emulation::EmulatedExec ex;
  for (int bz = 0; bz < gz; ++bz)
    for (int64_t by = 0; by < gy; ++by)
      for (int64_t bx = 0; bx < gx; ++bx) {
        emulation::SharedMemory smem(sizeof(TileSmem<A, NG>));
        block(static_cast<int>(bx), static_cast<int>(by), bz, smem.as<TileSmem<A, NG>>(), ex);
        smem.check_guard(kernel);
      }
}

// Runs one row launch (the layer-norm kernels) like the GPU: a block per row of the longest of `count` sets, each
// with its own shared memory.
template <typename A, typename Block>
void emulate_row_launch(int64_t rows, int count, const char* kernel, const Block& block) {
  using Smem = RowSums<A, kRowSumsMax>;
  static_assert(sizeof(Smem) <= 48 * 1024, "static shared memory over the 48 KB a launch may declare");
  emulation::EmulatedExec ex;
  for (int bz = 0; bz < count; ++bz)
    for (int64_t bx = 0; bx < rows; ++bx) {
      emulation::SharedMemory smem(sizeof(Smem));
      block(bx, bz, smem.as<Smem>(), ex);
      smem.check_guard(kernel);
    }
}

// The emulated device of the persistent kernel: LSTM_FUSED_EMU_SMS multiprocessors (default 132, an H200) with
// LSTM_FUSED_EMU_SMEM bytes of shared memory per block (default 232448), with tensor cores unless
// LSTM_FUSED_EMU_MMA=0, so tests can force odd tilings and either forward path for half types.
persistent::DeviceLimits emulated_device() {
  auto env = [](const char* name, int64_t dflt) {
    const char* v = std::getenv(name);
    return v && *v ? std::atoll(v) : dflt;
  };
  return {env("LSTM_FUSED_EMU_SMS", 132), env("LSTM_FUSED_EMU_SMEM", 232448), env("LSTM_FUSED_EMU_MMA", 1) != 0};
}

// Runs one persistent launch like the GPU: every block's shared memory lives for the whole launch; each block
// runs the kernel's own schedule (kernels/persistent_schedule.h) on emulated threads, and the next time step starts
// only when every block has finished this one (the grid barrier).
template <typename R, typename T, typename A>
void emulate_persistent(const persistent::StepTable<typename R::Step>& table, const persistent::Plan& pl,
                        const persistent::DeviceLimits& dev) {
  using namespace persistent;
  TORCH_CHECK(int64_t(pl.smem) + dev.static_smem <= dev.smem, "lstm_fused emulation: the plan's ", pl.smem,
              " bytes of shared memory exceed the emulated device's ", dev.smem - dev.static_smem);
  Args<typename R::Step> args;
  args.steps = table.steps.data();
  args.n_steps = table.n_steps;
  args.count = table.count;
  args.plan = pl;
  const int64_t blocks = table.count * pl.nb;
  std::vector<emulation::SharedMemory> mem;
  mem.reserve(blocks);
  std::vector<typename R::Step> step_p(blocks);  // __shared__ on the GPU
  emulation::EmulatedExec ex;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    mem.emplace_back(pl.smem);
    persistent_block_init<R, T, A>(args, blk, mem[blk].data(), ex);
  }
  for (int64_t step = 0; step < table.n_steps; ++step)
    for (int64_t blk = 0; blk < blocks; ++blk)  // then the grid barrier
      persistent_block_step<R, T, A>(args, step, blk, mem[blk].data(), step_p[blk], ex);
  for (const auto& m : mem) m.check_guard("persistent kernel");
}

struct EmulationRunner {
  template <typename Step>
  bool sequence(const persistent::StepTable<Step>& table, int64_t B, bool optional = false) {
    using R = typename persistent::RecurrenceOf<Step>::type;
    persistent::Plan plan;
    if (!accepts<Step>(table.steps[0].H, persistent::max_k<R>(table), B, table.count, optional, &plan)) return false;
    emulate_persistent<R, typename R::Storage, typename R::Acc>(table, plan, emulated_device());
    return true;
  }
  template <typename Step>
  bool accepts(int64_t H, int64_t K, int64_t B, int count, bool optional, persistent::Plan* out = nullptr) {
    using R = typename persistent::RecurrenceOf<Step>::type;
    const auto plan = persistent::choose_plan<typename R::Storage, typename R::Acc>(R::NG, H, K, B, count,
                                                                                 emulated_device());
    if (!cuda_driver::want_persistent(plan, B, true, optional)) return false;
    if (out) *out = plan;
    return true;
  }

  // One step of every direction: the launch's blocks, each running the kernel's own schedule (as GpuRunner::step).
  template <typename T, typename A>
  void step(const DirectionParams<FwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);  // the GPU's grid: the widest direction
    emulate_step_launch<A, 4>(gx, gy, dp.count, "LSTM forward step kernel", [&](int bx, int by, int bz, auto& smem, auto& ex) {
      lstm_fwd_step_block(dp, bx, by, bz, smem, ex);
    });
  }

  template <typename T, typename A>
  void step(const DirectionParams<BwdStepParams<T, A>>& dp, int mode = kFused) {
    int64_t gx, gy;
    launch_grid(dp, mode, gx, gy);
    emulate_step_launch<A, 1>(gx, gy, dp.count, "LSTM backward step kernel", [&](int bx, int by, int bz, auto& smem, auto& ex) {
      switch (mode) {  // a template argument of the GPU kernel, as in cuda/lstm_step_kernels.cu
        case kFused:
          lstm_bwd_step_block<kFused>(dp, bx, by, bz, smem, ex);
          break;
        case kReduceOnly:
          lstm_bwd_step_block<kReduceOnly>(dp, bx, by, bz, smem, ex);
          break;
        default:
          lstm_bwd_step_block<kPointwiseOnly>(dp, bx, by, bz, smem, ex);
          break;
      }
    });
  }

  template <typename T, typename A>
  void step(const DirectionParams<ProjZoneoutParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);
    emulate_step_launch<A, 1>(gx, gy, dp.count, "projection zoneout kernel", [&](int bx, int by, int bz, auto&, auto& ex) {
      proj_zoneout_block(dp, bx, by, bz, ex);
    });
  }

  template <typename T, typename A>
  void step(const DirectionParams<GruFwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);
    emulate_step_launch<A, 3>(gx, gy, dp.count, "GRU forward step kernel", [&](int bx, int by, int bz, auto& smem, auto& ex) {
      gru_fwd_step_block(dp, bx, by, bz, smem, ex);
    });
  }

  // Layer norm (as GpuRunner's).
  template <typename T, typename A>
  void step(const RowLaunch<RowNormParams<T, A>>& l) {
    emulate_row_launch<A>(row_grid(l), l.count, "row norm kernel", [&](int64_t bx, int bz, auto& sm, auto& ex) {
      row_norm_block(l, bx, bz, sm, ex);
    });
  }
  template <typename T, typename A>
  void step(const RowLaunch<RowNormBwdParams<T, A>>& l) {
    emulate_row_launch<A>(row_grid(l), l.count, "row norm backward kernel", [&](int64_t bx, int bz, auto& sm, auto& ex) {
      row_norm_bwd_block(l, bx, bz, sm, ex);
    });
  }
  template <typename T, typename A>
  void ln_step(const DirectionParams<FwdStepParams<T, A>>& dp) {
    emulate_row_launch<A>(row_grid(dp), dp.count, "layer-norm LSTM forward kernel",
                          [&](int64_t bx, int bz, auto& sm, auto& ex) { lstm_ln_fwd_step_block(dp, bx, bz, sm, ex); });
  }
  template <typename T, typename A>
  void ln_step(const DirectionParams<BwdStepParams<T, A>>& dp) {
    emulate_row_launch<A>(row_grid(dp), dp.count, "layer-norm LSTM backward kernel",
                          [&](int64_t bx, int bz, auto& sm, auto& ex) { lstm_ln_bwd_step_block(dp, bx, bz, sm, ex); });
  }

  template <typename T, typename A>
  void step(const DirectionParams<GruBwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);
    emulate_step_launch<A, 1>(gx, gy, dp.count, "GRU backward step kernel", [&](int bx, int by, int bz, auto& smem, auto& ex) {
      gru_bwd_step_block(dp, bx, by, bz, smem, ex);
    });
  }
};

// The emulated ops take CPU tensors and run the drivers with the emulated kernels.
struct EmulationBackend {
  template <typename F>
  static auto with_runner(const LayerArgs&, F&& f) {
    EmulationRunner run;
    return f(run);
  }
};

// The persistent kernel's plan for a layer on a device, for tests: [ok, blocks per direction, units per block,
// k chunk, shared-memory bytes].
std::vector<int64_t> persistent_plan(int64_t ng, int64_t H, int64_t K, int64_t B, int64_t D, int64_t elem_w,
                                     int64_t elem_a, int64_t sms, int64_t smem) {
  const auto p = persistent::make_plan(static_cast<int>(ng), H, K, B, D, elem_w, elem_a, {sms, smem});
  return {p.ok, p.nb, p.kj, p.kc, static_cast<int64_t>(p.smem)};
}

// The tensor-core plan, for tests: [ok, blocks per direction, units per block, M tiles, k chunk, bytes].
std::vector<int64_t> persistent_mma_plan(int64_t ng, int64_t H, int64_t K, int64_t B, int64_t D, int64_t sms,
                                         int64_t smem) {
  const auto p = persistent::make_mma_plan(static_cast<int>(ng), H, K, B, D, {sms, smem, true});
  return {p.ok, p.nb, p.kj, p.mt, p.kc, static_cast<int64_t>(p.smem)};
}

}  // namespace

}  // namespace lstm_fused

// The emulated twins of the product ops (same signatures, host/op_schemas.h; CPU tensors) and the planners.
TORCH_LIBRARY(lstm_fused_testing, m) {
  for (const auto& op : lstm_fused::schema::kOps) m.def((std::string("emu_") + op.name + op.signature).c_str());
  m.def("persistent_plan(int ng, int H, int K, int B, int D, int elem_w, int elem_a, int sms, int smem) -> int[]",
        &lstm_fused::persistent_plan);
  m.def("persistent_mma_plan(int ng, int H, int K, int B, int D, int sms, int smem) -> int[]",
        &lstm_fused::persistent_mma_plan);
}

TORCH_LIBRARY_IMPL(lstm_fused_testing, CPU, m) {
  lstm_fused::bind_ops<lstm_fused::DriverOps<lstm_fused::EmulationBackend>>(m, "emu_");
}

// As the CUDA ops (host/autocast_off.h), so an autocast test on the CPU checks what the GPU bindings do.
TORCH_LIBRARY_IMPL(lstm_fused_testing, AutocastCPU, m) {
  lstm_fused::register_autocast_off(m, lstm_fused::schema::kOps, "emu_");
}
