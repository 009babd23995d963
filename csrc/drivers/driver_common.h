// What the CUDA path's drivers (drivers/layer_driver.h, drivers/stack_driver.h) share: the choice of the recurrent
// path (LSTM_FUSED_CUDA_ALGO, persistent or per-step, GEMM or not), the per-step GEMM helpers of the GEMM path, and
// the row bookkeeping of a sequence (h_{t-1} rows, rows that end at a step).
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "host/arg_checks.h"
#include "host/path_stats.h"
#include "kernels/lstm_step_phases.h"
#include "kernels/persistent_phases.h"

namespace lstm_fused {
namespace cuda_driver {

using at::Tensor;

// Which recurrent kernel runs: LSTM_FUSED_CUDA_ALGO=auto (default), step (one fused launch per time step that
// also reduces h·W_hhᵀ), gemm (per step a cuBLAS GEMM for h·W_hhᵀ, then a launch for the cell) or persistent
// (one cooperative launch; an error where it cannot run). Read on every call, so tests can switch.
enum class Algo { kAuto, kStep, kGemm, kPersistent };
inline Algo algo_from_env() {
  const char* v = std::getenv("LSTM_FUSED_CUDA_ALGO");
  if (v == nullptr || *v == '\0' || std::string(v) == "auto") return Algo::kAuto;
  if (std::string(v) == "step") return Algo::kStep;
  if (std::string(v) == "gemm") return Algo::kGemm;
  TORCH_CHECK(std::string(v) == "persistent", "lstm_fused: LSTM_FUSED_CUDA_ALGO must be auto, step, gemm or "
              "persistent, got '", v, "'");
  return Algo::kPersistent;
}

// Batches up to this size take the persistent kernel automatically: per step it stages the whole batch's
// h_{t-1} in every block, which stops paying off against the per-step kernel's wider grid at large batch.
constexpr int64_t kPersistentMaxBatch = 64;

// Where the persistent kernel does not run: whether each step's recurrent product is a cuBLAS GEMM (large
// batches, where a GEMM's tiling beats the fused step kernel's FMA reduction) rather than the step kernel's own.
inline bool gemm_steps(int64_t B) {
  const Algo a = algo_from_env();
  return a == Algo::kGemm || (a == Algo::kAuto && B > kPersistentMaxBatch);
}

// Whether the algorithm and the batch leave the persistent kernel in question at all: decided before a plan is made
// or the step table is copied (both cost time proportional to the sequence on every call).
inline bool persistent_considered(int64_t B) {
  const Algo a = algo_from_env();
  if (a == Algo::kStep || a == Algo::kGemm || B == 0) return false;
  return a == Algo::kPersistent || B <= kPersistentMaxBatch;
}

// A layer pass's recurrent path, counted (host/path_stats.h): the persistent launch of all `steps` where allowed and
// the runner takes it (true), else per-step launches, whose `gemm` says whether each step's product is a GEMM.
// `gemm_only`: the layer runs the GEMM path whatever the batch (layer norm, check_layer_norm_path).
template <typename Runner, typename Steps>
bool persistent_or_steps(Runner& run, const Steps& steps, int64_t B, bool allow_persistent, bool& gemm,
                         bool gemm_only = false) {
  if (!gemm_only && allow_persistent && persistent_considered(B) && run.sequence(persistent::flatten(steps), B)) {
    count_path(RecurrentPath::kPersistent);
    return true;
  }
  gemm = gemm_only || gemm_steps(B);
  count_path(gemm ? RecurrentPath::kGemmStep : RecurrentPath::kStep);
  return false;
}

// out = a·b with out in the accumulate type: for half types a mixed-precision GEMM (half operands, float
// accumulation and result), so the recurrent product keeps float precision up to the cell. The CPU (emulation) has
// no such GEMM: it multiplies the operands converted to float, which are exact.
inline void mm_into(Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
  } else if (a.is_cuda()) {
    at::mm_out(out, a, b, out.scalar_type());
  } else {
    at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
  }
}

// The GEMM path's recurrent product of step `step` (processing order) for one direction: rec[rows of t] =
// h_{t-1}·W_hhᵀ (rec in the accumulate type), from the previous step's output rows (`out_cols`: this direction's
// columns of the layer output, [N, P]) or from h0 (`h0d` [B, P]) for rows that start at t. w_t: W_hhᵀ [P, G].
inline void gemm_prev_hidden(Tensor& rec, const SeqLayout& seq, int64_t step, const Tensor& out_cols, const Tensor& h0d,
                             const Tensor& w_t) {
  const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t];
  int64_t prev, n_prev;
  seq.prev_rows(t, prev, n_prev);
  if (n_prev > 0) {
    Tensor r = rec.narrow(0, 0, n_prev);
    mm_into(r, out_cols.narrow(0, seq.offsets[prev], n_prev), w_t);
  }
  if (bs > n_prev) {
    Tensor r = rec.narrow(0, n_prev, bs - n_prev);
    mm_into(r, h0d.narrow(0, n_prev, bs - n_prev), w_t);
  }
}

