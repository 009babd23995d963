// Per-element gate math of the fused cells, shared by the CPU and CUDA paths so the two cannot drift.
// Everything here is a pure function of scalars in the accumulate type (float for float/half/bfloat16,
// double for double): no pointers, no indexing, no torch.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LF_HOST_DEVICE inline
#endif

namespace lstm_fused {

#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
// Host float exp and tanh that the compiler can vectorise: branch-free, no libm calls (glibc's expf/tanhf
// are scalar calls and were ~30% of a CPU step). Accurate to a few ulp over the range the cells use.
namespace detail {
inline float bits_to_float(int32_t i) {
  float f;
  __builtin_memcpy(&f, &i, sizeof f);
  return f;
}
inline int32_t float_to_bits(float f) {
  int32_t i;
  __builtin_memcpy(&i, &f, sizeof i);
  return i;
}
// exp(x) = 2^n·exp(r), n = round(x/ln2), |r| <= ln2/2, exp(r) by its degree-7 Taylor polynomial
// (truncation < 6e-9 relative). x is clamped so 2^n stays a normal float: below -87.3 the result is
// ~1e-38 instead of smaller, above 88 it saturates at ~1.6e38 (the cells only divide by it).
inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5·2^23: adding it rounds to an integer held in the low bits
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  const int32_t ni = float_to_bits(t) - float_to_bits(shifter);
  float r = x - n * 0.693145751953125f;  // ln2 split in a high part exact in float and a low part
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_to_float((ni + 127) << 23);
}
// tanh(x): an odd Taylor polynomial near 0 (where 1 - 2/(e^2x + 1) would cancel), else that formula.
inline float tanh_approx(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float x2 = x * x;
  float q = 62.0f / 2835.0f;
  q = q * x2 - 17.0f / 315.0f;
  q = q * x2 + 2.0f / 15.0f;
  q = q * x2 - 1.0f / 3.0f;
  const float small = x + x * x2 * q;
  const float big = 1.0f - 2.0f / (exp_approx(2.0f * ax) + 1.0f);
  const float signed_big = x < 0.0f ? -big : big;
  return ax < 0.2f ? small : signed_big;
}
}  // namespace detail
inline float lf_exp(float x) { return detail::exp_approx(x); }
inline float lf_tanh(float x) { return detail::tanh_approx(x); }
#else
__device__ __forceinline__ float lf_exp(float x) { return ::expf(x); }
__device__ __forceinline__ float lf_tanh(float x) { return ::tanhf(x); }
#endif
LF_HOST_DEVICE double lf_exp(double x) { return ::exp(x); }
LF_HOST_DEVICE double lf_tanh(double x) { return ::tanh(x); }

// No NaN at either tail: for very negative x, exp(-x) is inf (device, double) or clamped near 1.6e38 (host
// float), giving 0 or ~6e-39.
template <typename acc_t>
LF_HOST_DEVICE acc_t lf_sigmoid(acc_t x) {
  return acc_t(1) / (acc_t(1) + lf_exp(-x));
}

// One value per gate, in nn.LSTM's row order of weight_ih/weight_hh: input, forget, cell (g), output.
template <typename acc_t>
struct LstmGates {
  acc_t i, f, g, o;
};

// The LSTM variants lstm_fused fuses. Peephole (Gers & Schmidhuber): i and f also see c_{t-1}, o sees c_t,
// through per-unit weights p. Coupled input-forget gate (CIFG): f = 1 − i and the layer has no forget-gate
// rows (gates i, g, o). Both flags together give a coupled gate with peepholes p_i, p_o.
template <typename acc_t>
struct Peepholes {
  acc_t i = 0, f = 0, o = 0;
};

