// The per-step kernels' schedule, written once (kernels/block_exec.h says how the GPU and the CPU emulation run
// it). One launch per time step covers every direction of a layer: block (bx, by, bz) owns kJT units (or output
// columns) × kBT rows of direction bz; blocks past that direction's rows leave before any barrier.
#pragma once

#include "kernels/block_exec.h"
#include "kernels/gru_step_phases.h"
#include "kernels/layer_norm_phases.h"
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

// ---- layer norm: a block per row (kernels/layer_norm_phases.h) ------------------------------------------------------
// Shared memory of the row kernels: NM rows of per-thread partial sums.
template <typename A, int NM>
struct RowSums {
  A part[NM][kBlockThreads];
};
template <typename A, int NS>
struct SumSet {
  A v[NS];
};
constexpr int kRowSumsMax = 4;  // the most sums a row kernel takes at once (the LSTM backward's two products)

// A phase over a row of n elements: thread tid takes elements k ≡ tid (mod kBlockThreads), in order: f(tid, k).
template <typename Exec, typename F>
LF_HOST_DEVICE void row_phase(Exec& ex, int64_t n, const F& f) {
  ex.threads([&](int tid) {
    for (int64_t k = tid; k < n; k += kBlockThreads) f(tid, k);
  });
}

// NS sums over a row of n elements, in every thread's `total`: each thread adds its elements' terms (term(tid, k, acc)
// adds element k's to acc) in order, then a fixed tree adds the partials, so every run adds the same numbers in the same
// order. `term` is the phase's only work on those elements, so it may write them too.
template <int NS, typename A, int NM, typename Exec, typename Term>
LF_HOST_DEVICE void block_row_sums(RowSums<A, NM>& sm, int64_t n, Exec& ex, const Term& term,
                                   typename Exec::template PerThread<SumSet<A, NS>>& total) {
  static_assert(NS <= NM, "more sums than shared rows");
  ex.threads([&](int tid) {
    A acc[NS];
    for (int s = 0; s < NS; ++s) acc[s] = A(0);
    for (int64_t k = tid; k < n; k += kBlockThreads) term(tid, k, acc);
    for (int s = 0; s < NS; ++s) sm.part[s][tid] = acc[s];
  });
  ex.sync();
  for (int w = kBlockThreads / 2; w > 0; w /= 2) {
    ex.threads([&](int tid) {
      if (tid < w)
        for (int s = 0; s < NS; ++s) sm.part[s][tid] += sm.part[s][tid + w];
    });
    ex.sync();
  }
  ex.threads([&](int tid) {
    for (int s = 0; s < NS; ++s) total[tid].v[s] = sm.part[s][0];
  });
  ex.sync();  // every thread has its totals: the partials' rows are free again
}

// Mean and rstd of a row of n values x(k) (two passes, as the CPU's: the mean, then the centred squares).
template <typename A, int NM, typename Exec, typename X>
LF_HOST_DEVICE void block_row_stats(RowSums<A, NM>& sm, int64_t n, Exec& ex, const X& x,
                                    typename Exec::template PerThread<RowStats<A>>& st) {
  typename Exec::template PerThread<SumSet<A, 1>> s;
  block_row_sums<1>(sm, n, ex, [&](int, int64_t k, A(&acc)[1]) { acc[0] += x(k); }, s);
  ex.threads([&](int tid) { st[tid].mean = s[tid].v[0] / A(n); });
  block_row_sums<1>(sm, n, ex, [&](int tid, int64_t k, A(&acc)[1]) {
    const A d = x(k) - st[tid].mean;
    acc[0] += d * d;
  }, s);
  ex.threads([&](int tid) { st[tid].rstd = ln_rstd(s[tid].v[0], n); });
}

// A row's norm (the input side, the GRU's recurrent product): block (bx, ·, bz) takes row bx of set bz.
template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void row_norm_block(const RowLaunch<RowNormParams<T, A>>& l, int64_t bx, int bz,
                                   RowSums<A, kRowSumsMax>& sm, Exec& ex) {
  const RowNormParams<T, A>& p = l.set[bz];
  const int64_t r = bx;
  if (r >= p.rows) return;  // a shorter set (block-uniform, before any barrier)
  typename Exec::template PerThread<RowStats<A>> st;
  block_row_stats(sm, p.n, ex, [&](int64_t k) { return row_norm_x(p, r, k); }, st);
  row_phase(ex, p.n, [&](int tid, int64_t k) { row_norm_element(p, r, k, st[tid]); });
}

