// The counters behind count_path (host/path_stats.h) and the op that reads them.
#include "host/path_stats.h"

#include <atomic>
#include <cstdint>
#include <vector>

#include <torch/library.h>

namespace lstm_fused {
namespace {

std::atomic<int64_t> g_counts[static_cast<int>(RecurrentPath::kCount)];

std::vector<int64_t> path_counts() {
  std::vector<int64_t> out;
  for (const auto& c : g_counts) out.push_back(c.load());
  return out;
}

}  // namespace

void count_path(RecurrentPath p) { g_counts[static_cast<int>(p)].fetch_add(1); }

TORCH_LIBRARY_FRAGMENT(lstm_fused_testing, m) {
  // Layer passes run so far by each recurrent path (forward and backward apart; a wavefront stack counts once):
  // [persistent, wavefront stack, per-step, per-step GEMM].
  m.def("path_counts() -> int[]", &path_counts);
}

}  // namespace lstm_fused
