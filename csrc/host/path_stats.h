// Which recurrent path each CUDA (or emulated) layer pass took (forward and backward apart), counted per process in
// test builds (LSTM_FUSED_TESTING): tests check that a forced or automatic choice really ran the kernel they mean to
// test, where a silent fallback would otherwise pass. A product build counts nothing.
#pragma once

namespace lstm_fused {

enum class RecurrentPath : int { kPersistent = 0, kWavefront = 1, kStep = 2, kGemmStep = 3, kCount = 4 };

#ifdef LSTM_FUSED_TESTING
// Thread-safe; read back (in this order) by the op lstm_fused_testing::path_counts() (testing/path_counts.cpp).
void count_path(RecurrentPath p);
#else
inline void count_path(RecurrentPath) {}
#endif

}  // namespace lstm_fused
