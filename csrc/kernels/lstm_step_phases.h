// The CUDA step kernels' work, written as __host__ __device__ functions of (block, thread) indices; their schedule
// (kernels/step_schedule.h) runs on the GPU (cuda/lstm_step_kernels.cu) and, thread by thread and phase by phase,
// on the CPU (testing/cuda_emulation.cpp), where the tests check its index math, tiling and bounds at odd sizes.
//
// One launch per time step. A block owns kJT hidden units (or output columns) × kBT batch rows; its threads
// reduce over k in tiles staged through shared memory, and the epilogue applies the cell math of
// cell_math.h to the accumulators still in registers — the recurrent product ends directly in the cell
// update, with no gates round trip through global memory.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cell_math.h"
#include "kernels/recurrent_params.h"

namespace lstm_fused {
namespace cuda_step {

constexpr int kJT = 32;              // hidden units (or output columns) per block: one warp along x
constexpr int kBT = 8;               // batch rows per block
constexpr int kKT = 32;              // reduction tile
constexpr int kThreads = kJT * kBT;  // 256

// A layer's layer-norm gains (ih set: the layer has layer norm): γ_ih [G], γ_hh [G]; an LSTM's γ_c [H], β_c [H].
template <typename T>
struct LnGains {
  const T* ih = nullptr;
  const T* hh = nullptr;
  const T* c_w = nullptr;
  const T* c_b = nullptr;
};

// Forward step t over rows [0, rows) (T: storage type; A: accumulate type, float for half types).
template <typename T, typename A>
struct FwdStepParams {
  int64_t H = 0, P = 0;   // hidden units; recurrent size (proj_size or H)
  int64_t rows = 0;       // batch_sizes[t]
  int64_t n_prev = 0;     // rows below continue the previous step; the rest start from h0/c0
  bool coupled = false;   // gates i, g, o (G = 3H) with f = 1 − i, else i, f, g, o (G = 4H)
  int64_t ld_ws = 0;      // G + H
  int64_t ld_h = 0;       // row stride of h_out
  int64_t ld_out = 0;     // row stride of the layer output (D·P: both directions share its rows)
  const T* h_prev = nullptr;  // [n_prev, ld_out] output rows of the previous step (h_{t-1})
  const T* h0 = nullptr;      // [B, P]
  const A* c_prev = nullptr;  // [n_prev, ld_ws] c of the previous step (workspace column 4H)
  const T* c0 = nullptr;      // [B, H]
  const T* xw = nullptr;      // [rows, ld_xw] x·W_ihᵀ + b_ih + b_hh of this step (ld_xw 0: biases only, the
  int64_t ld_xw = 0;          // input product is then part of the recurrent reduction, see I_in)
  // Stacked layers (lstm_stack_fwd's wavefront): the layer's input product is reduced with the recurrent one,
  // over k in [0, I_in) of x_in·W_ihᵀ before [I_in, I_in + P) of h_{t-1}·W_hhᵀ. I_in = 0 otherwise.
  int64_t I_in = 0, ld_x = 0;
  const T* x_in = nullptr;    // [rows, ld_x] the layer below's h_t
  const T* w_ih = nullptr;    // [G, I_in]
  // Large batches: h_{t-1}·W_hhᵀ comes from a cuBLAS GEMM ([rows, G], gate columns as W_hh's rows; in the accumulate
  // type, so half types keep the product's float precision) and the step kernel only runs the cell. nullptr: the
  // kernel reduces it itself.
  const A* rec = nullptr;
  const T* w_hh = nullptr;    // [G, P]
  const T* peep = nullptr;    // [3 or 2, H] peephole weights, or nullptr
  A* ws = nullptr;            // [rows, ld_ws] out: activated gates (G) then c_t (H)
  T* h_out = nullptr;         // [rows, ld_h] out: h_t, or o·tanh(c_t) as the projection's input
  // Rows [end_lo, end_hi) end their sequence at this step: their c_t goes to c_n, and h_t to h_n when there is
  // no projection (with one, the driver copies the projected rows).
  int64_t end_lo = 0, end_hi = 0;
  T* h_n = nullptr;           // [B, P] or nullptr
  T* c_n = nullptr;           // [B, H]
  // Zoneout (data nullptr: none). c_t = m ⊙ c_{t-1} + (1 − m) ⊙ c̃_t: ws then holds the candidate c̃_t at column G
  // (what o and tanh saw, for the backward) and the zoned-out c_t at G + H (the next step's c_prev). h likewise, from
  // the candidate o ⊙ tanh(c̃_t), where there is no projection (with one, the projection's zoneout launch does it).
  ZoneoutMask<A> zo_h;        // [rows, H] of this step
  ZoneoutMask<A> zo_c;        // [rows, H]
  // Layer norm (ln.ih set): a launch of its own, one block per row (kernels/layer_norm_phases.h), after the GEMM's
  // raw product `rec`. Workspace row from ln_col: x̂_ih [G], x̂_hh [G], ĉ [H], then the three rows' rstd.
  LnGains<T> ln;
  const T* ln_bias = nullptr;  // [G] b_ih + b_hh, added after the norms (nullptr: no bias)
  const A* xhat_ih = nullptr;  // [rows, ld_xhat_ih] x̂ of this step's input product (the workspace's in training)
  int64_t ld_xhat_ih = 0;
  int64_t ln_col = 0;
};

// Backward step t. Modes: kFused (no projection): dh_t = gout + dG_later·W_hh for this block's units, then the
// cell backward; kReduceOnly (projection): dh_tot = gout + dG_later·W_hh over the P outputs; kPointwiseOnly
// (projection): the cell backward from dr = dh_tot·W_hr.
enum BwdMode : int { kFused = 0, kReduceOnly = 1, kPointwiseOnly = 2 };

template <typename T, typename A>
struct BwdStepParams {
  int64_t H = 0, P = 0, rows = 0;
  int64_t n_later = 0;        // rows below got dG from the step after t (in forward order); the rest take grad_h_n
  int64_t n_prev = 0;         // rows below continue the previous step (forward order); the rest started from c0
  bool coupled = false;
  int64_t ld_ws = 0;            // G + H
  const A* dg_later = nullptr;  // [n_later, G] pre-activation gradients of the step after t
  const T* w_hh_t = nullptr;    // [P, G] W_hhᵀ
  const T* peep = nullptr;      // [3 or 2, H] peephole weights, or nullptr
  int64_t ld_gout = 0;          // row stride of gout (D·P)
  const T* gout = nullptr;      // [rows, ld_gout] gradient of this step's output rows (nullptr: none)
  const T* grad_hn = nullptr;   // [B, P]
  const A* dr = nullptr;        // [rows, H] kPointwiseOnly: gradient of o·tanh(c_t)
  A* dh_tot = nullptr;          // [rows, P] kReduceOnly out: total gradient of h_t
  const A* ws = nullptr;        // [rows, ld_ws] this step's activated gates and c_t
  const A* c_prev = nullptr;    // [n_prev, ld_ws] c of the previous step (workspace column 4H)
  const T* c0 = nullptr;        // [B, H]
  A* dc_state = nullptr;        // [B, H] in: gradient of c_t; out: gradient of c_{t-1}
  A* dg = nullptr;              // [rows, G] out: pre-activation gradients
  A* r_out = nullptr;           // [rows, H] kPointwiseOnly out: o·tanh(c_t), for W_hr's gradient
  // Stacked layers (the wavefront backward): the gradient this layer's output gets from the layer above,
  // dG_up·W_ih_up, is reduced together with dG_later·W_hh over k in [G, G + K_up). K_up = 0 otherwise.
  int64_t K_up = 0;
  const A* dg_up = nullptr;     // [rows, K_up] the layer above's pre-activation gradients at this t
  const T* w_ih_up_t = nullptr;  // [H, K_up] W_ih of the layer above, transposed
  // Large batches: dG_later·W_hh from a cuBLAS GEMM ([rows, P], zero for rows without a later step); the
  // kFused / kReduceOnly launches then skip their reduction. nullptr: they reduce it themselves.
  const A* rec = nullptr;
  // Zoneout (data nullptr: none), the forward's masks of this step. ws's column G holds the candidate c̃_t, c_prev
  // points at the zoned-out c_{t-1}. On h: the gradient of the zoned-out h_t splits into the candidate's and the part
  // m ⊙ dh that reaches h_{t-1} directly, which dh_carry hands to the previous step (kFused, kReduceOnly).
  ZoneoutMask<A> zo_h;        // [rows, P]
  ZoneoutMask<A> zo_c;        // [rows, H]
  A* dh_carry = nullptr;      // [B, P] in: the later step's part for h_t (rows below n_later); out: this step's for
                              // h_{t-1}. What remains after the last step is each row's part for h0.
  // Layer norm (ln.ih set; a launch of its own, one block per row, after the GEMM or, with a projection, after dr's):
  // the gradients before the norms go to dpre, dg gets the input product's and dg_rec the recurrent product's.
  LnGains<T> ln;
  int64_t ln_col = 0;
  A* dpre = nullptr;          // [rows, G] out
  A* dg_rec = nullptr;        // [rows, G] out
  A* dy_c = nullptr;          // [rows, H] out: gradient of γ_c ⊙ ĉ + β_c (γ_c's and β_c's sum it)
};

// NG accumulators per thread: the 4 gates of one unit (forward) or one output (backward).
template <typename A, int NG>
struct TileSmem {
  A a[kBT][kKT];
  A w[NG * kJT][kKT + 1];  // +1: a warp reads 32 different rows at one k without bank conflicts
};

// Accumulate type of a storage type: double for double, float for float and the half types.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Storage to accumulate type; half types go through float (their only conversion on host and device).
template <typename T, typename A>
LF_HOST_DEVICE A to_acc(T v) {
  return static_cast<A>(static_cast<float>(v));
}
template <>
LF_HOST_DEVICE double to_acc<double, double>(double v) {
  return v;
}

// Stages one k-tile of a block's reduction into shared memory: rows [by·kBT, +kBT) × [k0, k0+kKT) of the
// left operand (a_at(b, k), rows below a_rows) and, for each of the ng used gate slots, the W rows of this
// block's kJT outputs (w_at(slot, n, k), outputs below n_out) over the same k range. Everything out of range
// is zero, so partial tiles at any size reduce correctly.
template <typename A, int NG, typename ARow, typename WRow>
LF_HOST_DEVICE void load_tiles(int bx, int by, int tid, int64_t k0, int64_t K, int64_t a_rows, int64_t n_out, int ng,
                               const ARow& a_at, const WRow& w_at, TileSmem<A, NG>& s) {
  for (int e = tid; e < kBT * kKT; e += kThreads) {
    const int bb = e / kKT, kk = e % kKT;
    const int64_t b = int64_t(by) * kBT + bb, k = k0 + kk;
    s.a[bb][kk] = (b < a_rows && k < K) ? a_at(b, k) : A(0);
  }
  for (int e = tid; e < NG * kJT * kKT; e += kThreads) {
    const int rr = e / kKT, kk = e % kKT;
    const int g = rr / kJT, jj = rr % kJT;
    const int64_t n = int64_t(bx) * kJT + jj, k = k0 + kk;
    s.w[rr][kk] = (g < ng && n < n_out && k < K) ? w_at(g, n, k) : A(0);
  }
}

// ---- forward ------------------------------------------------------------------------------------------
// Stages h_{t-1}[rows of this block, k0:k0+kKT] and W_hh[gate slots × units of this block, k0:k0+kKT]: slot g
// holds W_hh rows g·H + j (i, f, g, o; or i, g, o when coupled, the fourth slot zero).
template <typename T, typename A>
LF_HOST_DEVICE void fwd_load_tiles(const FwdStepParams<T, A>& p, int bx, int by, int tid, int64_t k0,
                                   TileSmem<A, 4>& s) {
  load_tiles(
      bx, by, tid, k0, p.P, p.rows, p.H, p.coupled ? 3 : 4,
      [&](int64_t b, int64_t k) {
        return to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + k] : p.h0[b * p.P + k]);
      },
      [&](int g, int64_t j, int64_t k) { return to_acc<T, A>(p.w_hh[(g * p.H + j) * p.P + k]); }, s);
}

