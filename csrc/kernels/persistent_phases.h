// The persistent kernel's work (LSTM, its variants and the GRU), as __host__ __device__ functions of (block,
// thread) indices, and its plan. kernels/persistent_schedule.h puts the phases in order between barriers; the GPU
// runs that schedule in cuda/persistent_kernels.cu (one cooperative launch for the whole sequence), the CPU
// emulation in testing/cuda_emulation.cpp.
//
// Each block owns kj hidden units of one direction and keeps their recurrent weights resident in shared
// memory for all T steps: forward, W_hh's rows of those units' gates [NG·kj, P]; backward, W_hh's columns of
// those units [kj, G]. Per step a block stages the left operand every block needs (h_{t-1}, or dG of the step
// after t) from global memory (L2: other blocks wrote it), reduces it against the resident slice with the
// k range split across lanes, sums the lanes' partials through shared memory in a fixed order, and applies
// the cell math (cell_math.h via the step kernels' epilogues) to its units. A grid-wide barrier then
// publishes its h_t (or dG_t) to the other blocks. The cell state and its gradient never leave the block's
// units, so only the left operand crosses blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/block_exec.h"
#include "kernels/gru_step_phases.h"
#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace persistent {

using cuda_step::acc_t;
using cuda_step::BwdStepParams;
using cuda_step::DirectionParams;
using cuda_step::FwdStepParams;
using cuda_step::GruBwdStepParams;
using cuda_step::GruFwdStepParams;
using cuda_step::to_acc;

constexpr int kThreads = 256;
constexpr int kRows = 4;       // batch rows per work item: a thread keeps kRows × NG accumulators
constexpr int kMaxSplit = 32;  // lanes sharing one work item's reduction (a power of two)
constexpr int64_t kStaticSmem = 512;  // bound on the kernel's static shared memory (a step's parameters), bytes

// ---- plan (host) --------------------------------------------------------------------------------------
// What the device offers a cooperative launch.
struct DeviceLimits {
  int64_t sms = 0;        // multiprocessors
  int64_t smem = 0;       // shared memory a block of the kernel may hold, static and dynamic, bytes
  bool tensor_cores = false;  // bf16/fp16 MMA (sm_80+)
  int64_t static_smem = kStaticSmem;  // of which the kernel declares statically (its step parameters)
};

