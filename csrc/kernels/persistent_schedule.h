// The persistent kernel's schedule, written once (kernels/block_exec.h says how the GPU and the CPU emulation run
// it): a block loads its resident weight slice once (persistent_block_init), then for each time step runs
// persistent_block_step; a grid-wide barrier separates the steps (cooperative groups on the GPU; the emulation
// finishes every block's step before the next). Blocks [d·nb, (d+1)·nb) serve lane d: a direction of a layer,
// or a layer of a stack.
#pragma once

#include "kernels/block_exec.h"
#include "kernels/persistent_mma_phases.h"

namespace lstm_fused {
namespace persistent {

static_assert(kThreads == kBlockThreads && kWarps == kBlockWarps, "the persistent kernel runs kBlockThreads threads");

// This step's parameters, copied into shared memory by the whole block: the phase functions read their fields
// for every element, and from global memory (unrestricted pointers) each read would be a dependent load.
template <typename Step, typename Exec>
LF_HOST_DEVICE void fetch_step(const Step* src, Step* dst, Exec& ex) {
  static_assert(sizeof(Step) % sizeof(unsigned long long) == 0 && sizeof(Step) <= kStaticSmem, "step params");
  const auto* from = reinterpret_cast<const unsigned long long*>(src);
  auto* to = reinterpret_cast<unsigned long long*>(dst);
  ex.threads([&](int tid) {
    for (int i = tid; i < int(sizeof(Step) / sizeof(unsigned long long)); i += kThreads) to[i] = from[i];
  });
  ex.sync();
}

// Once per launch: block blk's slice of the weights into its shared memory `smem` (plan.smem bytes).
template <typename R, typename T, typename A, typename Exec>
LF_HOST_DEVICE void persistent_block_init(const Args<typename R::Step>& a, int64_t blk, unsigned char* smem,
                                          Exec& ex) {
  const Plan& pl = a.plan;
  const Smem<T, A> s = carve<T, A>(pl, smem);
  ex.threads([&](int tid) { load_resident<R>(pl, a.steps[blk / pl.nb], blk % pl.nb, tid, s); });
  ex.sync();
}

template <typename R, typename T, typename A>
struct PartialSums {
  A v[kRows][R::NG];
};

// Step `step` of block blk: its units' recurrent products against the resident slice, then their cell update.
// step_p: the block's copy of the step parameters (shared memory on the GPU).
template <typename R, typename T, typename A, typename Exec>
LF_HOST_DEVICE void persistent_block_step(const Args<typename R::Step>& a, int64_t step, int64_t blk,
                                          unsigned char* smem, typename R::Step& step_p, Exec& ex) {
  const Plan& pl = a.plan;
  const int64_t bx = blk % pl.nb;
  fetch_step(&a.steps[step * a.count + blk / pl.nb], &step_p, ex);
  const typename R::Step& p = step_p;
  if constexpr (kHasMmaPath<R, T>) {
    if (pl.mma) {  // grid-uniform
      const MmaSmem<T> m = carve_mma<T>(pl, smem);
      const MmaTiling mt = mma_tiling<R::NG>(pl, p.rows);
      const bool once = pl.kc >= pl.kp;  // the whole k range staged at once: stage it once per step
      if (once) {
        ex.threads([&](int tid) { mma_stage_left<R>(pl, p, 0, tid, m); });
        ex.sync();
      }
      typename Exec::template PerWarp<MmaAcc<R::NG>> acc;
      for (int64_t r0 = 0; r0 < mt.units; r0 += kWarps) {  // block-uniform; a warp owns one unit per round
        ex.warps([&](int warp) { mma_zero(acc[warp]); });
        for (int64_t k0 = 0; k0 < pl.kp; k0 += pl.kc) {
          if (!once) {
            ex.threads([&](int tid) { mma_stage_left<R>(pl, p, k0, tid, m); });
            ex.sync();
          }
          ex.warps([&](int warp) {
            if (r0 + warp < mt.units) mma_accumulate<R::NG>(pl, mt, r0 + warp, k0, m, acc[warp]);
          });
          if (!once) ex.sync();
        }
        ex.warps([&](int warp) {
          if (r0 + warp < mt.units) mma_store<R::NG>(r0 + warp, m, acc[warp]);
        });
      }
      ex.sync();
      ex.threads([&](int tid) { mma_reduce_epilogue<R>(pl, p, mt, bx, tid, m); });
      ex.sync();
      return;
    }
  }
  const Smem<T, A> s = carve<T, A>(pl, smem);
  const StepTiling st = step_tiling(pl.kj, p.rows);
  typename Exec::template PerThread<PartialSums<R, T, A>> acc;
  for (int64_t r0 = 0; r0 < st.items; r0 += st.groups) {
    ex.threads([&](int tid) {
      for (int r = 0; r < kRows; ++r)
        for (int g = 0; g < R::NG; ++g) acc[tid].v[r][g] = A(0);
    });
    for (int64_t k0 = 0; k0 < R::K(p); k0 += pl.kc) {
      ex.threads([&](int tid) { stage_left<R>(pl, p, k0, tid, s); });
      ex.sync();
      ex.threads([&](int tid) { accumulate<R>(pl, p, st, r0, k0, tid, s, acc[tid].v); });
      ex.sync();
    }
    ex.threads([&](int tid) { store_partials<R::NG>(tid, s, acc[tid].v); });
    ex.sync();
    ex.threads([&](int tid) { reduce_epilogue<R>(pl, p, st, r0, bx, tid, s); });
    ex.sync();
  }
}

}  // namespace persistent
}  // namespace lstm_fused
