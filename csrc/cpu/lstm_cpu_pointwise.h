// Pointwise passes of one time step on the CPU over the flattened element range [begin, end) of
// rows × H. Torch-free: the binding splits the range across threads with at::parallel_for.
#pragma once

#include <algorithm>
#include <type_traits>

#include "kernels/cell_math.h"
#include "kernels/recurrent_params.h"

namespace lstm_fused {

#if defined(__GNUC__)
#define LF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define LF_ALWAYS_INLINE inline
#endif

// Row b's run of hidden units inside the flattened range [begin, end) of rows × H.
LF_ALWAYS_INLINE void row_run(int64_t b, int64_t begin, int64_t end, int64_t H, int64_t& j0, int64_t& j1) {
  j0 = std::max<int64_t>(begin - b * H, 0);
  j1 = std::min<int64_t>(end - b * H, H);
}

// kProj: the layer has a projection, so h goes to the projection input only (the state is written after
// the projection GEMM). kPeephole / kCoupled: the LSTM variant (cell_math.h). kZoneout: c (and, without a
// projection, h) keep part of their previous value (p.zo_c, p.zo_h). Template flags keep the inner loops
// branch-free, hence vectorisable.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled, bool kZoneout = false>
LF_ALWAYS_INLINE void lstm_fwd_rows(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  const scalar_t* __restrict bias = p.bias;
  const scalar_t* __restrict pi = kPeephole ? p.peep + C::peep_i(H) : nullptr;
  const scalar_t* __restrict pf = kPeephole && !kCoupled ? p.peep + C::peep_f(H) : nullptr;
  const scalar_t* __restrict po = kPeephole ? p.peep + C::peep_o(H) : nullptr;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    scalar_t* __restrict g = p.gates + b * p.ld_ws;
    scalar_t* __restrict cell = p.cells + b * p.ld_ws;
    scalar_t* __restrict cs = p.c_state + b * H;
    scalar_t* __restrict h = p.h_out + b * p.ld_h;
    scalar_t* __restrict hs = kProj ? nullptr : p.h_state + b * H;
    // Zoneout without c's own zoneout writes the candidate again here (cells_zoned == cells): no aliasing store
    // can differ from the other.
    scalar_t* czd = kZoneout ? p.cells_zoned + b * p.ld_ws : nullptr;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      LstmGates<scalar_t> pre{g[ci + j] + bias[ci + j], kCoupled ? scalar_t(0) : g[cf + j] + bias[cf + j],
                              g[cg + j] + bias[cg + j], g[co + j] + bias[co + j]};
      Peepholes<scalar_t> peep;
      if constexpr (kPeephole) {
        peep.i = pi[j];
        if constexpr (!kCoupled) peep.f = pf[j];
        peep.o = po[j];
      }
      LstmGates<scalar_t> act;
      scalar_t c, hv;
      lstm_cell_forward<scalar_t, kPeephole, kCoupled>(pre, cs[j], act, c, hv, peep);
      g[ci + j] = act.i;
      if constexpr (!kCoupled) g[cf + j] = act.f;
      g[cg + j] = act.g;
      g[co + j] = act.o;
      cell[j] = c;
      if constexpr (kZoneout) {
        const scalar_t cz = zoneout_forward(p.zo_c.at(b, j), cs[j], c);
        czd[j] = cz;
        cs[j] = cz;
        if constexpr (!kProj) hv = zoneout_forward(p.zo_h.at(b, j), hs[j], hv);
      } else {
        cs[j] = c;
      }
      h[j] = hv;
      if constexpr (!kProj) hs[j] = hv;
    }
  }
}

template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
LF_ALWAYS_INLINE void lstm_fwd_rows_zoneout(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  lstm_fwd_rows<scalar_t, kProj, kPeephole, kCoupled, true>(p, begin, end);
}