// Blocks, units per block and shared-memory layout of one persistent launch. Shapes are in elements.
struct Plan {
  bool ok = false;
  const char* why = "";   // when !ok: what does not fit
  int64_t nb = 0;         // blocks per direction (grid = D·nb, one per SM)
  int64_t kj = 0;         // hidden units per block
  int64_t K = 0;          // reduction length: P forward, G backward
  int64_t kp = 0;         // K padded with zero weights (to the MMA k step of 16 on the tensor-core path)
  bool mma = false;       // tensor-core path (kernels/persistent_mma_phases.h): half types, whole K staged
  int64_t mt = 0;         // tensor-core path: M tiles of the resident slice (NG·kj / M)
  int64_t ldw = 0;        // row stride of the resident slice
  int64_t kc = 0;         // k chunk of the staged left operand
  int64_t ldl = 0;        // stride of the staged left operand (float path: per k, it is stored transposed)
  int64_t rows_pad = 0;   // staged rows: B rounded up to kRows
  size_t w_bytes = 0, left_bytes = 0, red_bytes = 0, smem = 0;
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// Regions start on 128-byte boundaries (tensor-core tile loads need 32).
inline size_t align_region(size_t x) { return (x + 127) / 128 * 128; }

// How a step's work spreads over a block: items of (unit, kRows rows), each reduced by `split` lanes; when
// there are more items than thread groups the block takes them in rounds. Block-uniform: it depends on the
// step's row count only.
struct StepTiling {
  int64_t items = 0, split = 1, groups = kThreads;
};
LF_HOST_DEVICE StepTiling step_tiling(int64_t kj, int64_t rows) {
  StepTiling s;
  s.items = kj * ((rows + kRows - 1) / kRows);
  s.split = kMaxSplit;
  while (s.split > 1 && s.items * s.split > kThreads) s.split /= 2;
  s.groups = kThreads / s.split;
  return s;
}

// NG accumulators per (row, unit): 4 (or 3 used, coupled) forward, 1 backward. elem_w: bytes of the storage
// type (the resident weights); elem_a: bytes of the accumulate type (staged operand, partials).
inline Plan make_plan(int ng_slots, int64_t H, int64_t K, int64_t B, int64_t D, size_t elem_w, size_t elem_a,
                      const DeviceLimits& dev) {
  Plan p;
  const int64_t per_dir = dev.sms / D;
  if (B < 1 || H < 1 || K < 1) {
    p.why = "an empty batch or layer";
    return p;
  }
  if (per_dir < 1) {
    p.why = "fewer multiprocessors than directions";
    return p;
  }
  p.kj = (H + per_dir - 1) / per_dir;
  p.nb = (H + p.kj - 1) / p.kj;
  p.K = p.kp = K;
  p.rows_pad = round_up(B, kRows);
  // Bank-conflict-free strides (they only affect speed). A warp's lanes read the slice at `split` consecutive k
  // of 32/split units: a row stride ≡ split (mod one bank period of elements) puts them on distinct banks at
  // the full batch's split. Its h loads are kRows consecutive rows (16 bytes in float) at `split` k; a stride
  // of an odd number of 16-byte groups spreads them over the banks.
  const int64_t period = 128 / int64_t(elem_w);
  p.ldw = round_up(K, period) + step_tiling(p.kj, B).split % period;
  p.ldl = (p.rows_pad / kRows) % 2 == 1 ? p.rows_pad : p.rows_pad + kRows;
  p.w_bytes = align_region(size_t(ng_slots * p.kj * p.ldw) * elem_w);
  p.red_bytes = align_region(size_t(kThreads) * kRows * ng_slots * elem_a);
  const int64_t budget = dev.smem - dev.static_smem - int64_t(p.w_bytes + p.red_bytes);
  // The largest k chunk (a multiple of 32, at most K rounded up) whose staged rows fit beside the slice.
  const int64_t per_k = p.ldl * int64_t(elem_a);
  int64_t kc = budget > 0 ? budget / per_k : 0;
  kc = kc < round_up(K, 32) ? kc / 32 * 32 : round_up(K, 32);
  if (kc < 32) {
    p.why = "the recurrent weights and one staged k chunk do not fit in shared memory";
    return p;
  }
  p.kc = kc;
  p.left_bytes = align_region(size_t(p.kc * p.ldl) * elem_a);
  p.smem = p.w_bytes + p.left_bytes + p.red_bytes;
  p.ok = int64_t(p.smem) + dev.static_smem <= dev.smem;
  if (!p.ok) p.why = "shared memory";
  return p;
}

// ---- the recurrences ------------------------------------------------------------------------------------
// Loads of data other blocks wrote during this launch: on the GPU through L2 only (ld.global.cg), since a
// block's L1 may hold a line of them fetched before the writer's grid barrier.
template <typename T>
LF_HOST_DEVICE T load_fresh(const T* p) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 2) {  // c10::Half / c10::BFloat16: load the bits
    return T(__ldcg(reinterpret_cast<const unsigned short*>(p)), T::from_bits());
  } else {
    return __ldcg(p);
  }
#else
  return *p;
#endif
}

