// Torch-free descriptions of a sequence and of one time step's pointwise work. The CPU binding fills them
// from tensors; the kernels (cpu/lstm_cpu_pointwise.h) see only sizes, strides and raw pointers.
#pragma once

#include <cstdint>

namespace lstm_fused {

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

// One forward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct LstmFwdStep {
  int64_t H = 0;
  scalar_t* gates = nullptr;       // [rows, ld_ws] cols [0,4H): x·W_ihᵀ + h·W_hhᵀ in, activated gates out
  scalar_t* cells = nullptr;       // [rows, ld_ws] c_t, saved for the backward (gates + 4H)
  int64_t ld_ws = 0;
  const scalar_t* bias = nullptr;  // [4H] b_ih + b_hh (zeros without bias)
  scalar_t* c_state = nullptr;     // [rows, H] c_{t-1} in, c_t out
  scalar_t* h_out = nullptr;       // [rows, ld_h] o·tanh(c_t): the output row, or the projection input
  int64_t ld_h = 0;
  scalar_t* h_state = nullptr;     // [rows, H] second copy of h_t (the recurrent state); nullptr with a projection
};

// One backward step's pointwise pass over rows [0, rows) of step t.
template <typename scalar_t>
struct LstmBwdStep {
  int64_t H = 0;
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
  scalar_t* dgates = nullptr;        // [rows, 4H] pre-activation gradients out
  scalar_t* r_out = nullptr;         // [rows, H] o·tanh(c_t) for W_hr's gradient; set iff there is a projection
};

}  // namespace lstm_fused
