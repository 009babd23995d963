// The float layer-norm row passes (LSTM and GRU), compiled once per x86-64 level (see LF_CPU_MULTIVERSION). A
// translation unit of their own, so the passes without layer norm keep the code (and rounding) they had.
#include "cpu/layer_norm_rows.h"

namespace lstm_fused {
namespace cpu {

LF_CPU_MULTIVERSION void ln_normalize_range_f32(float* rows_base, int64_t ld, int64_t r0, int64_t r1, int64_t n,
                                                int64_t rstd_col) {
  ln_normalize_range(rows_base, ld, r0, r1, n, rstd_col);
}

LF_CPU_MULTIVERSION void gru_ln_row_f32(float* row, int64_t G, const float* gamma, const float* bias, float* ws_xhat,
                                        float* ws_rstd) {
  gru_ln_row_impl(row, G, gamma, bias, ws_xhat, ws_rstd);
}

LF_CPU_MULTIVERSION void ln_backward_row_f32(const float* dy, const float* gamma, const float* xhat, float rstd,
                                             int64_t n, float* out) {
  ln_backward_row_impl(dy, gamma, xhat, rstd, n, out);
}

LF_CPU_MULTIVERSION void lstm_ln_fwd_range_f32(const LstmFwdStep<float>& p, int64_t r0, int64_t r1) {
  lstm_ln_fwd_range(p, r0, r1);
}

LF_CPU_MULTIVERSION void lstm_ln_bwd_range_f32(const LstmBwdStep<float>& p, int64_t r0, int64_t r1) {
  lstm_ln_bwd_range(p, r0, r1);
}

}  // namespace cpu
}  // namespace lstm_fused