// Forward: out[b, slot·kj + jl] = Σ_k h_{t-1}[b, k] · W_hh[slot·H + j0 + jl, k], then the LSTM cell. In a
// layer stack (I_in > 0) the k range starts with the layer's input: [x_t, h_{t-1}] · [W_ih, W_hh]ᵀ.
template <typename T, typename A>
struct FwdRecurrence {
  using Step = FwdStepParams<T, A>;
  using Storage = T;
  using Acc = A;
  static constexpr int NG = 4;
  LF_HOST_DEVICE static int64_t units(const Step& p) { return p.H; }
  LF_HOST_DEVICE static int64_t K(const Step& p) { return p.I_in + p.P; }
  LF_HOST_DEVICE static int slots(const Step& p) { return p.coupled ? 3 : 4; }
  LF_HOST_DEVICE static T weight(const Step& p, int slot, int64_t j, int64_t k) {
    const int64_t row = slot * p.H + j;
    return k < p.I_in ? p.w_ih[row * p.I_in + k] : p.w_hh[row * p.P + (k - p.I_in)];
  }
  LF_HOST_DEVICE static int64_t left_rows(const Step& p) { return p.rows; }
  LF_HOST_DEVICE static T left_raw(const Step& p, int64_t b, int64_t k) {
    if (k < p.I_in) return load_fresh(p.x_in + b * p.ld_x + k);
    k -= p.I_in;
    return b < p.n_prev ? load_fresh(p.h_prev + b * p.ld_out + k) : p.h0[b * p.P + k];
  }
  LF_HOST_DEVICE static A left(const Step& p, int64_t b, int64_t k) { return to_acc<T, A>(left_raw(p, b, k)); }
  LF_HOST_DEVICE static void epilogue(const Step& p, int64_t b, int64_t j, const A (&acc)[NG]) {
    if (p.peep) {
      if (p.coupled) cuda_step::fwd_cell<T, A, true, true>(p, b, j, acc);
      else cuda_step::fwd_cell<T, A, true, false>(p, b, j, acc);
    } else {
      if (p.coupled) cuda_step::fwd_cell<T, A, false, true>(p, b, j, acc);
      else cuda_step::fwd_cell<T, A, false, false>(p, b, j, acc);
    }
  }
};

// Backward (no projection, so P == H): dh[b, j] = gout + Σ_k dG_later[b, k] · W_hh[k, j] (with zoneout, split),
// then the cell backward. Rows without a later step take grad_h_n (bwd_dh), so their dG_later rows stage as zeros. In a layer
// stack (K_up > 0) the k range goes on with the layer above: + Σ_k dG_up[b, k] · W_ih_up[k, j].
template <typename T, typename A>
struct BwdRecurrence {
  using Step = BwdStepParams<T, A>;
  using Storage = T;
  using Acc = A;
  static constexpr int NG = 1;
  LF_HOST_DEVICE static int64_t G(const Step& p) { return (p.coupled ? 3 : 4) * p.H; }
  LF_HOST_DEVICE static int64_t units(const Step& p) { return p.H; }
  LF_HOST_DEVICE static int64_t K(const Step& p) { return G(p) + p.K_up; }
  LF_HOST_DEVICE static int slots(const Step&) { return 1; }
  LF_HOST_DEVICE static T weight(const Step& p, int, int64_t j, int64_t k) {
    const int64_t g = G(p);
    return k < g ? p.w_hh_t[j * g + k] : p.w_ih_up_t[j * p.K_up + (k - g)];
  }
  LF_HOST_DEVICE static int64_t left_rows(const Step& p) {
    return p.K_up > 0 || p.rows < p.n_later ? p.rows : p.n_later;
  }
  LF_HOST_DEVICE static A left(const Step& p, int64_t b, int64_t k) {
    const int64_t g = G(p);
    if (k >= g) return load_fresh(p.dg_up + b * p.K_up + (k - g));
    return b < p.n_later ? load_fresh(p.dg_later + b * g + k) : A(0);
  }
  LF_HOST_DEVICE static T left_raw(const Step& p, int64_t b, int64_t k) { return static_cast<T>(left(p, b, k)); }
  LF_HOST_DEVICE static void epilogue(const Step& p, int64_t b, int64_t j, const A (&acc)[NG]) {
    cuda_step::bwd_fused_cell(p, b, j, acc[0]);
  }
};

