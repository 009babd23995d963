// Torch-free descriptions of a sequence and of one time step's pointwise work. The CPU binding fills them
// from tensors; the kernels (cpu/lstm_cpu_pointwise.h) see only sizes, strides and raw pointers.
#pragma once

#include <cstdint>

#include "kernels/cell_math.h"

namespace lstm_fused {

// Where each gate's block of H columns sits in a row of gates ([rows, G], G = gates·H): nn.LSTM's i, f, g, o,
// or i, g, o for the coupled-gate variant (no forget rows). Peephole weights [3, H] are rows p_i, p_f, p_o,
// or [2, H] = p_i, p_o when coupled.
template <bool kCoupled>
struct GateCols {
  static constexpr int kGates = kCoupled ? 3 : 4;
  LF_HOST_DEVICE static int64_t i(int64_t) { return 0; }
  LF_HOST_DEVICE static int64_t f(int64_t H) { return H; }  // not present when coupled
  LF_HOST_DEVICE static int64_t g(int64_t H) { return kCoupled ? H : 2 * H; }
  LF_HOST_DEVICE static int64_t o(int64_t H) { return kCoupled ? 2 * H : 3 * H; }
  LF_HOST_DEVICE static int64_t peep_i(int64_t) { return 0; }
  LF_HOST_DEVICE static int64_t peep_f(int64_t H) { return H; }  // not present when coupled
  LF_HOST_DEVICE static int64_t peep_o(int64_t H) { return kCoupled ? H : 2 * H; }
};

// Where the rows of time step t live in the row-major sequence matrices [N, ...].
// Padded input is the case batch_sizes[t] == B for every t (N = T·B); a PackedSequence has
// non-increasing batch_sizes, so the rows active at t are always rows [0, batch_sizes[t]) of the batch.
struct SeqLayout {
  int64_t T = 0;                         // time steps
  int64_t B = 0;                         // rows at the widest step, batch_sizes[0]
  int64_t N = 0;                         // total rows, sum of batch_sizes
  const int64_t* batch_sizes = nullptr;  // [T] rows active at step t (host memory)
  const int64_t* offsets = nullptr;      // [T] first row of step t in the [N, ...] matrices
  bool reverse = false;                  // process t = T-1 .. 0

  // Time index of the s-th step in processing order.
  int64_t time_at(int64_t s) const { return reverse ? T - 1 - s : s; }

  // The state step t starts from: rows [0, n) continue rows [0, n) of step `prev` (the previous step in
  // processing order); rows [n, batch_sizes[t]) start from the initial state. With a PackedSequence in
  // the reverse direction, sequences that end early start there, part way through the loop.
  void prev_rows(int64_t t, int64_t& prev, int64_t& n) const {
    if (!reverse) {
      prev = t - 1;
      n = t == 0 ? 0 : batch_sizes[t];
    } else {
      prev = t + 1;
      n = t == T - 1 ? 0 : batch_sizes[t + 1];
    }
  }
};

// A zoneout mask seen from one step: element (b, j) of the step's rows at data[b·ld + j·col] (an expanded scalar
// has ld = col = 0). Absent: data points at a zero, which keeps nothing.
template <typename acc_t>
struct ZoneoutMask {
  const acc_t* data = nullptr;
  int64_t ld = 0, col = 0;
  LF_HOST_DEVICE acc_t at(int64_t b, int64_t j) const { return data[b * ld + j * col]; }
  // The same mask from `rows` rows further on.
  ZoneoutMask advanced(int64_t rows) const { return {data + rows * ld, ld, col}; }
};

// One forward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct LstmFwdStep {
  int64_t H = 0;
  bool coupled = false;            // gates i, g, o with f = 1 − i (G = 3H), else i, f, g, o (G = 4H)
  scalar_t* gates = nullptr;       // [rows, ld_ws] cols [0,G): x·W_ihᵀ + h·W_hhᵀ in, activated gates out
  scalar_t* cells = nullptr;       // [rows, ld_ws] c_t, saved for the backward (gates + G)
  int64_t ld_ws = 0;               // G + H
  const scalar_t* bias = nullptr;  // [G] b_ih + b_hh (zeros without bias)
  const scalar_t* peep = nullptr;  // [3 or 2, H] peephole weights, or nullptr
  scalar_t* c_state = nullptr;     // [rows, H] c_{t-1} in, c_t out
  scalar_t* h_out = nullptr;       // [rows, ld_h] o·tanh(c_t): the output row, or the projection input
  int64_t ld_h = 0;
  scalar_t* h_state = nullptr;     // [rows, H] second copy of h_t (the recurrent state); nullptr with a projection
  // Zoneout (zoneout set): h (without a projection; with one it follows the projection GEMM) and c keep m of
  // their previous value; `cells` then holds the candidate c̃_t and cells_zoned the zoned-out c_t.
  bool zoneout = false;
  ZoneoutMask<scalar_t> zo_h, zo_c;
  scalar_t* cells_zoned = nullptr;  // [rows, ld_ws] c_t = m ⊙ c_{t-1} + (1 − m) ⊙ c̃_t (cells + H)
  // Layer norm (ln_ih set): each workspace row holds at gates + ln_col x̂_ih [G] (normalised already), x̂_hh [G] (the raw
  // recurrent product on entry, normalised in place), then ĉ [H] and the three rows' reciprocal deviations [3].
  const scalar_t* ln_ih = nullptr;   // [G] γ_ih
  const scalar_t* ln_hh = nullptr;   // [G] γ_hh
  const scalar_t* ln_c_w = nullptr;  // [H] γ_c
  const scalar_t* ln_c_b = nullptr;  // [H] β_c
  int64_t ln_col = 0;
};