template <typename A, int NG>
LF_HOST_DEVICE void tile_accumulate(const TileSmem<A, NG>& s, int tx, int ty, A (&acc)[NG]) {
  for (int kk = 0; kk < kKT; ++kk) {
    const A a = s.a[ty][kk];
    for (int g = 0; g < NG; ++g) acc[g] += a * s.w[g * kJT + tx][kk];
  }
}

// Peephole weights of unit j (zeros without peepholes).
template <typename T, typename A, bool kCoupled>
LF_HOST_DEVICE Peepholes<A> load_peepholes(const T* peep, int64_t H, int64_t j) {
  using C = GateCols<kCoupled>;
  Peepholes<A> w;
  if (peep) {
    w.i = to_acc<T, A>(peep[C::peep_i(H) + j]);
    if (!kCoupled) w.f = to_acc<T, A>(peep[C::peep_f(H) + j]);
    w.o = to_acc<T, A>(peep[C::peep_o(H) + j]);
  }
  return w;
}

template <typename T, typename A, bool kPeephole, bool kCoupled>
LF_HOST_DEVICE void fwd_cell(const FwdStepParams<T, A>& p, int64_t b, int64_t j, const A (&acc)[4]) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H;
  const T* xw = p.xw + b * p.ld_xw;
  // acc[slot] holds the recurrent product of gate slot `slot` (W_hh rows slot·H + j).
  const int si = 0, sf = 1, sg = kCoupled ? 1 : 2, so = kCoupled ? 2 : 3;
  const LstmGates<A> pre{acc[si] + to_acc<T, A>(xw[C::i(H) + j]),
                         kCoupled ? A(0) : acc[sf] + to_acc<T, A>(xw[C::f(H) + j]),
                         acc[sg] + to_acc<T, A>(xw[C::g(H) + j]), acc[so] + to_acc<T, A>(xw[C::o(H) + j])};
  const A c_prev = b < p.n_prev ? p.c_prev[b * p.ld_ws + j] : to_acc<T, A>(p.c0[b * H + j]);
  LstmGates<A> act;
  A c, h;
  lstm_cell_forward<A, kPeephole, kCoupled>(pre, c_prev, act, c, h, load_peepholes<T, A, kCoupled>(p.peep, H, j));
  A* w = p.ws + b * p.ld_ws;
  w[C::i(H) + j] = act.i;
  if (!kCoupled) w[C::f(H) + j] = act.f;
  w[C::g(H) + j] = act.g;
  w[C::o(H) + j] = act.o;
  w[G + j] = c;
  if (p.zo_c.data) {
    c = zoneout_forward(p.zo_c.at(b, j), c_prev, c);
    w[G + H + j] = c;
  }
  if (p.zo_h.data) {  // no projection here, so P == H
    // (A plain load, as the GRU's: on the persistent path the block that wrote unit j of h_{t-1} is this one, so no
    // stale L1 line; a tiling that moved units between blocks would need load_fresh here.)
    const A h_prev = to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + j] : p.h0[b * p.P + j]);
    h = zoneout_forward(p.zo_h.at(b, j), h_prev, h);
  }
  p.h_out[b * p.ld_h + j] = static_cast<T>(h);
  if (b >= p.end_lo && b < p.end_hi) {
    p.c_n[b * H + j] = static_cast<T>(c);
    if (p.h_n) p.h_n[b * p.P + j] = static_cast<T>(h);
  }
}