template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void row_norm_bwd_block(const RowLaunch<RowNormBwdParams<T, A>>& l, int64_t bx, int bz,
                                       RowSums<A, kRowSumsMax>& sm, Exec& ex) {
  const RowNormBwdParams<T, A>& p = l.set[bz];
  const int64_t r = bx;
  if (r >= p.rows) return;
  typename Exec::template PerThread<SumSet<A, 2>> s;
  block_row_sums<2>(sm, p.n, ex, [&](int, int64_t k, A(&acc)[2]) {
    const A d = row_norm_dxhat(p, r, k);
    acc[0] += d;
    acc[1] += d * row_norm_xhat(p, r, k);
  }, s);
  row_phase(ex, p.n, [&](int tid, int64_t k) { row_norm_bwd_element(p, r, k, s[tid].v[0], s[tid].v[1]); });
}

// The layer-norm LSTM's forward step: block (bx, ·, bz) takes row bx of direction bz. The recurrent product's norm,
// the cells, c̃'s norm and h (the statistics' passes read only what the same thread wrote, so no barrier before them).
template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void lstm_ln_fwd_step_block(const DirectionParams<FwdStepParams<T, A>>& dp, int64_t bx, int bz,
                                           RowSums<A, kRowSumsMax>& sm, Exec& ex) {
  const FwdStepParams<T, A>& p = dp.dir[bz];
  const int64_t b = bx;
  if (b >= p.rows) return;
  const LstmLnCols cols = ln_cols(p);
  const A* w = p.ws + b * p.ld_ws;
  typename Exec::template PerThread<RowStats<A>> st;
  block_row_stats(sm, cols.G, ex, [&](int64_t k) { return p.rec[b * cols.G + k]; }, st);
  row_phase(ex, cols.G, [&](int tid, int64_t k) { lstm_ln_fwd_xhat(p, b, k, st[tid]); });
  ex.sync();  // a unit's gates read x̂_hh columns other threads wrote
  row_phase(ex, p.H, [&](int, int64_t j) { lstm_ln_fwd_cell(p, b, j); });
  block_row_stats(sm, p.H, ex, [&](int64_t j) { return w[cols.G + j]; }, st);
  row_phase(ex, p.H, [&](int tid, int64_t j) { lstm_ln_fwd_hidden(p, b, j, st[tid]); });
}

// Its backward: h's and c's gradients with c's norm (unit phases), then both products' norms (gate-column phases).
template <typename T, typename A, typename Exec>
LF_HOST_DEVICE void lstm_ln_bwd_step_block(const DirectionParams<BwdStepParams<T, A>>& dp, int64_t bx, int bz,
                                           RowSums<A, kRowSumsMax>& sm, Exec& ex) {
  const BwdStepParams<T, A>& p = dp.dir[bz];
  const int64_t b = bx;
  if (b >= p.rows) return;
  const int64_t G = ln_cols(p).G;
  typename Exec::template PerThread<SumSet<A, 2>> c_sums;
  block_row_sums<2>(sm, p.H, ex, [&](int, int64_t j, A(&acc)[2]) { lstm_ln_bwd_hidden(p, b, j, acc[0], acc[1]); },
                    c_sums);
  row_phase(ex, p.H, [&](int tid, int64_t j) { lstm_ln_bwd_cell(p, b, j, c_sums[tid].v[0], c_sums[tid].v[1]); });
  ex.sync();  // every gate column's dpre is written
  typename Exec::template PerThread<SumSet<A, 4>> s;
  block_row_sums<4>(sm, G, ex, [&](int, int64_t k, A(&acc)[4]) { lstm_ln_bwd_product_terms(p, b, k, acc); }, s);
  row_phase(ex, G, [&](int tid, int64_t k) { lstm_ln_bwd_products(p, b, k, s[tid].v); });
}

}  // namespace cuda_step
}  // namespace lstm_fused
