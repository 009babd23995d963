// The float pointwise passes (LSTM and GRU), compiled once per x86-64 level (see LF_CPU_MULTIVERSION).
#include "cpu/gru_cpu_pointwise.h"
#include "cpu/lstm_cpu_pointwise.h"

namespace lstm_fused {

LF_CPU_MULTIVERSION void lstm_fwd_pointwise_f32(const LstmFwdStep<float>& p, int64_t begin, int64_t end) {
  lstm_fwd_pointwise(p, begin, end);
}

LF_CPU_MULTIVERSION void lstm_bwd_pointwise_f32(const LstmBwdStep<float>& p, int64_t begin, int64_t end) {
  lstm_bwd_pointwise(p, begin, end);
}

LF_CPU_MULTIVERSION void gru_fwd_pointwise_f32(const GruFwdStep<float>& p, int64_t begin, int64_t end) {
  gru_fwd_pointwise(p, begin, end);
}

LF_CPU_MULTIVERSION void gru_bwd_pointwise_f32(const GruBwdStep<float>& p, int64_t begin, int64_t end) {
  gru_bwd_pointwise(p, begin, end);
}

}  // namespace lstm_fused