// Forward of one LSTM unit. `pre` are the pre-activations (x·W_ihᵀ + h·W_hhᵀ + biases) of that unit's
// gates (pre.f unused when coupled). Returns the activated gates (saved for the backward), the new cell c and
// the new hidden value h = o·tanh(c) (before any projection).
// The gates and the new cell alone (lstm_cell_forward's first part; a layer-normalised cell takes h from LN(c)).
template <typename acc_t, bool kPeephole = false, bool kCoupled = false>
LF_HOST_DEVICE void lstm_cell_gates(const LstmGates<acc_t>& pre, acc_t c_prev, LstmGates<acc_t>& act, acc_t& c,
                                    const Peepholes<acc_t>& peep = {}) {
  if constexpr (kPeephole) {
    act.i = lf_sigmoid(pre.i + peep.i * c_prev);
    act.f = kCoupled ? acc_t(1) - act.i : lf_sigmoid(pre.f + peep.f * c_prev);
    act.g = lf_tanh(pre.g);
    c = act.f * c_prev + act.i * act.g;
    act.o = lf_sigmoid(pre.o + peep.o * c);  // the output gate sees the new cell
  } else {
    act.i = lf_sigmoid(pre.i);
    act.f = kCoupled ? acc_t(1) - act.i : lf_sigmoid(pre.f);
    act.g = lf_tanh(pre.g);
    act.o = lf_sigmoid(pre.o);
    c = act.f * c_prev + act.i * act.g;
  }
}

template <typename acc_t, bool kPeephole = false, bool kCoupled = false>
LF_HOST_DEVICE void lstm_cell_forward(const LstmGates<acc_t>& pre, acc_t c_prev, LstmGates<acc_t>& act, acc_t& c,
                                      acc_t& h, const Peepholes<acc_t>& peep = {}) {
  lstm_cell_gates<acc_t, kPeephole, kCoupled>(pre, c_prev, act, c, peep);
  h = act.o * lf_tanh(c);
}

// The backward through the gates and the cell update, from dc, the whole gradient reaching the new cell (the output
// path's and the peephole's included): writes dpre.i, dpre.f, dpre.g and the gradient for c_prev.
template <typename acc_t, bool kPeephole = false, bool kCoupled = false>
LF_HOST_DEVICE void lstm_cell_backward_gates(const LstmGates<acc_t>& act, acc_t c_prev, acc_t dc, LstmGates<acc_t>& dpre,
                                             acc_t& dc_prev, const Peepholes<acc_t>& peep = {}) {
  const acc_t one = acc_t(1);
  if constexpr (kCoupled) {
    // c = (1 − i)·c_prev + i·g
    dpre.i = dc * (act.g - c_prev) * act.i * (one - act.i);
    dpre.f = acc_t(0);
  } else {
    dpre.i = dc * act.g * act.i * (one - act.i);
    dpre.f = dc * c_prev * act.f * (one - act.f);
  }
  dpre.g = dc * act.i * (one - act.g * act.g);
  dc_prev = dc * act.f;
  if constexpr (kPeephole) dc_prev += dpre.i * peep.i + (kCoupled ? acc_t(0) : dpre.f * peep.f);
}

// Backward of one LSTM unit from what the forward saved (activated gates and c) plus c_prev.
// dh: gradient reaching h = o·tanh(c) (output gradient plus the recurrent one, after any projection).
// dc_next: gradient reaching c from the next step (or from c_n). Writes the pre-activation gradients
// (what the weight and input GEMMs consume; dpre.f is 0 when coupled) and the gradient for c_prev. The
// peephole weights' gradients are dpre.i·c_prev, dpre.f·c_prev and dpre.o·c, summed over rows by the caller.
template <typename acc_t, bool kPeephole = false, bool kCoupled = false>
LF_HOST_DEVICE void lstm_cell_backward(const LstmGates<acc_t>& act, acc_t c, acc_t c_prev, acc_t dh,
                                       acc_t dc_next, LstmGates<acc_t>& dpre, acc_t& dc_prev,
                                       const Peepholes<acc_t>& peep = {}) {
  const acc_t one = acc_t(1);
  const acc_t tc = lf_tanh(c);
  dpre.o = dh * tc * act.o * (one - act.o);
  acc_t dc = dc_next + dh * act.o * (one - tc * tc);
  if constexpr (kPeephole) dc += dpre.o * peep.o;
  lstm_cell_backward_gates<acc_t, kPeephole, kCoupled>(act, c_prev, dc, dpre, dc_prev, peep);
}

