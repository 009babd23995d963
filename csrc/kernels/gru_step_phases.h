// The CUDA GRU step kernels' work as __host__ __device__ phase functions of (block, thread) indices, like
// kernels/lstm_step_phases.h (same tiling and tile reduction): the GPU runs them in cuda/gru_step_kernels.cu, the CPU
// emulation (testing/cuda_emulation.cpp) thread by thread.
#pragma once

#include "kernels/lstm_step_phases.h"

namespace lstm_fused {
namespace cuda_step {

// Forward step t over rows [0, rows).
template <typename T, typename A>
struct GruFwdStepParams {
  int64_t H = 0, rows = 0;
  int64_t n_prev = 0;          // rows below continue the previous step; the rest start from h0
  int64_t ld_out = 0;          // row stride of the layer output (D·H)
  const T* h_prev = nullptr;   // [n_prev, ld_out] output rows of the previous step
  const T* h0 = nullptr;       // [B, H]
  const T* xw = nullptr;       // [rows, 3H] x·W_ihᵀ + b_ih of this step
  const T* w_hh = nullptr;     // [3H, H]
  const T* b_hh = nullptr;     // [3H] or nullptr
  A* ws = nullptr;             // [rows, ld_ws] out: r, z, n, and the recurrent n product (with b_hn)
  int64_t ld_ws = 0;           // 4H, or more with layer norm
  // Layer norm: the input side γ_ih ⊙ x̂_ih + b_ih instead of xw ([rows, 3H]; in the accumulate type, from the row-norm
  // launch), and rec already γ_hh ⊙ x̂_hh (the cell adds b_hh as without).
  const A* xw_ln = nullptr;
  T* h_out = nullptr;          // [rows, ld_out] out: h_t (this direction's columns of the output)
  int64_t end_lo = 0, end_hi = 0;  // rows [end_lo, end_hi) end their sequence at this step: h_t goes to h_n
  T* h_n = nullptr;                // [B, H]
  const A* rec = nullptr;          // [rows, 3H] h_{t-1}·W_hhᵀ from a cuBLAS GEMM (large batches), or nullptr
  ZoneoutMask<A> zo_h;             // [rows, H] h_t = m ⊙ h_{t-1} + (1 − m) ⊙ h̃_t (data nullptr: no zoneout)
};

// Backward step t: dh_t = gout + dGh_later·W_hh + z_later ⊙ dh_later (or grad_h_n where t is the row's last
// step), then the cell backward.
template <typename T, typename A>
struct GruBwdStepParams {
  int64_t H = 0, rows = 0;
  int64_t n_later = 0;          // rows below got gradients from the step after t
  int64_t n_prev = 0;           // rows below continue the previous step (forward order); the rest started from h0
  int64_t ld_out = 0;           // row stride of output / gout (D·H)
  const A* dgh_later = nullptr;  // [n_later, 3H] recurrent-side pre-activation gradients of the step after t
  const A* ws_later = nullptr;   // [n_later, ld_ws] that step's gates (for z)
  const A* dh_later = nullptr;   // [n_later, H] that step's total gradient of h
  const T* w_hh_t = nullptr;     // [H, 3H] W_hhᵀ
  const T* gout = nullptr;       // [rows, ld_out]
  const T* grad_hn = nullptr;    // [B, H]
  const A* ws = nullptr;         // [rows, ld_ws] this step's gates
  int64_t ld_ws = 0;
  const T* h_prev = nullptr;     // [n_prev, ld_out] output rows of the previous step
  const T* h0 = nullptr;         // [B, H]
  A* dh = nullptr;               // [rows, H] out: total gradient of h_t
  A* dgx = nullptr;              // [rows, 3H] out
  A* dgh = nullptr;              // [rows, 3H] out
  const A* rec = nullptr;        // [rows, H] dGh_later·W_hh from a cuBLAS GEMM (large batches), or nullptr
  // Zoneout (data nullptr: none): this step's mask and the later step's. dh holds the gradient of the zoned-out h_t;
  // its candidate gets (1 − m) of it, h_{t-1} the rest directly.
  ZoneoutMask<A> zo_h;          // [rows, H]
  ZoneoutMask<A> zo_h_later;    // [n_later, H]
};

// Stages h_{t-1}[rows, k0:k0+kKT] and W_hh rows r, z, n of this block's units (slot g: row g·H + j).
template <typename T, typename A>
LF_HOST_DEVICE void gru_fwd_load_tiles(const GruFwdStepParams<T, A>& p, int bx, int by, int tid, int64_t k0,
                                       TileSmem<A, 3>& s) {
  load_tiles(
      bx, by, tid, k0, p.H, p.rows, p.H, 3,
      [&](int64_t b, int64_t k) {
        return to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + k] : p.h0[b * p.H + k]);
      },
      [&](int g, int64_t j, int64_t k) { return to_acc<T, A>(p.w_hh[(g * p.H + j) * p.H + k]); }, s);
}

