// CPU emulation of the CUDA path, for tests on machines without a GPU (built only with LSTM_FUSED_TESTING=1): the
// ops lstm_fused_testing::emu_lstm_layer_fwd / emu_lstm_layer_bwd (and the stack and GRU twins) run the CUDA driver (drivers/lstm_driver.h: buffers, GEMMs, step loop) on CPU tensors and execute
// each step kernel's phase functions (kernels/lstm_step_phases.h) block by block, thread by thread, with the barriers
// in between — the same index math, tiling and bounds the GPU runs.
#include <array>
#include <string>
#include <cstdlib>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "host/autocast_off.h"
#include "host/op_schemas.h"
#include "drivers/gru_driver.h"
#include "drivers/lstm_driver.h"
#include "drivers/stack_driver.h"
#include "kernels/persistent_mma_phases.h"

namespace lstm_fused {
namespace {

using at::Tensor;
using namespace cuda_step;

// Runs one launch's blocks like the GPU: the grid of the widest direction, blocks without rows exiting at
// once, and per block the load → barrier → accumulate → barrier loop, then the epilogue.
template <int NG, typename A, typename P, typename Load, typename Epilogue>
void emulate_launch(const P& p, int64_t gx, int64_t gy, int64_t k_len, const Load& load, const Epilogue& epilogue) {
  std::vector<A> acc(kThreads * NG);
  for (int64_t by = 0; by < gy; ++by) {
    if (!block_has_rows(p, by)) continue;  // the kernel's early exit
    for (int64_t bx = 0; bx < gx; ++bx) {
      TileSmem<A, NG> smem;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t k0 = 0; k0 < k_len; k0 += kKT) {
        for (int tid = 0; tid < kThreads; ++tid) load(bx, by, tid, k0, smem);
        // __syncthreads()
        for (int ty = 0; ty < kBT; ++ty)
          for (int tx = 0; tx < kJT; ++tx)
            tile_accumulate(smem, tx, ty, *reinterpret_cast<A(*)[NG]>(&acc[(ty * kJT + tx) * NG]));
        // __syncthreads()
      }
      for (int ty = 0; ty < kBT; ++ty)
        for (int tx = 0; tx < kJT; ++tx) epilogue(bx, by, tx, ty, *reinterpret_cast<A(*)[NG]>(&acc[(ty * kJT + tx) * NG]));
    }
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

void check_guard(const std::vector<std::vector<unsigned char>>& mem, const persistent::Plan& pl) {
  for (const auto& m : mem)
    for (size_t i = pl.smem; i < m.size(); ++i)
      TORCH_CHECK(m[i] == 0xFF, "lstm_fused emulation: the persistent kernel wrote past its shared memory");
}

// Runs one persistent launch like the GPU: every block's shared memory lives for the whole launch (filled with
// NaNs first, so a read of anything not staged shows in the results, with a guard zone after it); per step each
// block runs its rounds of stage → barrier → accumulate → barrier ..., partials → barrier → reduce/epilogue →
// barrier, and the next step starts only when every block has finished this one (the grid barrier).
template <typename R, typename T, typename A>
void emulate_persistent(const persistent::StepTable<typename R::Step>& table, const persistent::Plan& pl) {
  using namespace persistent;
  constexpr int NG = R::NG;
  constexpr size_t kGuard = 256;
  const int count = table.count;
  auto step_of = [&](int64_t step, int64_t blk) -> const typename R::Step& {
    return table.steps[step * count + blk / pl.nb];
  };
  const int64_t blocks = count * pl.nb;
  std::vector<std::vector<unsigned char>> mem(blocks, std::vector<unsigned char>(pl.smem + kGuard, 0xFF));
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const Smem<T, A> s = carve<T, A>(pl, mem[blk].data());
    for (int tid = 0; tid < persistent::kThreads; ++tid)
      load_resident<R>(pl, step_of(0, blk), blk % pl.nb, tid, s);
  }
  if constexpr (kHasMmaPath<R, T>) {
    if (pl.mma) {
      const bool once = pl.kc >= pl.kp;
      std::vector<MmaAcc<NG>> accs(kWarps);
      for (int64_t step = 0; step < table.n_steps; ++step) {
        for (int64_t blk = 0; blk < blocks; ++blk) {
          const typename R::Step& p = step_of(step, blk);
          const MmaSmem<T> m = carve_mma<T>(pl, mem[blk].data());
          const MmaTiling mt = mma_tiling<NG>(pl, p.rows);
          if (once)
            for (int tid = 0; tid < persistent::kThreads; ++tid) mma_stage_left<R>(pl, p, 0, tid, m);
          for (int64_t r0 = 0; r0 < mt.units; r0 += kWarps) {
            for (auto& a : accs) mma_zero(a);
            for (int64_t k0 = 0; k0 < pl.kp; k0 += pl.kc) {
              if (!once)
                for (int tid = 0; tid < persistent::kThreads; ++tid) mma_stage_left<R>(pl, p, k0, tid, m);
              for (int warp = 0; warp < kWarps; ++warp)
                if (r0 + warp < mt.units) mma_accumulate<NG>(pl, mt, r0 + warp, k0, m, accs[warp]);
            }
            for (int warp = 0; warp < kWarps; ++warp)
              if (r0 + warp < mt.units) mma_store<NG>(r0 + warp, m, accs[warp]);
          }
          for (int tid = 0; tid < persistent::kThreads; ++tid) mma_reduce_epilogue<R>(pl, p, mt, blk % pl.nb, tid, m);
        }
      }
      check_guard(mem, pl);
      return;
    }
  }
  std::vector<std::array<std::array<A, NG>, kRows>> acc(persistent::kThreads);
  auto acc_of = [&](int tid) -> A(&)[kRows][NG] { return *reinterpret_cast<A(*)[kRows][NG]>(acc[tid].data()); };
  for (int64_t step = 0; step < table.n_steps; ++step) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const typename R::Step& p = step_of(step, blk);
      const int64_t bx = blk % pl.nb;
      const Smem<T, A> s = carve<T, A>(pl, mem[blk].data());
      const StepTiling st = step_tiling(pl.kj, p.rows);
      for (int64_t r0 = 0; r0 < st.items; r0 += st.groups) {
        for (auto& a : acc)
          for (auto& row : a) row.fill(A(0));
        for (int64_t k0 = 0; k0 < R::K(p); k0 += pl.kc) {
          for (int tid = 0; tid < persistent::kThreads; ++tid) stage_left<R>(pl, p, k0, tid, s);
          for (int tid = 0; tid < persistent::kThreads; ++tid) accumulate<R>(pl, p, st, r0, k0, tid, s, acc_of(tid));
        }
        for (int tid = 0; tid < persistent::kThreads; ++tid) store_partials<NG>(tid, s, acc_of(tid));
        for (int tid = 0; tid < persistent::kThreads; ++tid) reduce_epilogue<R>(pl, p, st, r0, bx, tid, s);
      }
    }
  }
  check_guard(mem, pl);
}

