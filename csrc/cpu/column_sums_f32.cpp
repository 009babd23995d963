// The float column sums (the biases' and layer-norm parameters' gradients: reductions over every row), compiled
// once per x86-64 level: the baseline build sums two doubles at a time, AVX-512 eight. Same order, same bits.
#include "cpu/column_sums.h"

namespace lstm_fused {
namespace cpu {

LF_CPU_MULTIVERSION void column_sums_range_f32(const ColumnSums<float>& q, int64_t rows, int64_t c0, int64_t c1,
                                               double* acc) {
  column_sums_range(q, rows, c0, c1, acc);
}

}  // namespace cpu
}  // namespace lstm_fused