// The cell of unit j, row b, from the recurrent products of gates r, z, n (acc[0..2]; acc may hold more).
template <typename T, typename A, int NA>
LF_HOST_DEVICE void gru_fwd_cell(const GruFwdStepParams<T, A>& p, int64_t b, int64_t j, const A (&acc)[NA]) {
  const int64_t H = p.H;
  GruGates<A> x;
  if (p.xw_ln) {
    const A* xw = p.xw_ln + b * 3 * H;
    x = {xw[j], xw[H + j], xw[2 * H + j]};
  } else {
    const T* xw = p.xw + b * 3 * H;
    x = {to_acc<T, A>(xw[j]), to_acc<T, A>(xw[H + j]), to_acc<T, A>(xw[2 * H + j])};
  }
  GruGates<A> hh{acc[0], acc[1], acc[2]};
  if (p.b_hh) {
    hh.r += to_acc<T, A>(p.b_hh[j]);
    hh.z += to_acc<T, A>(p.b_hh[H + j]);
    hh.n += to_acc<T, A>(p.b_hh[2 * H + j]);
  }
  const A h_prev = to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + j] : p.h0[b * H + j]);
  GruGates<A> act;
  A h;
  gru_cell_forward(x, hh, h_prev, act, h);
  if (p.zo_h.data) h = zoneout_forward(p.zo_h.at(b, j), h_prev, h);
  A* w = p.ws + b * p.ld_ws;
  w[j] = act.r;
  w[H + j] = act.z;
  w[2 * H + j] = act.n;
  w[3 * H + j] = hh.n;
  p.h_out[b * p.ld_out + j] = static_cast<T>(h);
  if (b >= p.end_lo && b < p.end_hi) p.h_n[b * H + j] = static_cast<T>(h);
}

template <typename T, typename A>
LF_HOST_DEVICE void gru_fwd_epilogue(const GruFwdStepParams<T, A>& p, int bx, int by, int tx, int ty,
                                     const A (&acc)[3]) {
  const int64_t j = int64_t(bx) * kJT + tx, b = int64_t(by) * kBT + ty;
  if (b >= p.rows || j >= p.H) return;
  if (p.rec) {
    const A* r = p.rec + b * 3 * p.H;
    const A from_gemm[3] = {r[j], r[p.H + j], r[2 * p.H + j]};
    gru_fwd_cell(p, b, j, from_gemm);
    return;
  }
  gru_fwd_cell(p, b, j, acc);
}

// Lengths of the GRU reductions (0 when a GEMM computed them).
template <typename T, typename A>
LF_HOST_DEVICE int64_t gru_fwd_reduction_length(const GruFwdStepParams<T, A>& p) {
  return p.rec ? 0 : p.H;
}
template <typename T, typename A>
LF_HOST_DEVICE int64_t gru_bwd_reduction_length(const GruBwdStepParams<T, A>& p) {
  return p.rec ? 0 : 3 * p.H;
}

// Stages dGh_later[rows, k0:k0+kKT] and W_hhᵀ[units of this block, k0:k0+kKT] (k over 3H).
template <typename T, typename A>
LF_HOST_DEVICE void gru_bwd_load_tiles(const GruBwdStepParams<T, A>& p, int bx, int by, int tid, int64_t k0,
                                       TileSmem<A, 1>& s) {
  const int64_t G = 3 * p.H;
  load_tiles(
      bx, by, tid, k0, G, p.rows < p.n_later ? p.rows : p.n_later, p.H, 1,
      [&](int64_t b, int64_t k) { return p.dgh_later[b * G + k]; },
      [&](int, int64_t j, int64_t k) { return to_acc<T, A>(p.w_hh_t[j * G + k]); }, s);
}

// The cell backward of unit j, row b, from the recurrent product dGh_later·W_hh at (b, j).
template <typename T, typename A>
LF_HOST_DEVICE void gru_bwd_cell(const GruBwdStepParams<T, A>& p, int64_t b, int64_t j, A recurrent) {
  const int64_t H = p.H;
  A rec;
  if (b < p.n_later) {
    // h_t reaches the later step through its recurrent product, through z_later ⊙ h_t and, with zoneout, directly.
    A dh_later = p.dh_later[b * H + j], to_h = A(0);
    if (p.zo_h_later.data) dh_later = zoneout_backward(p.zo_h_later.at(b, j), dh_later, to_h);
    rec = recurrent + p.ws_later[b * p.ld_ws + H + j] * dh_later;
    if (p.zo_h_later.data) rec += to_h;
  } else {
    rec = to_acc<T, A>(p.grad_hn[b * H + j]);
  }
  const A dh = rec + to_acc<T, A>(p.gout[b * p.ld_out + j]);
  p.dh[b * H + j] = dh;
  const A* w = p.ws + b * p.ld_ws;
  const GruGates<A> act{w[j], w[H + j], w[2 * H + j]};
  const A h_prev = to_acc<T, A>(b < p.n_prev ? p.h_prev[b * p.ld_out + j] : p.h0[b * H + j]);
  A dh_candidate = dh, unused = A(0);
  if (p.zo_h.data) dh_candidate = zoneout_backward(p.zo_h.at(b, j), dh, unused);
  GruGates<A> dx, dhh;
  A direct;
  gru_cell_backward(act, w[3 * H + j], h_prev, dh_candidate, dx, dhh, direct);
  A* gx = p.dgx + b * 3 * H;
  A* gh = p.dgh + b * 3 * H;
  gx[j] = dx.r;
  gx[H + j] = dx.z;
  gx[2 * H + j] = dx.n;
  gh[j] = dhh.r;
  gh[H + j] = dhh.z;
  gh[2 * H + j] = dhh.n;
}

template <typename T, typename A>
LF_HOST_DEVICE void gru_bwd_epilogue(const GruBwdStepParams<T, A>& p, int bx, int by, int tx, int ty,
                                     const A (&acc)[1]) {
  const int64_t j = int64_t(bx) * kJT + tx, b = int64_t(by) * kBT + ty;
  if (b >= p.rows || j >= p.H) return;
  gru_bwd_cell(p, b, j, p.rec ? p.rec[b * p.H + j] : acc[0]);
}

// Both GRU launches cover units × rows of the widest direction (see widest_grid).
template <typename P>
inline void launch_grid(const DirectionParams<P>& dp, int64_t& gx, int64_t& gy) {
  widest_grid(dp, [](const P& p, int64_t& x, int64_t& y) { fwd_grid(p.H, p.rows, x, y); }, gx, gy);
}

}  // namespace cuda_step
}  // namespace lstm_fused