template <typename T, typename A>
LF_HOST_DEVICE void fwd_epilogue(const FwdStepParams<T, A>& p, int bx, int by, int tx, int ty, const A (&red)[4]) {
  const int64_t j = int64_t(bx) * kJT + tx, b = int64_t(by) * kBT + ty;
  if (b >= p.rows || j >= p.H) return;
  A acc[4] = {red[0], red[1], red[2], red[3]};
  if (p.rec) {  // the GEMM's product: gate slot g is column g·H + j
    const int slots = p.coupled ? 3 : 4;
    for (int g = 0; g < slots; ++g) acc[g] = p.rec[b * slots * p.H + g * p.H + j];
  }
  if (p.peep) {
    if (p.coupled) fwd_cell<T, A, true, true>(p, b, j, acc);
    else fwd_cell<T, A, true, false>(p, b, j, acc);
  } else {
    if (p.coupled) fwd_cell<T, A, false, true>(p, b, j, acc);
    else fwd_cell<T, A, false, false>(p, b, j, acc);
  }
}

// Length of the forward reduction (0 when a GEMM computed it).
template <typename T, typename A>
LF_HOST_DEVICE int64_t fwd_reduction_length(const FwdStepParams<T, A>& p) {
  return p.rec ? 0 : p.P;
}