// The GEMM path's backward product of the i-th backward step for one direction: rec = dG_later·W_hh over the
// rows the step after t continues (`dg_d` [N, G], `w` [G, P]); rows without a later step are zero (they take
// grad_h_n instead).
inline void gemm_later_grad(Tensor& rec, const SeqLayout& seq, int64_t i, const Tensor& dg_d, const Tensor& w) {
  const int64_t n_steps = seq.T, t = seq.time_at(n_steps - 1 - i), bs = seq.batch_sizes[t];
  const int64_t later = seq.reverse ? t - 1 : t + 1;
  const int64_t n_later = later >= 0 && later < n_steps ? std::min(bs, seq.batch_sizes[later]) : 0;
  if (n_later > 0) {
    Tensor r = rec.narrow(0, 0, n_later);
    at::mm_out(r, dg_d.narrow(0, seq.offsets[later], n_later), w);
  }
  if (bs > n_later) rec.narrow(0, n_later, bs - n_later).zero_();
}

// Whether a sequence with this plan runs persistently. `fits`: the device can co-schedule the grid. `optional`:
// a launch with a fallback that is persistent too (a layer stack's wavefront), so even a forced
// LSTM_FUSED_CUDA_ALGO=persistent may decline it.
inline bool want_persistent(const persistent::Plan& plan, int64_t B, bool fits = true, bool optional = false) {
  const Algo a = algo_from_env();
  if (!persistent_considered(B)) return false;  // an empty batch has nothing to launch
  const bool ok = plan.ok && fits;
  TORCH_CHECK(ok || optional || a != Algo::kPersistent, "lstm_fused: LSTM_FUSED_CUDA_ALGO=persistent, but the "
              "persistent kernel cannot run this layer: ", plan.ok ? "the grid cannot be co-resident" : plan.why);
  return ok && (a == Algo::kPersistent || B <= kPersistentMaxBatch);
}

// Layer-norm layers run the per-step GEMM path only: their norms reduce over whole rows of the recurrent product,
// which the step and persistent kernels split between blocks.
inline void check_layer_norm_path(bool layer_norm) {
  const Algo a = algo_from_env();
  TORCH_CHECK(!layer_norm || a == Algo::kAuto || a == Algo::kGemm, "lstm_fused: LSTM_FUSED_CUDA_ALGO=",
              a == Algo::kStep ? "step" : "persistent", ", but layer_norm runs on the gemm path only");
}

// Projection layers always take the per-step kernels (a GEMM sits between one step's cell and the next).
inline void check_persistent_possible(bool proj) {
  TORCH_CHECK(!proj || algo_from_env() != Algo::kPersistent, "lstm_fused: LSTM_FUSED_CUDA_ALGO=persistent, but the "
              "persistent kernel does not support proj_size");
}

// Direction d's zoneout mask from an op's [D, rows, width] tensor (any strides), from row `row` on; data nullptr where
// the op has none.
template <typename A>
ZoneoutMask<A> mask_rows(const std::optional<Tensor>& m, int64_t d, int64_t row) {
  if (!m) return {};
  return {m->const_data_ptr<A>() + d * m->stride(0) + row * m->stride(1), m->stride(1), m->stride(2)};
}

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "lstm_fused: the CUDA kernels support float32, float64, float16 and bfloat16, got ", t);
}

// Rows of h_{t-1} each step consumed, as one [N, P] matrix (for W_hh's gradient).
inline Tensor gather_prev_hidden(const SeqLayout& seq, bool packed, const Tensor& out2d, const Tensor& h0) {
  if (!packed) {  // uniform batch: a shifted copy of the output with h0 at the first processed step
    const int64_t B = seq.B, N = seq.N;
    if (!seq.reverse) return at::cat({h0, out2d.narrow(0, 0, N - B)}, 0);
    return at::cat({out2d.narrow(0, B, N - B), h0}, 0);
  }
  // Packed: device-to-device row copies per step (capturable in a CUDA graph, no host buffer involved).
  Tensor hprev = at::empty({seq.N, out2d.size(1)}, out2d.options());
  for (int64_t t = 0; t < seq.T; ++t) {
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    const int64_t bs = seq.batch_sizes[t], off = seq.offsets[t];
    if (n_prev > 0) hprev.narrow(0, off, n_prev).copy_(out2d.narrow(0, seq.offsets[prev], n_prev));
    if (bs > n_prev) hprev.narrow(0, off + n_prev, bs - n_prev).copy_(h0.narrow(0, n_prev, bs - n_prev));
  }
  return hprev;
}


// Rows whose sequence ends at step t hand their state to h_n/c_n: in forward order those no longer active at
// t+1; in reverse every row, at t = 0.
inline void ending_rows(const SeqLayout& seq, int64_t t, int64_t& e0, int64_t& e1) {
  e0 = e1 = 0;
  if (!seq.reverse) {
    e0 = t + 1 < seq.T ? seq.batch_sizes[t + 1] : 0;
    e1 = seq.batch_sizes[t];
  } else if (t == 0) {
    e1 = seq.batch_sizes[t];
  }
}

}  // namespace cuda_driver
}  // namespace lstm_fused