struct EmulationRunner {
  template <typename Step>
  bool sequence(const persistent::StepTable<Step>& table, int64_t B, bool optional = false) {
    using R = typename persistent::RecurrenceOf<Step>::type;
    persistent::Plan plan;
    if (!accepts<Step>(table.steps[0].H, persistent::max_k<R>(table), B, table.count, optional, &plan)) return false;
    emulate_persistent<R, typename R::Storage, typename R::Acc>(table, plan);
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

  template <typename T, typename A>
  void gru_fwd(const DirectionParams<GruFwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);
    for (int z = 0; z < dp.count; ++z) {
      const GruFwdStepParams<T, A>& p = dp.dir[z];
      emulate_launch<3, A>(
          p, gx, gy, gru_fwd_reduction_length(p),
          [&](int bx, int by, int tid, int64_t k0, TileSmem<A, 3>& s) { gru_fwd_load_tiles(p, bx, by, tid, k0, s); },
          [&](int bx, int by, int tx, int ty, const A(&acc)[3]) { gru_fwd_epilogue(p, bx, by, tx, ty, acc); });
    }
  }

  template <typename T, typename A>
  void gru_bwd(const DirectionParams<GruBwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);
    for (int z = 0; z < dp.count; ++z) {
      const GruBwdStepParams<T, A>& p = dp.dir[z];
      emulate_launch<1, A>(
          p, gx, gy, gru_bwd_reduction_length(p),
          [&](int bx, int by, int tid, int64_t k0, TileSmem<A, 1>& s) { gru_bwd_load_tiles(p, bx, by, tid, k0, s); },
          [&](int bx, int by, int tx, int ty, const A(&acc)[1]) { gru_bwd_epilogue(p, bx, by, tx, ty, acc); });
    }
  }

  template <typename T, typename A>
  void fwd(const DirectionParams<FwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);  // the GPU's grid: the widest direction
    for (int z = 0; z < dp.count; ++z) {  // blockIdx.z
      const FwdStepParams<T, A>& p = dp.dir[z];
      emulate_launch<4, A>(
          p, gx, gy, fwd_reduction_length(p),
          [&](int bx, int by, int tid, int64_t k0, TileSmem<A, 4>& s) { fwd_load_tiles(p, bx, by, tid, k0, s); },
          [&](int bx, int by, int tx, int ty, const A(&acc)[4]) { fwd_epilogue(p, bx, by, tx, ty, acc); });
    }
  }

  template <typename T, typename A>
  void bwd(const DirectionParams<BwdStepParams<T, A>>& dp, int mode) {
    int64_t gx, gy;
    launch_grid(dp, mode, gx, gy);
    for (int z = 0; z < dp.count; ++z) {
      const BwdStepParams<T, A>& p = dp.dir[z];
      emulate_launch<1, A>(
          p, gx, gy, bwd_reduction_length(p, mode),
          [&](int bx, int by, int tid, int64_t k0, TileSmem<A, 1>& s) { bwd_load_tiles(p, bx, by, tid, k0, s); },
          [&](int bx, int by, int tx, int ty, const A(&acc)[1]) { bwd_epilogue(p, mode, bx, by, tx, ty, acc); });
    }
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> emu_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                                   const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
                                                   at::TensorList w_hh, const std::optional<at::TensorList>& b_ih,
                                                   const std::optional<at::TensorList>& b_hh,
                                                   const std::optional<at::TensorList>& w_hr,
                                                   const std::optional<at::TensorList>& w_ph, bool coupled,
                                                   bool need_workspace) {
  EmulationRunner run;
  return cuda_driver::layer_fwd(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, need_workspace, run);
}