// ---- backward -----------------------------------------------------------------------------------------
// Stages dG_later[rows of this block, k0:k0+kKT] and W_hhᵀ[outputs of this block, k0:k0+kKT] (k runs over G;
// outputs are units for kFused, with P == H, or the P outputs for kReduceOnly).
template <typename T, typename A>
LF_HOST_DEVICE void bwd_load_tiles(const BwdStepParams<T, A>& p, int bx, int by, int tid, int64_t k0,
                                   TileSmem<A, 1>& s) {
  const int64_t G = (p.coupled ? 3 : 4) * p.H;
  load_tiles(
      bx, by, tid, k0, G, p.rows < p.n_later ? p.rows : p.n_later, p.P, 1,
      [&](int64_t b, int64_t k) { return p.dg_later[b * G + k]; },
      [&](int, int64_t n, int64_t k) { return to_acc<T, A>(p.w_hh_t[n * G + k]); }, s);
}

// Gradient reaching h_t[b, n] from outside the cell: this step's output gradient plus the recurrent one
// (or grad_h_n where t is the row's last step).
// `recurrent` is the reduction, which is zero from dG_later for rows without a later step (they stage zeros).
template <typename T, typename A>
LF_HOST_DEVICE A bwd_dh(const BwdStepParams<T, A>& p, int64_t b, int64_t n, A recurrent) {
  const A rec = b < p.n_later ? recurrent : recurrent + to_acc<T, A>(p.grad_hn[b * p.P + n]);
  return p.gout ? rec + to_acc<T, A>(p.gout[b * p.ld_gout + n]) : rec;
}

