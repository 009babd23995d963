// Deterministic reductions over every row of a layer's gradients (the biases', the layer-norm parameters'): one
// pass over a matrix for all the sums that read it, vectorised per x86-64 level (column_sums_f32.cpp).
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
// sums with up to two matrices b[i] of the same shape (bias gradients, and the layer-norm gains' gradients, which
// read the same pre-norm gradient rows). Each column is summed in row order, in double, whatever the thread count
// and whichever sums share the pass.
template <typename scalar_t>
struct ColumnSums {
  const scalar_t* a = nullptr;                       // [rows, cols], row stride lda
  int64_t lda = 0;
  scalar_t* sum = nullptr;                           // [cols] Σ_r a, or nullptr
  const scalar_t* b[2] = {nullptr, nullptr};         // [rows, cols], row strides ldb, or nullptr
  int64_t ldb[2] = {0, 0};
  scalar_t* dot[2] = {nullptr, nullptr};             // [cols] Σ_r a ⊙ b[i]
};

// Columns [c0, c1) (acc: 3·(c1 − c0) doubles of scratch), the pass's sums fixed at compile time so gcc vectorises
// it across columns. A float product is exact in double, so a fused multiply-add gives the bits the separate
// multiply and add do, and every ISA's clone the same sums (double itself is compiled for the baseline ISA only).
template <typename scalar_t, bool kSum, int kDots>
LF_ALWAYS_INLINE void column_sums_pass(const ColumnSums<scalar_t>& q, int64_t rows, int64_t c0, int64_t c1,
                                      double* __restrict acc) {
  const int64_t n = c1 - c0;
  double* __restrict s = acc;
  double* __restrict d0 = acc + n;
  double* __restrict d1 = acc + 2 * n;
  for (int64_t c = 0; c < 3 * n; ++c) acc[c] = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* __restrict ar = q.a + r * q.lda + c0;
    const scalar_t* __restrict b0 = kDots > 0 ? q.b[0] + r * q.ldb[0] + c0 : nullptr;
    const scalar_t* __restrict b1 = kDots > 1 ? q.b[1] + r * q.ldb[1] + c0 : nullptr;
    for (int64_t c = 0; c < n; ++c) {
      const double v = ar[c];
      if constexpr (kSum) s[c] += v;
      if constexpr (kDots > 0) d0[c] += v * double(b0[c]);
      if constexpr (kDots > 1) d1[c] += v * double(b1[c]);
    }
  }
  for (int64_t c = 0; c < n; ++c) {
    if constexpr (kSum) q.sum[c0 + c] = static_cast<scalar_t>(s[c]);
    if constexpr (kDots > 0) q.dot[0][c0 + c] = static_cast<scalar_t>(d0[c]);
    if constexpr (kDots > 1) q.dot[1][c0 + c] = static_cast<scalar_t>(d1[c]);
  }
}

template <typename scalar_t>
LF_ALWAYS_INLINE void column_sums_range(const ColumnSums<scalar_t>& q, int64_t rows, int64_t c0, int64_t c1,
                                       double* acc) {
  const int dots = (q.dot[0] != nullptr) + (q.dot[1] != nullptr);
  if (q.sum) {
    if (dots == 0) column_sums_pass<scalar_t, true, 0>(q, rows, c0, c1, acc);
    else if (dots == 1) column_sums_pass<scalar_t, true, 1>(q, rows, c0, c1, acc);
    else column_sums_pass<scalar_t, true, 2>(q, rows, c0, c1, acc);
  } else {
    if (dots == 1) column_sums_pass<scalar_t, false, 1>(q, rows, c0, c1, acc);
    else if (dots == 2) column_sums_pass<scalar_t, false, 2>(q, rows, c0, c1, acc);
  }
}

// The float pass compiled per x86-64 level (column_sums_f32.cpp).
void column_sums_range_f32(const ColumnSums<float>& q, int64_t rows, int64_t c0, int64_t c1, double* acc);

// The sums of q over `rows` rows of `cols` columns. Dots fill dot[0] first.
template <typename scalar_t>
void column_sums(const ColumnSums<scalar_t>& q, int64_t rows, int64_t cols) {
  TORCH_INTERNAL_ASSERT(q.dot[1] == nullptr || q.dot[0] != nullptr, "lstm_fused: column_sums fills dot[0] first");
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(3 * (c1 - c0));
    if constexpr (std::is_same_v<scalar_t, float>)
      column_sums_range_f32(q, rows, c0, c1, acc.data());
    else
      column_sums_range(q, rows, c0, c1, acc.data());
  });
}

// outs[c] = Σ_b sums[b, c] over the `slots` rows of a [slots, outs.size()] double matrix, in row order (columns
// whose out is nullptr are skipped): the per-batch-slot sums a loop kept, summed in a fixed order.
template <typename scalar_t>
void slot_sums(const double* sums, int64_t slots, const std::vector<scalar_t*>& outs) {
  const int64_t cols = static_cast<int64_t>(outs.size());
  at::parallel_for(0, cols, 256, [&](int64_t c0, int64_t c1) {
    std::vector<double> acc(c1 - c0, 0.0);
    for (int64_t b = 0; b < slots; ++b)
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += sums[b * cols + c];
    for (int64_t c = c0; c < c1; ++c)
      if (outs[c]) *outs[c] = static_cast<scalar_t>(acc[c - c0]);
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
