// CPU emulation of the CUDA path, for tests on machines without a GPU: the ops lstm_fused::_emu_layer_fwd /
// _emu_layer_bwd run the CUDA driver (lstm_cuda_driver.h: buffers, GEMMs, step loop) on CPU tensors and execute
// each step kernel's phase functions (lstm_cuda_step.h) block by block, thread by thread, with the barriers
// in between — the same index math, tiling and bounds the GPU runs.
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cuda/lstm_cuda_driver.h"

namespace lstm_fused {
namespace {

using at::Tensor;
using namespace cuda_step;

struct EmulationRunner {
  template <typename T, typename A>
  void fwd(const DirectionParams<FwdStepParams<T, A>>& dp) {
    int64_t gx, gy;
    launch_grid(dp, gx, gy);  // the GPU's grid: the widest direction
    for (int z = 0; z < dp.count; ++z) {  // blockIdx.z
      const FwdStepParams<T, A>& p = dp.dir[z];
      std::vector<A> acc(kThreads * 4);
      for (int64_t by = 0; by < gy; ++by) {
        if (!block_has_rows(p, by)) continue;  // the kernel's early exit
        for (int64_t bx = 0; bx < gx; ++bx) {
          TileSmem<A, 4> smem;
          std::fill(acc.begin(), acc.end(), A(0));
          for (int64_t k0 = 0; k0 < p.P; k0 += kKT) {
            for (int tid = 0; tid < kThreads; ++tid) fwd_load_tiles(p, bx, by, tid, k0, smem);
            // __syncthreads()
            for (int ty = 0; ty < kBT; ++ty)
              for (int tx = 0; tx < kJT; ++tx)
                tile_accumulate(smem, tx, ty, *reinterpret_cast<A(*)[4]>(&acc[(ty * kJT + tx) * 4]));
            // __syncthreads()
          }
          for (int ty = 0; ty < kBT; ++ty)
            for (int tx = 0; tx < kJT; ++tx)
              fwd_epilogue(p, bx, by, tx, ty, *reinterpret_cast<A(*)[4]>(&acc[(ty * kJT + tx) * 4]));
        }
      }
    }
  }

  template <typename T, typename A>
  void bwd(const DirectionParams<BwdStepParams<T, A>>& dp, int mode) {
    int64_t gx, gy;
    launch_grid(dp, mode, gx, gy);
    for (int z = 0; z < dp.count; ++z) {
      const BwdStepParams<T, A>& p = dp.dir[z];
      std::vector<A> acc(kThreads);
      for (int64_t by = 0; by < gy; ++by) {
        if (!block_has_rows(p, by)) continue;
        for (int64_t bx = 0; bx < gx; ++bx) {
          TileSmem<A, 1> smem;
          std::fill(acc.begin(), acc.end(), A(0));
          for (int64_t k0 = 0; k0 < bwd_reduction_length(p, mode); k0 += kKT) {
            for (int tid = 0; tid < kThreads; ++tid) bwd_load_tiles(p, bx, by, tid, k0, smem);
            for (int ty = 0; ty < kBT; ++ty)
              for (int tx = 0; tx < kJT; ++tx)
                tile_accumulate(smem, tx, ty, *reinterpret_cast<A(*)[1]>(&acc[ty * kJT + tx]));
          }
          for (int ty = 0; ty < kBT; ++ty)
            for (int tx = 0; tx < kJT; ++tx)
              bwd_epilogue(p, mode, bx, by, tx, ty, *reinterpret_cast<A(*)[1]>(&acc[ty * kJT + tx]));
        }
      }
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

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_fused, m) {
  // Same schemas as lstm_layer_fwd / lstm_layer_bwd; CPU tensors; for tests of the CUDA path's logic.
  m.def(
      "_emu_layer_fwd(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, "
      "Tensor[]? b_ih, Tensor[]? b_hh, Tensor[]? w_hr, Tensor[]? w_ph, bool coupled, bool need_workspace) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_emu_layer_bwd(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor? batch_sizes, "
      "Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, Tensor[]? w_hr, Tensor[]? w_ph, bool coupled, "
      "Tensor output, Tensor workspace, bool has_bias, bool need_grad_input) "
      "-> (Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])");
}

TORCH_LIBRARY_IMPL(lstm_fused, CPU, m) {
  m.impl("_emu_layer_fwd", &emu_fwd);
  m.impl("_emu_layer_bwd", &emu_bwd);
}

}  // namespace lstm_fused
