// Helpers shared by the CPU layer bindings (LSTM and GRU): sizes of parallel work, row copies, deterministic
// reductions and the gather of h_{t-1} rows.
#pragma once

#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "kernels/recurrent_params.h"

namespace lstm_fused {
namespace cpu {

using at::Tensor;

// Elements per parallel chunk of a pointwise pass: below this one thread does the whole step, which
// beats waking the pool at small B·H.
constexpr int64_t kPointwiseGrain = 2048;

// rows × cols from src (row stride ld_src) to dst (row stride ld_dst).
template <typename scalar_t>
void copy_rows(scalar_t* dst, int64_t ld_dst, const scalar_t* src, int64_t ld_src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * ld_dst, src + r * ld_src, sizeof(scalar_t) * cols);
}

// Batch rows per task when threads own rows for a whole loop (run_steps): the packed GEMM's row block.
constexpr int64_t kRowTask = 8;

// Whether threads own batch rows for a layer's whole recurrence (run_steps) instead of sharing each step's
// products and cell updates (two or three fork-joins per step). A row's state never meets another row's, so
// owners never wait for each other; but each then reads all of W_hh every step. Measured on 2 cores (same-process
// A/B, float32 LSTM, T 100): 1.05-1.6x at B 16-32 or W_hh ≤ 512 KB, within ±5% of the shared steps at B 64
// with W_hh of 1-4 MB. Only where every product is the packed GEMM (`packed`): its sums for a row depend only
// on the row's 8-row block, so the split gives the same bits as the shared steps and any thread count (BLAS
// makes no such promise for other row counts). Each thread needs rows, except when LSTM_FUSED_CPU_ROW_SPLIT=1
// forces the split (0 forbids it; for tests).
inline bool rows_per_thread(int64_t B, int64_t P, int64_t G, int64_t elem_bytes, bool packed) {
  const int threads = at::get_num_threads();
  if (!packed || threads < 2 || at::in_parallel_region() || B < 2 * kRowTask) return false;
  if (const char* v = std::getenv("LSTM_FUSED_CPU_ROW_SPLIT"); v && *v) return v[0] == '1';
  const int64_t w_bytes = G * P * elem_bytes;
  return (B + kRowTask - 1) / kRowTask >= threads && (B <= 32 || w_bytes <= (int64_t(512) << 10));
}

// step_rows(step, r0, r1) for steps [s0, s1) in order, on rows [0, B): all rows at once (its own calls may
// spread each step over the threads), or, with `split`, threads each running their own kRowTask-aligned rows
// through every step.
template <typename F>
void run_steps(int64_t B, int64_t s0, int64_t s1, const F& step_rows, bool split) {
  if (!split) {
    for (int64_t step = s0; step < s1; ++step) step_rows(step, 0, B);
    return;
  }
  at::parallel_for(0, (B + kRowTask - 1) / kRowTask, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t step = s0; step < s1; ++step) step_rows(step, b0 * kRowTask, std::min(B, b1 * kRowTask));
  });
}

// Rows of gates a chunk of steps aims for: the chunk's input projection is still in cache when its steps
// consume it, and inference needs only this much scratch instead of a whole-sequence workspace.
constexpr int64_t kChunkBytes = int64_t(1) << 20;

// The rows of h_{t-1} each step consumed, as one [N, P] matrix, so dW_hh is a single GEMM.
template <typename scalar_t>
void gather_prev_hidden(const SeqLayout& seq, int64_t P, const scalar_t* out, int64_t ld_out, const scalar_t* h0,
                        scalar_t* hprev) {
  for (int64_t t = 0; t < seq.T; ++t) {
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    const int64_t bs = seq.batch_sizes[t];
    scalar_t* dst = hprev + seq.offsets[t] * P;
    if (n_prev > 0) copy_rows(dst, P, out + seq.offsets[prev] * ld_out, ld_out, n_prev, P);
    copy_rows(dst + n_prev * P, P, h0 + n_prev * P, P, bs - n_prev, P);
  }
}

inline void check_cpu_dtype(const Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), "lstm_fused: expected CPU tensors, got ", input.device());
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
                   "lstm_fused: the CPU kernels support float32 and float64, got ", input.scalar_type());
}

}  // namespace cpu
}  // namespace lstm_fused
