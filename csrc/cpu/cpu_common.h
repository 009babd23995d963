// Helpers shared by the CPU layer bindings (LSTM and GRU): sizes of parallel work, row copies, deterministic
// reductions and the gather of h_{t-1} rows.
#pragma once

#include <cstring>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../lstm_params.h"

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

// Rows of gates a chunk of steps aims for: the chunk's input projection is still in cache when its steps
// consume it, and inference needs only this much scratch instead of a whole-sequence workspace.
constexpr int64_t kChunkBytes = int64_t(1) << 20;

// Deterministic column sums of a [rows, cols] matrix: each column summed in row order, in double.
template <typename scalar_t>
void column_sums(const scalar_t* m, int64_t rows, int64_t cols, scalar_t* out) {
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(c1 - c0, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* row = m + r * cols;
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += row[c];
    }
    for (int64_t c = c0; c < c1; ++c) out[c] = static_cast<scalar_t>(acc[c - c0]);
  });
}

// The rows of h_{t-1} each step consumed, as one [N, P] matrix, so dW_hh is a single GEMM.
template <typename scalar_t>
void gather_prev_hidden(const SeqLayout& L, int64_t P, const scalar_t* out, int64_t ld_out, const scalar_t* h0,
                        scalar_t* hprev) {
  for (int64_t t = 0; t < L.T; ++t) {
    int64_t prev, n_prev;
    L.prev_rows(t, prev, n_prev);
    const int64_t bs = L.batch_sizes[t];
    scalar_t* dst = hprev + L.offsets[t] * P;
    if (n_prev > 0) copy_rows(dst, P, out + L.offsets[prev] * ld_out, ld_out, n_prev, P);
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