// Runtime flags to template arguments, with plain branches: the callee must inline into the per-ISA clones
// (a generic-lambda dispatcher would not, and the loops would compile for the baseline ISA).
#define LF_VARIANT_DISPATCH(FN, proj, peep, coupled, ...)            \
  do {                                                               \
    if (proj) {                                                      \
      if (peep) {                                                    \
        if (coupled) FN<scalar_t, true, true, true>(__VA_ARGS__);    \
        else FN<scalar_t, true, true, false>(__VA_ARGS__);           \
      } else {                                                       \
        if (coupled) FN<scalar_t, true, false, true>(__VA_ARGS__);   \
        else FN<scalar_t, true, false, false>(__VA_ARGS__);          \
      }                                                              \
    } else {                                                         \
      if (peep) {                                                    \
        if (coupled) FN<scalar_t, false, true, true>(__VA_ARGS__);   \
        else FN<scalar_t, false, true, false>(__VA_ARGS__);          \
      } else {                                                       \
        if (coupled) FN<scalar_t, false, false, true>(__VA_ARGS__);  \
        else FN<scalar_t, false, false, false>(__VA_ARGS__);         \
      }                                                              \
    }                                                                \
  } while (0)

// The passes with and without zoneout are separate entry points: a layer without zoneout runs the very code (and
// rounding) it ran before zoneout existed.
template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_fwd_pointwise(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  LF_VARIANT_DISPATCH(lstm_fwd_rows, p.h_state == nullptr, p.peep != nullptr, p.coupled, p, begin, end);
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_fwd_pointwise_zoneout(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  LF_VARIANT_DISPATCH(lstm_fwd_rows_zoneout, p.h_state == nullptr, p.peep != nullptr, p.coupled, p, begin, end);
}

// Without a projection dh is the sum of two terms (recurrent + output gradient); with one it is a single
// term (already mapped back through W_hr) and o·tanh(c) is stored for W_hr's gradient. kZoneout: `cells` are the
// candidates c̃_t; the gradients of c_t (and, without a projection, of h_t) split into the candidates' and the
// previous states' parts.
template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled, bool kZoneout = false>
LF_ALWAYS_INLINE void lstm_bwd_rows(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  using C = GateCols<kCoupled>;
  const int64_t H = p.H, ci = C::i(H), cf = C::f(H), cg = C::g(H), co = C::o(H);
  const int64_t G = C::kGates * H;
  const scalar_t* __restrict pi = kPeephole ? p.peep + C::peep_i(H) : nullptr;
  const scalar_t* __restrict pf = kPeephole && !kCoupled ? p.peep + C::peep_f(H) : nullptr;
  const scalar_t* __restrict po = kPeephole ? p.peep + C::peep_o(H) : nullptr;
  for (int64_t b = begin / H; b * H < end; ++b) {
    int64_t j0, j1;
    row_run(b, begin, end, H, j0, j1);
    const scalar_t* __restrict g = p.gates + b * p.ld_ws;
    const scalar_t* __restrict cell = p.cells + b * p.ld_ws;
    const scalar_t* __restrict cp = b < p.n_prev ? p.c_prev + b * p.ld_ws : p.c_init + b * H;
    const scalar_t* __restrict dh = p.dh + b * p.ld_dh;
    const scalar_t* __restrict dh2 = kProj ? nullptr : p.dh_extra + b * p.ld_dh_extra;
    scalar_t* __restrict dcs = p.dc_state + b * H;
    scalar_t* __restrict dg = p.dgates + b * G;
    scalar_t* __restrict r = kProj ? p.r_out + b * H : nullptr;
    scalar_t* __restrict carry = kZoneout && !kProj ? p.dh_carry + b * H : nullptr;
#pragma GCC ivdep
    for (int64_t j = j0; j < j1; ++j) {
      const scalar_t ai = g[ci + j];
      const LstmGates<scalar_t> act{ai, kCoupled ? scalar_t(1) - ai : g[cf + j], g[cg + j], g[co + j]};
      scalar_t dhv;
      if constexpr (kProj)
        dhv = dh[j];
      else
        dhv = dh[j] + dh2[j];
      scalar_t dc_next = dcs[j], dc_carry = 0;
      if constexpr (kZoneout) {
        if constexpr (!kProj) {
          scalar_t dh_carry = 0;
          dhv = zoneout_backward(p.zo_h.at(b, j), dhv, dh_carry);
          carry[j] = dh_carry;
        }
        dc_next = zoneout_backward(p.zo_c.at(b, j), dc_next, dc_carry);
      }
      Peepholes<scalar_t> peep;
      if constexpr (kPeephole) {
        peep.i = pi[j];
        if constexpr (!kCoupled) peep.f = pf[j];
        peep.o = po[j];
      }
      LstmGates<scalar_t> dpre;
      scalar_t dc_prev;
      lstm_cell_backward<scalar_t, kPeephole, kCoupled>(act, cell[j], cp[j], dhv, dc_next, dpre, dc_prev, peep);
      dg[ci + j] = dpre.i;
      if constexpr (!kCoupled) dg[cf + j] = dpre.f;
      dg[cg + j] = dpre.g;
      dg[co + j] = dpre.o;
      if constexpr (kZoneout)
        dcs[j] = dc_prev + dc_carry;
      else
        dcs[j] = dc_prev;
      if constexpr (kProj) r[j] = lstm_hidden_from_saved(act, cell[j]);
    }
  }
}

template <typename scalar_t, bool kProj, bool kPeephole, bool kCoupled>
LF_ALWAYS_INLINE void lstm_bwd_rows_zoneout(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  lstm_bwd_rows<scalar_t, kProj, kPeephole, kCoupled, true>(p, begin, end);
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_bwd_pointwise(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  LF_VARIANT_DISPATCH(lstm_bwd_rows, p.r_out != nullptr, p.peep != nullptr, p.coupled, p, begin, end);
}

template <typename scalar_t>
LF_ALWAYS_INLINE void lstm_bwd_pointwise_zoneout(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  LF_VARIANT_DISPATCH(lstm_bwd_rows_zoneout, p.r_out != nullptr, p.peep != nullptr, p.coupled, p, begin, end);
}

// Entry points compiled for several x86-64 levels (AVX-512, AVX2+FMA, baseline) and picked at load time,
// so the pointwise loops vectorise on the machine at hand without requiring AVX-512 from every user.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LF_CPU_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LF_CPU_MULTIVERSION
#endif

void lstm_fwd_pointwise_f32(const LstmFwdStep<float>& p, int64_t begin, int64_t end);
void lstm_bwd_pointwise_f32(const LstmBwdStep<float>& p, int64_t begin, int64_t end);
void lstm_fwd_pointwise_zoneout_f32(const LstmFwdStep<float>& p, int64_t begin, int64_t end);
void lstm_bwd_pointwise_zoneout_f32(const LstmBwdStep<float>& p, int64_t begin, int64_t end);

template <typename scalar_t>
void lstm_fwd_pointwise_dispatch(const LstmFwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    p.zoneout ? lstm_fwd_pointwise_zoneout_f32(p, begin, end) : lstm_fwd_pointwise_f32(p, begin, end);
  else
    p.zoneout ? lstm_fwd_pointwise_zoneout(p, begin, end) : lstm_fwd_pointwise(p, begin, end);
}

template <typename scalar_t>
void lstm_bwd_pointwise_dispatch(const LstmBwdStep<scalar_t>& p, int64_t begin, int64_t end) {
  if constexpr (std::is_same_v<scalar_t, float>)
    p.zoneout ? lstm_bwd_pointwise_zoneout_f32(p, begin, end) : lstm_bwd_pointwise_f32(p, begin, end);
  else
    p.zoneout ? lstm_bwd_pointwise_zoneout(p, begin, end) : lstm_bwd_pointwise(p, begin, end);
}

}  // namespace lstm_fused
