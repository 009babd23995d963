// Deterministic reductions over every row of a layer's gradients (the biases', the GRU's layer-norm gains'; the
// slots a layer-normalised LSTM summed its own in): one pass over a matrix for both sums that read it, vectorised
// per x86-64 level (column_sums_f32.cpp).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu/lstm_cpu_pointwise.h"  // LF_ALWAYS_INLINE, LF_CPU_MULTIVERSION

namespace lstm_fused {
namespace cpu {

// Reductions over every row of a [rows, cols] matrix a, in one pass over it: its column sums and its column dot
// sums with a matrix b of the same shape (a bias's gradient, and a layer-norm gain's, which reads the same pre-norm
// gradient rows). Each column is summed in row order, in double, whatever the thread count and whichever sums
// share the pass.
template <typename scalar_t>
struct ColumnSums {
  const scalar_t* a = nullptr;  // [rows, cols], row stride lda
  int64_t lda = 0;
  scalar_t* sum = nullptr;      // [cols] Σ_r a, or nullptr
  const scalar_t* b = nullptr;  // [rows, cols], row stride ldb, or nullptr
  int64_t ldb = 0;
  scalar_t* dot = nullptr;      // [cols] Σ_r a ⊙ b, or nullptr
};

// Columns [c0, c1) (acc: 2·(c1 − c0) doubles of scratch), the pass's sums fixed at compile time so gcc vectorises
// it across columns. A float product is exact in double, so a fused multiply-add gives the bits the separate
// multiply and add do, and every ISA's clone the same sums (double itself is compiled for the baseline ISA only).
template <typename scalar_t, bool kSum, bool kDot>
LF_ALWAYS_INLINE void column_sums_pass(const ColumnSums<scalar_t>& q, int64_t rows, int64_t c0, int64_t c1,
                                      double* __restrict acc) {
  const int64_t n = c1 - c0;
  double* __restrict s = acc;
  double* __restrict dt = acc + n;
  for (int64_t c = 0; c < 2 * n; ++c) acc[c] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict ar = q.a + r * q.lda + c0;
    const scalar_t* __restrict br = kDot ? q.b + r * q.ldb + c0 : nullptr;
    for (int64_t c = 0; c < n; ++c) {
      const double v = ar[c];
      if constexpr (kSum) s[c] += v;
      if constexpr (kDot) dt[c] += v * double(br[c]);
    }
  }
  for (int64_t c = 0; c < n; ++c) {
    if constexpr (kSum) q.sum[c0 + c] = static_cast<scalar_t>(s[c]);
    if constexpr (kDot) q.dot[c0 + c] = static_cast<scalar_t>(dt[c]);
  }
}

template <typename scalar_t>
LF_ALWAYS_INLINE void column_sums_range(const ColumnSums<scalar_t>& q, int64_t rows, int64_t c0, int64_t c1,
                                       double* acc) {
  if (q.sum && q.dot) column_sums_pass<scalar_t, true, true>(q, rows, c0, c1, acc);
  else if (q.sum) column_sums_pass<scalar_t, true, false>(q, rows, c0, c1, acc);
  else if (q.dot) column_sums_pass<scalar_t, false, true>(q, rows, c0, c1, acc);
}

// The float pass compiled per x86-64 level (column_sums_f32.cpp).
void column_sums_range_f32(const ColumnSums<float>& q, int64_t rows, int64_t c0, int64_t c1, double* acc);

// The sums of q over `rows` rows of `cols` columns.
template <typename scalar_t>
void column_sums(const ColumnSums<scalar_t>& q, int64_t rows, int64_t cols) {
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(2 * (c1 - c0));
    if constexpr (std::is_same_v<scalar_t, float>)
      column_sums_range_f32(q, rows, c0, c1, acc.data());
    else
      column_sums_range(q, rows, c0, c1, acc.data());
  });
}

// Deterministic column sums of a [rows, cols] matrix.
template <typename scalar_t>
void column_sums(const scalar_t* m, int64_t rows, int64_t cols, scalar_t* out) {
  ColumnSums<scalar_t> q;
  q.a = m;
  q.lda = cols;
  q.sum = out;
  column_sums(q, rows, cols);
}

}  // namespace cpu
}  // namespace lstm_fused
