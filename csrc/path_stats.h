// Which recurrent path each CUDA (or emulated) layer pass took (forward and backward apart), counted per process: tests check that a forced or
// automatic choice really ran the kernel they mean to test, where a silent fallback would otherwise pass.
#pragma once

namespace lstm_fused {

enum class RecurrentPath : int { kPersistent = 0, kWavefront = 1, kStep = 2, kGemmStep = 3, kCount = 4 };

// Thread-safe; read back (in this order) by the op lstm_fused::_path_counts().
void count_path(RecurrentPath p);

}  // namespace lstm_fused