// GRU forward: the recurrent products of gates r, z, n (W_hh rows slot·H + j) in slots 0..2 of 4 (the fourth
// is zero, so the GRU shares the LSTM's tile shapes), then the GRU cell. Its h_{t-1} term reads only this
// block's own units.
template <typename T, typename A>
struct GruFwdRecurrence {
  using Step = GruFwdStepParams<T, A>;
  using Storage = T;
  using Acc = A;
  static constexpr int NG = 4;
  LF_HOST_DEVICE static int64_t units(const Step& p) { return p.H; }
  LF_HOST_DEVICE static int64_t K(const Step& p) { return p.H; }
  LF_HOST_DEVICE static int slots(const Step&) { return 3; }
  LF_HOST_DEVICE static T weight(const Step& p, int slot, int64_t j, int64_t k) {
    return p.w_hh[(slot * p.H + j) * p.H + k];
  }
  LF_HOST_DEVICE static int64_t left_rows(const Step& p) { return p.rows; }
  LF_HOST_DEVICE static T left_raw(const Step& p, int64_t b, int64_t k) {
    return b < p.n_prev ? load_fresh(p.h_prev + b * p.ld_out + k) : p.h0[b * p.H + k];
  }
  LF_HOST_DEVICE static A left(const Step& p, int64_t b, int64_t k) { return to_acc<T, A>(left_raw(p, b, k)); }
  LF_HOST_DEVICE static void epilogue(const Step& p, int64_t b, int64_t j, const A (&acc)[NG]) {
    cuda_step::gru_fwd_cell(p, b, j, acc);
  }
};

// GRU backward: Σ_k dGh_later[b, k] · W_hh[k, j] over the 3H recurrent pre-activations, then the cell backward
// (its z ⊙ dh_later term and the saved gates are this block's own units).
template <typename T, typename A>
struct GruBwdRecurrence {
  using Step = GruBwdStepParams<T, A>;
  using Storage = T;
  using Acc = A;
  static constexpr int NG = 1;
  LF_HOST_DEVICE static int64_t units(const Step& p) { return p.H; }
  LF_HOST_DEVICE static int64_t K(const Step& p) { return 3 * p.H; }
  LF_HOST_DEVICE static int slots(const Step&) { return 1; }
  LF_HOST_DEVICE static T weight(const Step& p, int, int64_t j, int64_t k) { return p.w_hh_t[j * K(p) + k]; }
  LF_HOST_DEVICE static int64_t left_rows(const Step& p) { return p.rows < p.n_later ? p.rows : p.n_later; }
  LF_HOST_DEVICE static A left(const Step& p, int64_t b, int64_t k) { return load_fresh(p.dgh_later + b * K(p) + k); }
  LF_HOST_DEVICE static T left_raw(const Step& p, int64_t b, int64_t k) { return static_cast<T>(left(p, b, k)); }
  LF_HOST_DEVICE static void epilogue(const Step& p, int64_t b, int64_t j, const A (&acc)[NG]) {
    cuda_step::gru_bwd_cell(p, b, j, acc[0]);
  }
};

// The recurrence of a step-parameter type.
template <typename Step>
struct RecurrenceOf;
template <typename T, typename A>
struct RecurrenceOf<FwdStepParams<T, A>> {
  using type = FwdRecurrence<T, A>;
};
template <typename T, typename A>
struct RecurrenceOf<BwdStepParams<T, A>> {
  using type = BwdRecurrence<T, A>;
};
template <typename T, typename A>
struct RecurrenceOf<GruFwdStepParams<T, A>> {
  using type = GruFwdRecurrence<T, A>;
};
template <typename T, typename A>
struct RecurrenceOf<GruBwdStepParams<T, A>> {
  using type = GruBwdRecurrence<T, A>;
};

