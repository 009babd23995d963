// The float pointwise passes with zoneout (LSTM and GRU), compiled once per x86-64 level (see LF_CPU_MULTIVERSION).
// A translation unit of their own: next to the passes without zoneout (cpu/lstm_cpu_pointwise.cpp) they changed the
// compiler's inlining choices there, and with them the rounding of layers that do not use zoneout.
#include "cpu/gru_cpu_pointwise.h"
#include "cpu/lstm_cpu_pointwise.h"

namespace lstm_fused {

LF_CPU_MULTIVERSION void lstm_fwd_pointwise_zoneout_f32(const LstmFwdStep<float>& p, int64_t begin, int64_t end) {
  lstm_fwd_pointwise_zoneout(p, begin, end);
}

LF_CPU_MULTIVERSION void lstm_bwd_pointwise_zoneout_f32(const LstmBwdStep<float>& p, int64_t begin, int64_t end) {
  lstm_bwd_pointwise_zoneout(p, begin, end);
}

LF_CPU_MULTIVERSION void gru_fwd_pointwise_zoneout_f32(const GruFwdStep<float>& p, int64_t begin, int64_t end) {
  gru_fwd_pointwise<float, true>(p, begin, end);
}

LF_CPU_MULTIVERSION void gru_bwd_pointwise_zoneout_f32(const GruBwdStep<float>& p, int64_t begin, int64_t end) {
  gru_bwd_pointwise<float, true>(p, begin, end);
}

}  // namespace lstm_fused