// Zoneout on h: the gradient of the zoned-out h_t, `dh` (bwd_dh's) plus what reaches it straight from the later
// step (rows below n_later), splits into the candidate's (returned) and the part for h_{t-1}, which replaces the
// later step's in dh_carry. Element (b, n) is this thread's alone on every path, so the update is in place.
template <typename T, typename A>
LF_HOST_DEVICE A bwd_zoneout_h(const BwdStepParams<T, A>& p, int64_t b, int64_t n, A dh) {
  if (!p.zo_h.data) return dh;
  A& carry = p.dh_carry[b * p.P + n];
  if (b < p.n_later) dh += carry;
  A to_prev = A(0);
  const A candidate = zoneout_backward(p.zo_h.at(b, n), dh, to_prev);
  carry = to_prev;
  return candidate;
}

template <typename T, typename A, bool kPeephole, bool kCoupled>
LF_HOST_DEVICE void bwd_cell_variant(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A dh, bool store_r) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, G = C::kGates * H;
  const A* w = p.ws + b * p.ld_ws;
  const A ai = w[C::i(H) + j];
  const LstmGates<A> act{ai, kCoupled ? A(1) - ai : w[C::f(H) + j], w[C::g(H) + j], w[C::o(H) + j]};
  const A c = w[G + j];
  const A c_prev = b < p.n_prev ? p.c_prev[b * p.ld_ws + j] : to_acc<T, A>(p.c0[b * H + j]);
  // The gradient of c_t; with zoneout on c, of the zoned-out c_t: the candidate c̃_t gets (1 − m) of it.
  A dc = p.dc_state[b * H + j], dc_to_prev = A(0);
  if (p.zo_c.data) dc = zoneout_backward(p.zo_c.at(b, j), dc, dc_to_prev);
  LstmGates<A> dpre;
  A dc_prev;
  lstm_cell_backward<A, kPeephole, kCoupled>(act, c, c_prev, dh, dc, dpre, dc_prev,
                                             load_peepholes<T, A, kCoupled>(p.peep, H, j));
  A* dg = p.dg + b * G;
  dg[C::i(H) + j] = dpre.i;
  if (!kCoupled) dg[C::f(H) + j] = dpre.f;
  dg[C::g(H) + j] = dpre.g;
  dg[C::o(H) + j] = dpre.o;
  p.dc_state[b * H + j] = p.zo_c.data ? dc_prev + dc_to_prev : dc_prev;
  if (store_r) p.r_out[b * H + j] = lstm_hidden_from_saved(act, c);
}