// ---- one launch -----------------------------------------------------------------------------------------
// One launch's step parameters: [n_steps, count], each step's lanes (directions of a layer, or the layers of a
// stack) side by side. Blocks [d·nb, (d+1)·nb) serve lane d.
template <typename Step>
struct StepTable {
  std::vector<Step> steps;
  int count = 1;
  int64_t n_steps = 0;
};
template <typename Step>
StepTable<Step> flatten(const std::vector<DirectionParams<Step>>& dps) {
  StepTable<Step> t;
  t.count = dps.empty() ? 1 : dps[0].count;
  t.n_steps = static_cast<int64_t>(dps.size());
  for (const auto& dp : dps)
    for (int d = 0; d < t.count; ++d) t.steps.push_back(dp.dir[d]);
  return t;
}

// The longest reduction over a table's lanes (a stack's first layer reduces over P only, the others I + P).
template <typename R>
int64_t max_k(const StepTable<typename R::Step>& t) {
  int64_t k = 0;
  for (int d = 0; d < t.count; ++d) k = R::K(t.steps[d]) > k ? R::K(t.steps[d]) : k;
  return k;
}

template <typename Step>
struct Args {
  const Step* steps = nullptr;  // [n_steps, count] in device memory
  int64_t n_steps = 0;
  int count = 1;
  Plan plan;
};

// A block's shared memory, carved from one dynamic allocation.
template <typename T, typename A>
struct Smem {
  T* w;     // [NG·kj, ldw] resident slice: row slot·kj + jl = the weights of unit j0 + jl's gate slot
  A* left;  // [kc, ldl] staged left operand, transposed: element (b, k) at (k - k0)·ldl + b
  A* red;   // [kThreads, kRows, NG] each thread's partial sums
};
template <typename T, typename A>
LF_HOST_DEVICE Smem<T, A> carve(const Plan& pl, unsigned char* base) {
  return {reinterpret_cast<T*>(base), reinterpret_cast<A*>(base + pl.w_bytes),
          reinterpret_cast<A*>(base + pl.w_bytes + pl.left_bytes)};
}

// Phase 0, once per launch: this block's slice of the weights (zero for slots or units that do not exist, and
// for k in [K, kp)).
template <typename R, typename T, typename A>
LF_HOST_DEVICE void load_resident(const Plan& pl, const typename R::Step& p, int64_t bx, int tid,
                                  const Smem<T, A>& s) {
  // 32-bit index math: everything indexed here fits in shared memory.
  const int rows = R::NG * static_cast<int>(pl.kj), K = static_cast<int>(R::K(p)), kp = static_cast<int>(pl.kp);
  const int kj = static_cast<int>(pl.kj);
  const int64_t j0 = bx * pl.kj;
  for (int e = tid; e < rows * kp; e += kThreads) {
    const int r = e / kp, k = e % kp, slot = r / kj;
    const int64_t j = j0 + r % kj;
    s.w[r * pl.ldw + k] = (slot < R::slots(p) && j < R::units(p) && k < K) ? R::weight(p, slot, j, k) : T(0.0f);
  }
}

// Phase 1: the left operand's rows [0, rows_pad(rows)) × [k0, k0 + kc), zero outside its rows and K.
template <typename R, typename T, typename A>
LF_HOST_DEVICE void stage_left(const Plan& pl, const typename R::Step& p, int64_t k0, int tid, const Smem<T, A>& s) {
  const int rows = static_cast<int>((p.rows + kRows - 1) / kRows * kRows), kc = static_cast<int>(pl.kc);
  const int64_t n = R::left_rows(p), K = R::K(p);
  for (int e = tid; e < rows * kc; e += kThreads) {
    const int b = e / kc, kk = e % kc;
    const int64_t k = k0 + kk;
    s.left[kk * pl.ldl + b] = (b < n && k < K) ? R::left(p, b, k) : A(0);
  }
}

// Which item and lane a thread is in round r0 of a step.
struct Lane {
  int64_t item;
  int64_t part;
  bool active;
};
LF_HOST_DEVICE Lane lane_of(const StepTiling& st, int64_t r0, int tid) {
  const int64_t item = r0 + tid / st.split;
  return {item, tid % st.split, item < st.items};
}