// One backward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct LstmBwdStep {
  int64_t H = 0;
  bool coupled = false;
  const scalar_t* peep = nullptr;    // [3 or 2, H] peephole weights, or nullptr
  const scalar_t* gates = nullptr;   // [rows, ld_ws] activated gates of step t
  const scalar_t* cells = nullptr;   // [rows, ld_ws] c_t
  int64_t ld_ws = 0;
  const scalar_t* c_prev = nullptr;  // [n_prev, ld_ws] c of the previous step in processing order
  int64_t n_prev = 0;                // rows below n_prev continue that step; the rest start from c_init
  const scalar_t* c_init = nullptr;  // [rows, H] c0
  const scalar_t* dh = nullptr;      // [rows, ld_dh] gradient reaching o·tanh(c_t) ...
  int64_t ld_dh = 0;
  const scalar_t* dh_extra = nullptr;  // [rows, ld_dh_extra] ... plus this term (no projection only)
  int64_t ld_dh_extra = 0;
  scalar_t* dc_state = nullptr;      // [rows, H] dc_t in (from step t+1 or c_n), dc_{t-1} out
  scalar_t* dgates = nullptr;        // [rows, G] pre-activation gradients out
  scalar_t* r_out = nullptr;         // [rows, H] o·tanh(c_t) for W_hr's gradient; set iff there is a projection
  // Zoneout: `cells` are the candidates c̃_t, c_prev the zoned-out c_{t-1}. Without a projection the step splits
  // dh (+ dh_extra) itself and writes the part m ⊙ dh for h_{t-1} into dh_carry; with one the caller has split it.
  bool zoneout = false;
  ZoneoutMask<scalar_t> zo_h, zo_c;
  scalar_t* dh_carry = nullptr;      // [rows, H] out (no projection): m ⊙ (dh + dh_extra)
  // Layer norm (ln_ih set; the workspace rows as in LstmFwdStep): the pre-activation gradients before the layer norms
  // go to dpre, dgates gets the input product's and dgates_rec the recurrent product's.
  const scalar_t* ln_ih = nullptr;
  const scalar_t* ln_hh = nullptr;
  const scalar_t* ln_c_w = nullptr;
  const scalar_t* ln_c_b = nullptr;
  int64_t ln_col = 0;
  scalar_t* dpre = nullptr;          // [rows, G] out
  scalar_t* dgates_rec = nullptr;    // [rows, G] out
  scalar_t* dy_c = nullptr;          // [rows, H] out: gradient of γ_c ⊙ ĉ + β_c (γ_c's and β_c's sum it)
  // (CPU) Per batch slot, in double, the sums over the steps so far of dpre, dpre ⊙ x̂_ih, dpre ⊙ x̂_hh, dy_c ⊙ ĉ and
  // dy_c: the bias's, gains' and β_c's gradients, summed while the row is in cache. nullptr: the caller sums them.
  double* ln_sums = nullptr;         // [slots, 3G + 2H], slot b at row b of the step
};

// One GRU forward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct GruFwdStep {
  int64_t H = 0;
  const scalar_t* xw = nullptr;    // [rows, 3H] x·W_ihᵀ + b_ih (r, z, n)
  const scalar_t* hh = nullptr;    // [rows, 3H] h_{t-1}·W_hhᵀ, without b_hh
  const scalar_t* b_hh = nullptr;  // [3H] (zeros without bias)
  scalar_t* ws = nullptr;          // [rows, ld_ws] out: r, z, n and h_n = (h·W_hhᵀ + b_hh)_n, for the backward
  int64_t ld_ws = 0;               // 4H, or more with layer norm
  scalar_t* h_state = nullptr;     // [rows, H] h_{t-1} in, h_t out
  scalar_t* h_out = nullptr;       // [rows, ld_h] h_t (the layer output rows)
  int64_t ld_h = 0;
  bool zoneout = false;            // h_t = m ⊙ h_{t-1} + (1 − m) ⊙ h̃_t
  ZoneoutMask<scalar_t> zo_h;
};

// One GRU backward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct GruBwdStep {
  int64_t H = 0;
  const scalar_t* ws = nullptr;      // [rows, ld_ws] this step's r, z, n, h_n
  int64_t ld_ws = 0;
  const scalar_t* h_prev = nullptr;  // [n_prev, ld_hp] output rows of the previous step (h_{t-1})
  int64_t ld_hp = 0;
  int64_t n_prev = 0;                // rows below continue the previous step; the rest started from h0
  const scalar_t* h0 = nullptr;      // [rows, H]
  const scalar_t* gout = nullptr;    // [rows, ld_gout] gradient of this step's output rows
  int64_t ld_gout = 0;
  scalar_t* dh_state = nullptr;      // [rows, H] in: recurrent gradient of h_t; out: z ⊙ dh (direct part for h_{t-1})
  scalar_t* dgx = nullptr;           // [rows, 3H] out: input-side pre-activation gradients
  scalar_t* dgh = nullptr;           // [rows, 3H] out: recurrent-side pre-activation gradients
  bool zoneout = false;              // as in GruFwdStep: dh_state out also carries m ⊙ dh
  ZoneoutMask<scalar_t> zo_h;
};

}  // namespace lstm_fused