template <typename T, typename A>
LF_HOST_DEVICE void bwd_cell(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A dh, bool store_r) {
  if (p.peep) {
    if (p.coupled) bwd_cell_variant<T, A, true, true>(p, b, j, dh, store_r);
    else bwd_cell_variant<T, A, true, false>(p, b, j, dh, store_r);
  } else {
    if (p.coupled) bwd_cell_variant<T, A, false, true>(p, b, j, dh, store_r);
    else bwd_cell_variant<T, A, false, false>(p, b, j, dh, store_r);
  }
}

// Without a projection (the kFused step and the persistent kernel): h_t's gradient from the recurrent product
// `recurrent`, then the cell backward of unit j.
template <typename T, typename A>
LF_HOST_DEVICE void bwd_fused_cell(const BwdStepParams<T, A>& p, int64_t b, int64_t j, A recurrent) {
  bwd_cell(p, b, j, bwd_zoneout_h(p, b, j, bwd_dh(p, b, j, recurrent)), false);
}

template <typename T, typename A>
LF_HOST_DEVICE void bwd_epilogue(const BwdStepParams<T, A>& p, int mode, int bx, int by, int tx, int ty,
                                 const A (&acc)[1]) {
  const int64_t n = int64_t(bx) * kJT + tx, b = int64_t(by) * kBT + ty;
  if (b >= p.rows) return;
  const A rec = (p.rec && mode != kPointwiseOnly && n < p.P) ? p.rec[b * p.P + n] : acc[0];
  if (mode == kReduceOnly) {  // the candidate's part, for W_hr's gradient and the cell
    if (n < p.P) p.dh_tot[b * p.P + n] = bwd_zoneout_h(p, b, n, bwd_dh(p, b, n, rec));
    return;
  }
  if (n >= p.H) return;
  if (mode == kFused)
    bwd_fused_cell(p, b, n, rec);
  else
    bwd_cell(p, b, n, p.dr[b * p.H + n], true);
}

// ---- zoneout of a projected h -------------------------------------------------------------------------
// With a projection, h's zoneout follows the projection GEMM, in a launch of its own per step (every direction):
// the step's output rows, the GEMM's candidates W_hr·(o ⊙ tanh(c̃_t)), become m ⊙ h_{t-1} + (1 − m) ⊙ h̃_t, and rows
// that end their sequence at t hand them to h_n. A thread per element (b, n) of rows × P, on the step grid.
template <typename T, typename A>
struct ProjZoneoutParams {
  int64_t P = 0, rows = 0;
  int64_t n_prev = 0;         // rows below continue the previous step; the rest start from h0
  int64_t ld_out = 0;         // row stride of the layer output (D·P)
  const T* h_prev = nullptr;  // [n_prev, ld_out] output rows of the previous step (h_{t-1})
  const T* h0 = nullptr;      // [B, P]
  ZoneoutMask<A> zo_h;        // [rows, P]
  T* out = nullptr;           // [rows, ld_out] in: the candidates; out: h_t
  int64_t end_lo = 0, end_hi = 0;
  T* h_n = nullptr;           // [B, P]
};