// kRows consecutive staged rows at one k: one 16-byte shared load in float on the GPU (16-byte aligned: ldl,
// row0 and the region start are multiples of 4 floats).
template <typename A>
LF_HOST_DEVICE void load_rows(const A* p, A (&h)[kRows]) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<A, float> && kRows == 4) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    h[0] = v.x, h[1] = v.y, h[2] = v.z, h[3] = v.w;
  } else {
    for (int r = 0; r < kRows; ++r) h[r] = p[r];
  }
#else
  if constexpr (std::is_same_v<A, float> && kRows == 4)
    hardware_rule(reinterpret_cast<uintptr_t>(p) % 16 == 0, "persistent kernel: a float4 shared-memory load of "
                  "staged rows is not 16-byte aligned (ldl, row0 and the region start must be multiples of 4 floats)");
  for (int r = 0; r < kRows; ++r) h[r] = p[r];
#endif
}

// Phase 2: this lane's share (k ≡ part mod split) of its item's products over the staged chunk.
template <typename R, typename T, typename A>
LF_HOST_DEVICE void accumulate(const Plan& pl, const typename R::Step& p, const StepTiling& st, int64_t r0,
                               int64_t k0, int tid, const Smem<T, A>& s, A (&acc)[kRows][R::NG]) {
  const Lane ln = lane_of(st, r0, tid);
  if (!ln.active) return;
  const int64_t jl = ln.item % pl.kj, row0 = (ln.item / pl.kj) * kRows;
  const int k_end = static_cast<int>((k0 + pl.kc < R::K(p) ? k0 + pl.kc : R::K(p)) - k0);
  for (int kk = static_cast<int>(ln.part); kk < k_end; kk += static_cast<int>(st.split)) {
    A w[R::NG];
    for (int g = 0; g < R::NG; ++g) w[g] = to_acc<T, A>(s.w[(g * pl.kj + jl) * pl.ldw + k0 + kk]);
    A h[kRows];
    load_rows(s.left + kk * pl.ldl + row0, h);
    for (int r = 0; r < kRows; ++r)
      for (int g = 0; g < R::NG; ++g) acc[r][g] += h[r] * w[g];
  }
}

// Phase 3: park the partial sums for the reduction.
template <int NG, typename T, typename A>
LF_HOST_DEVICE void store_partials(int tid, const Smem<T, A>& s, const A (&acc)[kRows][NG]) {
  for (int r = 0; r < kRows; ++r)
    for (int g = 0; g < NG; ++g) s.red[(int64_t(tid) * kRows + r) * NG + g] = acc[r][g];
}

// Phase 4: one thread per (item, row) of the round sums its item's `split` partials in lane order and runs the
// cell on unit j0 + jl, row b.
template <typename R, typename T, typename A>
LF_HOST_DEVICE void reduce_epilogue(const Plan& pl, const typename R::Step& p, const StepTiling& st, int64_t r0,
                                    int64_t bx, int tid, const Smem<T, A>& s) {
  const int64_t in_round = (st.items - r0 < st.groups ? st.items - r0 : st.groups) * kRows;
  for (int64_t e = tid; e < in_round; e += kThreads) {
    const int64_t il = e / kRows, r = e % kRows, item = r0 + il;
    const int64_t j = bx * pl.kj + item % pl.kj, b = (item / pl.kj) * kRows + r;
    if (b >= p.rows || j >= R::units(p)) continue;
    A sum[R::NG];
    for (int g = 0; g < R::NG; ++g) sum[g] = A(0);
    for (int64_t l = 0; l < st.split; ++l)
      for (int g = 0; g < R::NG; ++g) sum[g] += s.red[((il * st.split + l) * kRows + r) * R::NG + g];
    R::epilogue(p, b, j, sum);
  }
}

}  // namespace persistent
}  // namespace lstm_fused
