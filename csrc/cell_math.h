// Per-element gate math of the fused cells, shared by the CPU and CUDA paths so the two cannot drift.
// Everything here is a pure function of scalars in the accumulate type (float for float/half/bfloat16,
// double for double): no pointers, no indexing, no torch.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LF_HOST_DEVICE inline
#endif

namespace lstm_fused {

LF_HOST_DEVICE float lf_exp(float x) { return ::expf(x); }
LF_HOST_DEVICE double lf_exp(double x) { return ::exp(x); }
LF_HOST_DEVICE float lf_tanh(float x) { return ::tanhf(x); }
LF_HOST_DEVICE double lf_tanh(double x) { return ::tanh(x); }

// exp(-x) overflows to inf for very negative x, giving exactly 0: no NaN at either tail.
template <typename acc_t>
LF_HOST_DEVICE acc_t lf_sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + lf_exp(-x));
}

// One value per gate, in nn.LSTM's row order of weight_ih/weight_hh: input, forget, cell (g), output.
template <typename acc_t>
struct LstmGates {
  acc_t i, f, g, o;
};

// Forward of one LSTM unit. `pre` are the pre-activations (x·W_ihᵀ + h·W_hhᵀ + biases) of that unit's
// four gates. Returns the activated gates (saved for the backward), the new cell c and the new
// hidden value h = o·tanh(c) (before any projection).
template <typename acc_t>
LF_HOST_DEVICE void lstm_cell_forward(const LstmGates<acc_t>& pre, acc_t c_prev, LstmGates<acc_t>& act,
                                      acc_t& c, acc_t& h) {
  act.i = lf_sigmoid(pre.i);
  act.f = lf_sigmoid(pre.f);
  act.g = lf_tanh(pre.g);
  act.o = lf_sigmoid(pre.o);
  c = act.f * c_prev + act.i * act.g;
  h = act.o * lf_tanh(c);
}

// Backward of one LSTM unit from what the forward saved (activated gates and c) plus c_prev.
// dh: gradient reaching h = o·tanh(c) (output gradient plus the recurrent one, after any projection).
// dc_next: gradient reaching c from the next step (or from c_n). Writes the pre-activation gradients
// (what the weight and input GEMMs consume) and the gradient for c_prev.
template <typename acc_t>
LF_HOST_DEVICE void lstm_cell_backward(const LstmGates<acc_t>& act, acc_t c, acc_t c_prev, acc_t dh,
                                       acc_t dc_next, LstmGates<acc_t>& dpre, acc_t& dc_prev) {
  const acc_t one = acc_t(1);
  const acc_t tc = lf_tanh(c);
  const acc_t dc = dc_next + dh * act.o * (one - tc * tc);
  dpre.i = dc * act.g * act.i * (one - act.i);
  dpre.f = dc * c_prev * act.f * (one - act.f);
  dpre.g = dc * act.i * (one - act.g * act.g);
  dpre.o = dh * tc * act.o * (one - act.o);
  dc_prev = dc * act.f;
}

// The projection input o·tanh(c), recomputed in the backward rather than saved.
template <typename acc_t>
LF_HOST_DEVICE acc_t lstm_hidden_from_saved(const LstmGates<acc_t>& act, acc_t c) {
  return act.o * lf_tanh(c);
}

}  // namespace lstm_fused
