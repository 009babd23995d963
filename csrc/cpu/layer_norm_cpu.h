// Layer-normalised cells on the CPU: the entry points the LSTM and GRU drivers call, over the row passes of
// cpu/layer_norm_rows.h. float goes to the per-ISA clones of layer_norm_rows_f32.cpp, double inlines here. Each row's
// sums are taken in a fixed order (row_sums), so the results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <type_traits>

#include "cpu/cpu_common.h"
#include "cpu/layer_norm_rows.h"

namespace lstm_fused {
namespace cpu {

// Rows per parallel chunk of a row pass over rows of G gate products: about kPointwiseGrain elements.
inline int64_t ln_row_grain(int64_t G) { return std::max<int64_t>(1, kPointwiseGrain / G); }

// One GRU product row normalised and scaled (gru_ln_row_impl).
template <typename scalar_t>
void gru_ln_row(scalar_t* row, int64_t G, const scalar_t* gamma, const scalar_t* bias, scalar_t* ws_xhat,
                scalar_t* ws_rstd) {
  if constexpr (std::is_same_v<scalar_t, float>)
    gru_ln_row_f32(row, G, gamma, bias, ws_xhat, ws_rstd);
  else
    gru_ln_row_impl(row, G, gamma, bias, ws_xhat, ws_rstd);
}

// The gradient reaching a row's x of y = γ ⊙ x̂ from dy (ln_backward_row_impl).
template <typename scalar_t>
void ln_backward_row(const scalar_t* dy, const scalar_t* gamma, const scalar_t* xhat, scalar_t rstd, int64_t n,
                     scalar_t* out) {
  if constexpr (std::is_same_v<scalar_t, float>)
    ln_backward_row_f32(dy, gamma, xhat, rstd, n, out);
  else
    ln_backward_row_impl(dy, gamma, xhat, rstd, n, out);
}

template <typename scalar_t>
void lstm_ln_fwd_rows(const LstmFwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<scalar_t, float>)
    lstm_ln_fwd_range_f32(p, r0, r1);
  else
    lstm_ln_fwd_range(p, r0, r1);
}

template <typename scalar_t>
void lstm_ln_bwd_rows(const LstmBwdStep<scalar_t>& p, int64_t r0, int64_t r1) {
  if constexpr (std::is_same_v<scalar_t, float>)
    lstm_ln_bwd_range_f32(p, r0, r1);
  else
    lstm_ln_bwd_range(p, r0, r1);
}

// The input side's layer norm over rows [0, rows) of a chunk (the raw products at `rows_base`, row stride ld): x̂ in
// place and its rstd at column rstd_col of the row.
template <typename scalar_t>
void ln_normalize_rows(scalar_t* rows_base, int64_t ld, int64_t rows, int64_t n, int64_t rstd_col) {
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    if constexpr (std::is_same_v<scalar_t, float>)
      ln_normalize_range_f32(rows_base, ld, r0, r1, n, rstd_col);
    else
      ln_normalize_range(rows_base, ld, r0, r1, n, rstd_col);
  });
}

}  // namespace cpu
}  // namespace lstm_fused