// The projection input o·tanh(c), recomputed in the backward rather than saved.
template <typename acc_t>
LF_HOST_DEVICE acc_t lstm_hidden_from_saved(const LstmGates<acc_t>& act, acc_t c) {
  return act.o * lf_tanh(c);
}

// ---- layer norm (Ba et al. 2016), without its row reductions --------------------------------------------
constexpr double kLayerNormEps = 1e-5;  // ε of every layer norm here: F.layer_norm's default and haste's

// Over a row of n values x̂ = (x − mean)·rstd, rstd = 1/√(var + ε) (var biased). With y = γ ⊙ x̂ (+ β), dx̂ = dy ⊙ γ
// and the row means m1 = mean(dx̂), m2 = mean(dx̂ ⊙ x̂): dx = rstd·(dx̂ − m1 − x̂·m2).
template <typename acc_t>
LF_HOST_DEVICE acc_t layer_norm_backward(acc_t dxhat, acc_t xhat, acc_t rstd, acc_t m1, acc_t m2) {
  return rstd * (dxhat - m1 - xhat * m2);
}

// ---- zoneout (Krueger et al. 2016) --------------------------------------------------------------------
// A state keeps its previous value by m and takes the candidate by 1 − m: m is 0 or 1 in training, the
// probability itself in eval (the expectation). Both functions are exact for m = 0 and finite values.
template <typename acc_t>
LF_HOST_DEVICE acc_t zoneout_forward(acc_t m, acc_t previous, acc_t candidate) {
  return m * previous + (acc_t(1) - m) * candidate;
}

// The gradient d reaching the zoned-out state splits into the candidate's, (1 − m)·d (returned), and the part that
// flows straight to the previous state, m·d (added to `previous_grad`).
template <typename acc_t>
LF_HOST_DEVICE acc_t zoneout_backward(acc_t m, acc_t d, acc_t& previous_grad) {
  previous_grad += m * d;
  return (acc_t(1) - m) * d;
}

// ---- GRU (nn.GRU's equations, gate order r, z, n) -----------------------------------------------------
// r = σ(x_r + h_r), z = σ(x_z + h_z), n = tanh(x_n + r ⊙ h_n), h' = (1 − z) ⊙ n + z ⊙ h, where x_* are the
// input projections with b_ih and h_* the recurrent products with b_hh (kept apart: r gates h_n only).
template <typename acc_t>
struct GruGates {
  acc_t r, z, n;
};

// Returns the activated gates and h_n (the backward needs both) and the new hidden value.
template <typename acc_t>
LF_HOST_DEVICE void gru_cell_forward(const GruGates<acc_t>& x, const GruGates<acc_t>& hh, acc_t h_prev,
                                     GruGates<acc_t>& act, acc_t& h) {
  act.r = lf_sigmoid(x.r + hh.r);
  act.z = lf_sigmoid(x.z + hh.z);
  act.n = lf_tanh(x.n + act.r * hh.n);
  h = (acc_t(1) - act.z) * act.n + act.z * h_prev;
}

// dh: total gradient reaching h'. Writes the gradients of the input-side pre-activations (dx: for W_ih, b_ih,
// the input), of the recurrent-side ones (dhh: for W_hh, b_hh and, through W_hh, h), and the part of h's
// gradient that flows directly (z ⊙ dh). hh_n is the saved recurrent n product (with b_hn).
template <typename acc_t>
LF_HOST_DEVICE void gru_cell_backward(const GruGates<acc_t>& act, acc_t hh_n, acc_t h_prev, acc_t dh,
                                      GruGates<acc_t>& dx, GruGates<acc_t>& dhh, acc_t& dh_prev_direct) {
  const acc_t one = acc_t(1);
  const acc_t dn = dh * (one - act.z) * (one - act.n * act.n);
  const acc_t dz = dh * (h_prev - act.n) * act.z * (one - act.z);
  const acc_t dr = dn * hh_n * act.r * (one - act.r);
  dx.r = dr;
  dx.z = dz;
  dx.n = dn;
  dhh.r = dr;
  dhh.z = dz;
  dhh.n = dn * act.r;
  dh_prev_direct = dh * act.z;
}

}  // namespace lstm_fused