template <typename T, typename A>
LF_HOST_DEVICE void proj_zoneout_element(const ProjZoneoutParams<T, A>& p, int bx, int by, int tx, int ty) {
  const int64_t n = int64_t(bx) * kJT + tx, b = int64_t(by) * kBT + ty;
  if (b >= p.rows || n >= p.P) return;
  const A prev = to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + n] : p.h0[b * p.P + n]);
  T& o = p.out[b * p.ld_out + n];
  const T h = static_cast<T>(zoneout_forward(p.zo_h.at(b, n), prev, to_acc<T, A>(o)));
  o = h;
  if (b >= p.end_lo && b < p.end_hi) p.h_n[b * p.P + n] = h;
}

// One launch runs a step of every direction of a layer (blockIdx.z = direction; the reverse direction is at
// time T-1-s while the forward one is at s, so their row counts can differ with packed input).
constexpr int kMaxDirections = 2;
template <typename P>
struct DirectionParams {
  P dir[kMaxDirections];
  int count = 1;
};

// Grid of a step launch: x over units/outputs, y over rows.
inline void fwd_grid(int64_t H, int64_t rows, int64_t& gx, int64_t& gy) {
  gx = (H + kJT - 1) / kJT;
  gy = (rows + kBT - 1) / kBT;
}
inline void bwd_grid(int64_t H, int64_t P, int64_t rows, int mode, int64_t& gx, int64_t& gy) {
  gx = ((mode == kReduceOnly ? P : H) + kJT - 1) / kJT;
  gy = (rows + kBT - 1) / kBT;
}
// The grid of one launch covers every direction (the widest one); blocks beyond a direction's rows exit at
// once (block-uniform, before any barrier). `extent(p, gx, gy)` is one direction's grid.
template <typename P, typename Extent>
inline void widest_grid(const DirectionParams<P>& dp, const Extent& extent, int64_t& gx, int64_t& gy) {
  gx = gy = 0;
  for (int d = 0; d < dp.count; ++d) {
    int64_t x, y;
    extent(dp.dir[d], x, y);
    gx = x > gx ? x : gx;
    gy = y > gy ? y : gy;
  }
}
template <typename T, typename A>
inline void launch_grid(const DirectionParams<FwdStepParams<T, A>>& dp, int64_t& gx, int64_t& gy) {
  widest_grid(dp, [](const FwdStepParams<T, A>& p, int64_t& x, int64_t& y) { fwd_grid(p.H, p.rows, x, y); }, gx, gy);
}
template <typename T, typename A>
inline void launch_grid(const DirectionParams<BwdStepParams<T, A>>& dp, int mode, int64_t& gx, int64_t& gy) {
  widest_grid(
      dp, [mode](const BwdStepParams<T, A>& p, int64_t& x, int64_t& y) { bwd_grid(p.H, p.P, p.rows, mode, x, y); },
      gx, gy);
}
template <typename T, typename A>
inline void launch_grid(const DirectionParams<ProjZoneoutParams<T, A>>& dp, int64_t& gx, int64_t& gy) {
  widest_grid(dp, [](const ProjZoneoutParams<T, A>& p, int64_t& x, int64_t& y) { fwd_grid(p.P, p.rows, x, y); }, gx,
              gy);
}
template <typename P>
LF_HOST_DEVICE bool block_has_rows(const P& p, int64_t by) {
  return by * kBT < p.rows;
}

// Length of the reduction (0: no reduction phase).
template <typename T, typename A>
LF_HOST_DEVICE int64_t bwd_reduction_length(const BwdStepParams<T, A>& p, int mode) {
  return mode == kPointwiseOnly || p.rec ? 0 : (p.coupled ? 3 : 4) * p.H;
}

}  // namespace cuda_step
}  // namespace lstm_fused
