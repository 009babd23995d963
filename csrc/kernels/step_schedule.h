// The per-step kernels' schedule, written once (kernels/block_exec.h says how the GPU and the CPU emulation run
// it). One launch per time step covers every direction of a layer: block (bx, by, bz) owns kJT units (or output
// columns) × kBT rows of direction bz; blocks past that direction's rows leave before any barrier.
#pragma once

#include "kernels/block_exec.h"
#include "kernels/gru_step_phases.h"
#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace cuda_step {

static_assert(kThreads == kBlockThreads, "the step kernels run kBlockThreads-thread blocks");

template <typename A, int NG>
struct TileAcc {
  A v[NG];
};

// A block's reduction over k_len in kKT-wide tiles (stage both operands → barrier → accumulate → barrier), then
// the epilogue on the accumulators: load(tid, k0, smem), epilogue(tx, ty, acc).
template <int NG, typename A, typename Exec, typename Load, typename Epilogue>
LF_HOST_DEVICE void tile_reduce_block(TileSmem<A, NG>& smem, int64_t k_len, Exec& ex, const Load& load,
                                      const Epilogue& epilogue) {
  typename Exec::template PerThread<TileAcc<A, NG>> acc;
  ex.threads([&](int tid) {
    for (int g = 0; g < NG; ++g) acc[tid].v[g] = A(0);
  });
  for (int64_t k0 = 0; k0 < k_len; k0 += kKT) {
    ex.threads([&](int tid) { load(tid, k0, smem); });
    ex.sync();
    ex.threads([&](int tid) { tile_accumulate(smem, tid % kJT, tid / kJT, acc[tid].v); });
    ex.sync();
  }
  ex.threads([&](int tid) { epilogue(tid % kJT, tid / kJT, acc[tid].v); });
}

template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void lstm_fwd_step_block(const DirectionParams<FwdStepParams<T, A>>& dp, int bx, int by, int bz,
                                        TileSmem<A, 4>& smem, Exec& ex) {
  const FwdStepParams<T, A>& p = dp.dir[bz];
  if (!block_has_rows(p, by)) return;  // this direction has fewer rows at this step
  tile_reduce_block<4, A>(
      smem, fwd_reduction_length(p), ex,
      [&](int tid, int64_t k0, TileSmem<A, 4>& s) { fwd_load_tiles(p, bx, by, tid, k0, s); },
      [&](int tx, int ty, const A(&acc)[4]) { fwd_epilogue(p, bx, by, tx, ty, acc); });
}

template <int kMode, typename T, typename A, typename Exec>
LF_HOST_DEVICE void lstm_bwd_step_block(const DirectionParams<BwdStepParams<T, A>>& dp, int bx, int by, int bz,
                                        TileSmem<A, 1>& smem, Exec& ex) {
  const BwdStepParams<T, A>& p = dp.dir[bz];
  if (!block_has_rows(p, by)) return;
  tile_reduce_block<1, A>(
      smem, kMode == kPointwiseOnly ? 0 : bwd_reduction_length(p, kMode), ex,
      [&](int tid, int64_t k0, TileSmem<A, 1>& s) { bwd_load_tiles(p, bx, by, tid, k0, s); },
      [&](int tx, int ty, const A(&acc)[1]) { bwd_epilogue(p, kMode, bx, by, tx, ty, acc); });
}

// Zoneout of a projected h: pointwise, no shared memory.
template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void proj_zoneout_block(const DirectionParams<ProjZoneoutParams<T, A>>& dp, int bx, int by, int bz,
                                       Exec& ex) {
  const ProjZoneoutParams<T, A>& p = dp.dir[bz];
  if (!block_has_rows(p, by)) return;
  ex.threads([&](int tid) { proj_zoneout_element(p, bx, by, tid % kJT, tid / kJT); });
}

template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void gru_fwd_step_block(const DirectionParams<GruFwdStepParams<T, A>>& dp, int bx, int by, int bz,
                                       TileSmem<A, 3>& smem, Exec& ex) {
  const GruFwdStepParams<T, A>& p = dp.dir[bz];
  if (!block_has_rows(p, by)) return;
  tile_reduce_block<3, A>(
      smem, gru_fwd_reduction_length(p), ex,
      [&](int tid, int64_t k0, TileSmem<A, 3>& s) { gru_fwd_load_tiles(p, bx, by, tid, k0, s); },
      [&](int tx, int ty, const A(&acc)[3]) { gru_fwd_epilogue(p, bx, by, tx, ty, acc); });
}

template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void gru_bwd_step_block(const DirectionParams<GruBwdStepParams<T, A>>& dp, int bx, int by, int bz,
                                       TileSmem<A, 1>& smem, Exec& ex) {
  const GruBwdStepParams<T, A>& p = dp.dir[bz];
  if (!block_has_rows(p, by)) return;
  tile_reduce_block<1, A>(
      smem, gru_bwd_reduction_length(p), ex,
      [&](int tid, int64_t k0, TileSmem<A, 1>& s) { gru_bwd_load_tiles(p, bx, by, tid, k0, s); },
      [&](int tx, int ty, const A(&acc)[1]) { gru_bwd_epilogue(p, bx, by, tx, ty, acc); });
}

}  // namespace cuda_step
}  // namespace lstm_fused