cuda_driver::LayerGrads
emu_bwd(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
        const std::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
        at::TensorList w_hh, const std::optional<at::TensorList>& w_hr,
                    const std::optional<at::TensorList>& w_ph, bool coupled, const Tensor& output, const Tensor& workspace,
        bool has_bias, bool need_grad_input) {
  EmulationRunner run;
  return cuda_driver::layer_bwd(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, w_ph,
                                coupled, output, workspace, has_bias, need_grad_input, run);
}

StackOutputs emu_stack_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0,
                           const Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                           const std::optional<at::TensorList>& b_ih, const std::optional<at::TensorList>& b_hh,
                           const std::optional<at::TensorList>& w_ph, bool coupled, bool need_workspace) {
  EmulationRunner run;
  return cuda_driver::stack_fwd(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, need_workspace, run);
}

StackGrads emu_stack_bwd(at::TensorList grad_outputs, const Tensor& grad_h_n, const Tensor& grad_c_n,
                         const Tensor& input, const std::optional<Tensor>& batch_sizes, const Tensor& h0,
                         const Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                         const std::optional<at::TensorList>& w_ph, bool coupled, at::TensorList outputs,
                         at::TensorList workspaces, bool has_bias, bool need_grad_input) {
  EmulationRunner run;
  return cuda_driver::stack_bwd(grad_outputs, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_ph, coupled,
                                outputs, workspaces, has_bias, need_grad_input, run);
}

std::tuple<Tensor, Tensor, Tensor> emu_gru_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                               const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
                                               const std::optional<at::TensorList>& b_ih,
                                               const std::optional<at::TensorList>& b_hh, bool need_workspace) {
  EmulationRunner run;
  return cuda_driver::gru_layer_fwd(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, need_workspace, run);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>>
emu_gru_bwd(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
            const std::optional<Tensor>& batch_sizes, const Tensor& h0, at::TensorList w_ih, at::TensorList w_hh,
            const Tensor& output, const Tensor& workspace, bool has_bias, bool need_grad_input) {
  EmulationRunner run;
  return cuda_driver::gru_layer_bwd(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, output, workspace,
                                    has_bias, need_grad_input, run);
}

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
  using namespace lstm_fused;
  m.impl("emu_lstm_layer_fwd", &emu_fwd);
  m.impl("emu_lstm_layer_bwd", &emu_bwd);
  m.impl("emu_lstm_stack_fwd", &emu_stack_fwd);
  m.impl("emu_lstm_stack_bwd", &emu_stack_bwd);
  m.impl("emu_gru_layer_fwd", &emu_gru_fwd);
  m.impl("emu_gru_layer_bwd", &emu_gru_bwd);
}

// As the CUDA ops (host/autocast_off.h), so an autocast test on the CPU checks what the GPU bindings do.
TORCH_LIBRARY_IMPL(lstm_fused_testing, AutocastCPU, m) {
  lstm_fused::register_autocast_off(m, lstm_fused::schema::kOps, "emu_");
}
