// The sequence loop of the CUDA path, on tensors: checks, buffers, the cuBLAS GEMMs (through ATen, on the
// current stream) and one step launch per time step through a Runner. cuda/cuda_binding.cpp instantiates it with the
// GPU launchers; testing/cuda_emulation.cpp with a CPU emulation of the same kernels, so everything here but the
// launches themselves is exercised by the CPU test suite.
//
// Runner: template <T, A> void fwd(const DirectionParams<FwdStepParams<T, A>>&) and bwd(..., int mode) launch
// one step; sequence(const std::vector<DirectionParams<Step>>& steps, int64_t B) runs the whole sequence in one
// persistent launch and returns true, or returns false to get the per-step launches.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "host/arg_checks.h"
#include "host/path_stats.h"
#include "kernels/lstm_step_phases.h"
#include "kernels/persistent_phases.h"

namespace lstm_fused {
namespace cuda_driver {

using at::Tensor;

// Which recurrent kernel runs: LSTM_FUSED_CUDA_ALGO=auto (default), step (one fused launch per time step that
// also reduces h·W_hhᵀ), gemm (per step a cuBLAS GEMM for h·W_hhᵀ, then a launch for the cell) or persistent
// (one cooperative launch; an error where it cannot run). Read on every call, so tests can switch.
enum class Algo { kAuto, kStep, kGemm, kPersistent };
inline Algo algo_from_env() {
  const char* v = std::getenv("LSTM_FUSED_CUDA_ALGO");
  if (v == nullptr || *v == '\0' || std::string(v) == "auto") return Algo::kAuto;
  if (std::string(v) == "step") return Algo::kStep;
  if (std::string(v) == "gemm") return Algo::kGemm;
  TORCH_CHECK(std::string(v) == "persistent", "lstm_fused: LSTM_FUSED_CUDA_ALGO must be auto, step, gemm or "
              "persistent, got '", v, "'");
  return Algo::kPersistent;
}

// Batches up to this size take the persistent kernel automatically: per step it stages the whole batch's
// h_{t-1} in every block, which stops paying off against the per-step kernel's wider grid at large batch.
constexpr int64_t kPersistentMaxBatch = 64;

// Where the persistent kernel does not run: whether each step's recurrent product is a cuBLAS GEMM (large
// batches, where a GEMM's tiling beats the fused step kernel's FMA reduction) rather than the step kernel's own.
inline bool gemm_steps(int64_t B) {
  const Algo a = algo_from_env();
  return a == Algo::kGemm || (a == Algo::kAuto && B > kPersistentMaxBatch);
}

// Whether the algorithm and the batch leave the persistent kernel in question at all: decided before a plan is made
// or the step table is copied (both cost time proportional to the sequence on every call).
inline bool persistent_considered(int64_t B) {
  const Algo a = algo_from_env();
  if (a == Algo::kStep || a == Algo::kGemm || B == 0) return false;
  return a == Algo::kPersistent || B <= kPersistentMaxBatch;
}

// A layer pass's recurrent path, counted (host/path_stats.h): the persistent launch of all `steps` where allowed and
// the runner takes it (true), else per-step launches, whose `gemm` says whether each step's product is a GEMM.
template <typename Runner, typename Steps>
bool persistent_or_steps(Runner& run, const Steps& steps, int64_t B, bool allow_persistent, bool& gemm) {
  if (allow_persistent && persistent_considered(B) && run.sequence(persistent::flatten(steps), B)) {
    count_path(RecurrentPath::kPersistent);
    return true;
  }
  gemm = gemm_steps(B);
  count_path(gemm ? RecurrentPath::kGemmStep : RecurrentPath::kStep);
  return false;
}

// out = a·b with out in the accumulate type: for half types a mixed-precision GEMM (half operands, float
// accumulation and result), so the recurrent product keeps float precision up to the cell. The CPU (emulation) has
// no such GEMM: it multiplies the operands converted to float, which are exact.
inline void mm_into(Tensor& out, const Tensor& a, const Tensor& b) {
  if (out.scalar_type() == a.scalar_type()) {
    at::mm_out(out, a, b);
  } else if (a.is_cuda()) {
    at::mm_out(out, a, b, out.scalar_type());
  } else {
    at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
  }
}

// The GEMM path's recurrent product of step `step` (processing order) for one direction: rec[rows of t] =
// h_{t-1}·W_hhᵀ (rec in the accumulate type), from the previous step's output rows (`out_cols`: this direction's
// columns of the layer output, [N, P]) or from h0 (`h0d` [B, P]) for rows that start at t. w_t: W_hhᵀ [P, G].
inline void gemm_prev_hidden(Tensor& rec, const SeqLayout& seq, int64_t step, const Tensor& out_cols, const Tensor& h0d,
                             const Tensor& w_t) {
  const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t];
  int64_t prev, n_prev;
  seq.prev_rows(t, prev, n_prev);
  if (n_prev > 0) {
    Tensor r = rec.narrow(0, 0, n_prev);
    mm_into(r, out_cols.narrow(0, seq.offsets[prev], n_prev), w_t);
  }
  if (bs > n_prev) {
    Tensor r = rec.narrow(0, n_prev, bs - n_prev);
    mm_into(r, h0d.narrow(0, n_prev, bs - n_prev), w_t);
  }
}

// The GEMM path's backward product of the i-th backward step for one direction: rec = dG_later·W_hh over the
// rows the step after t continues (`dg_d` [N, G], `w` [G, P]); rows without a later step are zero (they take
// grad_h_n instead).
inline void gemm_later_grad(Tensor& rec, const SeqLayout& seq, int64_t i, const Tensor& dg_d, const Tensor& w) {
  const int64_t n_steps = seq.T, t = seq.time_at(n_steps - 1 - i), bs = seq.batch_sizes[t];
  const int64_t later = seq.reverse ? t - 1 : t + 1;
  const int64_t n_later = later >= 0 && later < n_steps ? std::min(bs, seq.batch_sizes[later]) : 0;
  if (n_later > 0) {
    Tensor r = rec.narrow(0, 0, n_later);
    at::mm_out(r, dg_d.narrow(0, seq.offsets[later], n_later), w);
  }
  if (bs > n_later) rec.narrow(0, n_later, bs - n_later).zero_();
}

// Whether a sequence with this plan runs persistently. `fits`: the device can co-schedule the grid. `optional`:
// a launch with a fallback that is persistent too (a layer stack's wavefront), so even a forced
// LSTM_FUSED_CUDA_ALGO=persistent may decline it.
inline bool want_persistent(const persistent::Plan& plan, int64_t B, bool fits = true, bool optional = false) {
  const Algo a = algo_from_env();
  if (!persistent_considered(B)) return false;  // an empty batch has nothing to launch
  const bool ok = plan.ok && fits;
  TORCH_CHECK(ok || optional || a != Algo::kPersistent, "lstm_fused: LSTM_FUSED_CUDA_ALGO=persistent, but the "
              "persistent kernel cannot run this layer: ", plan.ok ? "the grid cannot be co-resident" : plan.why);
  return ok && (a == Algo::kPersistent || B <= kPersistentMaxBatch);
}

// Projection layers always take the per-step kernels (a GEMM sits between one step's cell and the next).
inline void check_persistent_possible(bool proj) {
  TORCH_CHECK(!proj || algo_from_env() != Algo::kPersistent, "lstm_fused: LSTM_FUSED_CUDA_ALGO=persistent, but the "
              "persistent kernel does not support proj_size");
}

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_dtype(const Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                   "lstm_fused: the CUDA kernels support float32, float64, float16 and bfloat16, got ", t);
}

// Rows of h_{t-1} each step consumed, as one [N, P] matrix (for W_hh's gradient).
inline Tensor gather_prev_hidden(const SeqLayout& seq, bool packed, const Tensor& out2d, const Tensor& h0) {
  if (!packed) {  // uniform batch: a shifted copy of the output with h0 at the first processed step
    const int64_t B = seq.B, N = seq.N;
    if (!seq.reverse) return at::cat({h0, out2d.narrow(0, 0, N - B)}, 0);
    return at::cat({out2d.narrow(0, B, N - B), h0}, 0);
  }
  // Packed: device-to-device row copies per step (capturable in a CUDA graph, no host buffer involved).
  Tensor hprev = at::empty({seq.N, out2d.size(1)}, out2d.options());
  for (int64_t t = 0; t < seq.T; ++t) {
    int64_t prev, n_prev;
    seq.prev_rows(t, prev, n_prev);
    const int64_t bs = seq.batch_sizes[t], off = seq.offsets[t];
    if (n_prev > 0) hprev.narrow(0, off, n_prev).copy_(out2d.narrow(0, seq.offsets[prev], n_prev));
    if (bs > n_prev) hprev.narrow(0, off + n_prev, bs - n_prev).copy_(h0.narrow(0, n_prev, bs - n_prev));
  }
  return hprev;
}


// Rows whose sequence ends at step t hand their state to h_n/c_n: in forward order those no longer active at
// t+1; in reverse every row, at t = 0.
inline void ending_rows(const SeqLayout& seq, int64_t t, int64_t& e0, int64_t& e1) {
  e0 = e1 = 0;
  if (!seq.reverse) {
    e0 = t + 1 < seq.T ? seq.batch_sizes[t + 1] : 0;
    e1 = seq.batch_sizes[t];
  } else if (t == 0) {
    e1 = seq.batch_sizes[t];
  }
}

template <typename Runner>
std::tuple<Tensor, Tensor, Tensor, Tensor> layer_fwd(const Tensor& input, const std::optional<Tensor>& batch_sizes,
                                                     const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
                                                     at::TensorList w_hh, const std::optional<at::TensorList>& b_ih,
                                                     const std::optional<at::TensorList>& b_hh,
                                                     const std::optional<at::TensorList>& w_hr,
                                                     const std::optional<at::TensorList>& w_ph, bool coupled,
                                                     bool need_workspace, Runner& run) {
  std::vector<DirectionWeights> dirs;
  const LayerSizes s = check_lstm_directions(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, dirs);
  check_dtype(input);
  const int64_t D = static_cast<int64_t>(dirs.size());
  const std::vector<SeqLayoutHolder> lh = direction_layouts(input, batch_sizes, h0.size(1), D);
  const int64_t H = s.H, P = s.P, G = s.G(), LW = G + H, N = lh[0].N;
  const int64_t n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
  const auto T_opts = input.options();
  const auto A_opts = input.options().dtype(acc_type(input.scalar_type()));

  const Tensor x2d = input.reshape({N, s.I});
  const int64_t B = lh[0].batch_sizes[0];
  // Training keeps every step's gates and c (the backward reads them). Inference only needs the previous
  // step's c, so it alternates between two step buffers instead of holding [N, G + H] per direction.
  Tensor ws = need_workspace ? at::empty({D, N, LW}, A_opts) : at::empty({D, 2, B, LW}, A_opts);
  auto step_rows = [&](int64_t d, int64_t step, int64_t t) -> int64_t {  // element offset of the step's row 0
    return need_workspace ? (d * N + lh[d].offsets[t]) * LW : (d * 2 + step % 2) * B * LW;
  };
  Tensor out = at::empty({N, D * P}, T_opts);
  Tensor h_n = at::empty({D, B, P}, T_opts), c_n = at::empty({D, B, H}, T_opts);
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  std::vector<Tensor> xw, w_hh_c, r_buf, w_hr_t, w_ph_c;
  for (int64_t d = 0; d < D; ++d) {
    const DirectionWeights& w = dirs[d];
    w_ph_c.push_back(s.peephole ? w.w_ph->contiguous() : Tensor());
    // Input projection of all steps in one GEMM per direction, both biases folded in: [N, G].
    xw.push_back(w.b_ih ? at::addmm(*w.b_ih + *w.b_hh, x2d, w.w_ih.t()) : at::mm(x2d, w.w_ih.t()));
    w_hh_c.push_back(w.w_hh.contiguous());
    r_buf.push_back(s.proj ? at::empty({h_n.size(1), H}, T_opts) : Tensor());
    w_hr_t.push_back(s.proj ? w.w_hr->t() : Tensor());
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_fused_cuda_fwd", [&] {
    using T = scalar_t;
    using A = cuda_step::acc_t<T>;
    std::vector<cuda_step::DirectionParams<cuda_step::FwdStepParams<T, A>>> steps(n_steps);
    for (int64_t step = 0; step < n_steps; ++step) {
      auto& dp = steps[step];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), off = seq.offsets[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        cuda_step::FwdStepParams<T, A>& p = dp.dir[d];
        p.H = H;
        p.P = P;
        p.rows = seq.batch_sizes[t];
        p.n_prev = n_prev;
        p.coupled = s.coupled;
        p.peep = s.peephole ? w_ph_c[d].const_data_ptr<T>() : nullptr;
        p.ld_ws = LW;
        p.ld_out = D * P;
        p.ld_h = s.proj ? H : D * P;
        p.h_prev = n_prev > 0 ? out.const_data_ptr<T>() + seq.offsets[prev] * D * P + d * P : nullptr;
        p.h0 = h0c.const_data_ptr<T>() + d * h0c.stride(0);
        p.c_prev = n_prev > 0 ? ws.const_data_ptr<A>() + step_rows(d, step - 1, prev) + G : nullptr;
        p.c0 = c0c.const_data_ptr<T>() + d * c0c.stride(0);
        p.xw = xw[d].const_data_ptr<T>() + off * G;
        p.ld_xw = G;
        p.w_hh = w_hh_c[d].const_data_ptr<T>();
        p.ws = ws.data_ptr<A>() + step_rows(d, step, t);
        p.h_out = s.proj ? r_buf[d].data_ptr<T>() : out.data_ptr<T>() + off * D * P + d * P;
        ending_rows(seq, t, p.end_lo, p.end_hi);
        p.c_n = c_n.data_ptr<T>() + d * B * H;
        p.h_n = s.proj ? nullptr : h_n.data_ptr<T>() + d * B * P;
      }
    }
    // The whole sequence in one persistent launch where the runner can (no projection: it needs a GEMM
    // between the cell and the next step); else one launch per step.
    check_persistent_possible(s.proj);
    bool gemm = false;
    if (persistent_or_steps(run, steps, B, !s.proj, gemm)) return;
    std::vector<Tensor> rec;  // [B, G] per direction: h_{t-1}·W_hhᵀ of the GEMM path
    for (int64_t d = 0; gemm && d < D; ++d) rec.push_back(at::empty({B, G}, A_opts));
    for (int64_t step = 0; step < n_steps; ++step) {
      for (int64_t d = 0; gemm && d < D; ++d) {
        gemm_prev_hidden(rec[d], lh[d].view(), step, out.narrow(1, d * P, P), h0c[d], w_hh_c[d].t());
        steps[step].dir[d].rec = rec[d].template const_data_ptr<A>();
      }
      run.template fwd<T, A>(steps[step]);  // one launch: this step of every direction
      if (!s.proj) continue;
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), off = seq.offsets[t], bs = seq.batch_sizes[t];
        Tensor o = out.narrow(0, off, bs).narrow(1, d * P, P);
        at::mm_out(o, r_buf[d].narrow(0, 0, bs), w_hr_t[d]);
        int64_t e0, e1;
        ending_rows(seq, t, e0, e1);
        if (e1 > e0) h_n[d].narrow(0, e0, e1 - e0).copy_(o.narrow(0, e0, e1 - e0));
      }
    }
  });
  auto ws_shape = with_last(input, LW);
  ws_shape.insert(ws_shape.begin(), D);
  return {out.view(with_last(input, D * P)), h_n, c_n, need_workspace ? ws.view(ws_shape) : at::empty({0}, A_opts)};
}

using LayerGrads = std::tuple<Tensor, Tensor, Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
                               std::vector<Tensor>, std::vector<Tensor>>;

// The backward of one layer, in three parts so a layer stack (drivers/stack_driver.h) can run the recurrent part
// of all its layers in one launch: the constructor checks and allocates, steps() builds the per-step kernel
// parameters, tail() turns the pre-activation gradients into the op's results (GEMMs over all steps).
struct BwdPass {
  Tensor input;
  std::optional<Tensor> batch_sizes;
  Tensor h0, c0;
  bool has_bias = false, need_grad_input = false;
  std::vector<DirectionWeights> dirs;
  LayerSizes s;
  int64_t D = 0, H = 0, P = 0, G = 0, LW = 0, N = 0, n_steps = 0, B = 0;
  std::vector<SeqLayoutHolder> lh;
  at::ScalarType Tt, At;
  Tensor gout, ghn, c0c, ws, out2d, dg, dc_state, dh_tot, dr, r_all;
  std::vector<Tensor> w_hh_t, w_hr_a, w_ph_c;

  BwdPass(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input_,
          const std::optional<Tensor>& batch_sizes_, const Tensor& h0_, const Tensor& c0_, at::TensorList w_ih,
          at::TensorList w_hh, const std::optional<at::TensorList>& w_hr, const std::optional<at::TensorList>& w_ph,
          bool coupled, const Tensor& output, const Tensor& workspace, bool has_bias_, bool need_grad_input_)
      : input(input_), batch_sizes(batch_sizes_), h0(h0_), c0(c0_), has_bias(has_bias_),
        need_grad_input(need_grad_input_) {
    s = check_lstm_directions(input, batch_sizes, h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_hr, w_ph, coupled,
                         dirs);
    check_dtype(input);
    D = static_cast<int64_t>(dirs.size());
    lh = direction_layouts(input, batch_sizes, h0.size(1), D);
    H = s.H, P = s.P, G = s.G(), LW = G + H, N = lh[0].N;
    n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
    B = h0.size(1);
    Tt = input.scalar_type(), At = acc_type(Tt);
    const auto A_opts = input.options().dtype(At);
    // An undefined grad_output (a stack's lower layer whose output the loss did not use) means zero.
    if (grad_output.defined()) check_shape(grad_output, output.sizes(), "grad_output");
    check_shape(grad_h_n, h0.sizes(), "grad_h_n");
    check_shape(grad_c_n, c0.sizes(), "grad_c_n");
    TORCH_CHECK(output.numel() == N * D * P && workspace.numel() == D * N * LW && workspace.scalar_type() == At,
                "lstm_fused: output/workspace do not come from lstm_layer_fwd with these arguments (was the "
                "forward run without a workspace, e.g. under no_grad?)");
    for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&grad_h_n, "grad_h_n"}, {&grad_c_n, "grad_c_n"},
                           {&output, "output"}})
      if (t->defined()) check_same_dtype_device(input, *t, name);
    TORCH_CHECK(workspace.device() == input.device(), "lstm_fused: workspace is on another device");
    if (grad_output.defined()) gout = grad_output.reshape({N, D * P}).contiguous();
    ghn = grad_h_n.contiguous(), c0c = c0.contiguous();
    ws = workspace.reshape({D, N, LW}).contiguous();
    out2d = output.reshape({N, D * P});
    dg = at::empty({D, N, G}, A_opts);
    dc_state = grad_c_n.to(At).contiguous().clone();  // [D, B, H]
    dh_tot = s.proj ? at::empty({D, N, P}, A_opts) : Tensor();
    dr = s.proj ? at::empty({D, B, H}, A_opts) : Tensor();
    r_all = s.proj ? at::empty({D, N, H}, A_opts) : Tensor();
    for (int64_t d = 0; d < D; ++d) {
      w_ph_c.push_back(s.peephole ? dirs[d].w_ph->contiguous() : Tensor());
      w_hh_t.push_back(dirs[d].w_hh.t().contiguous());  // [P, G]: the backward reduces along W_hh's columns
      w_hr_a.push_back(s.proj ? dirs[d].w_hr->to(At) : Tensor());
    }
  }

  template <typename T, typename A>
  std::vector<cuda_step::DirectionParams<cuda_step::BwdStepParams<T, A>>> steps() {
    // steps[i]: the i-th step the backward processes (forward processing order reversed).
    std::vector<cuda_step::DirectionParams<cuda_step::BwdStepParams<T, A>>> steps(n_steps);
    for (int64_t i = 0; i < n_steps; ++i) {
      const int64_t step = n_steps - 1 - i;
      auto& dp = steps[i];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t], off = seq.offsets[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        // The step after t in forward order was processed just before this one here.
        const int64_t later = seq.reverse ? t - 1 : t + 1;
        const bool has_later = later >= 0 && later < n_steps;
        cuda_step::BwdStepParams<T, A>& p = dp.dir[d];
        p.H = H;
        p.P = P;
        p.rows = bs;
        p.n_later = has_later ? std::min(bs, seq.batch_sizes[later]) : 0;
        p.n_prev = n_prev;
        p.coupled = s.coupled;
        p.peep = s.peephole ? w_ph_c[d].const_data_ptr<T>() : nullptr;
        p.ld_ws = LW;
        p.ld_gout = D * P;
        p.dg_later = has_later ? dg.const_data_ptr<A>() + (d * N + seq.offsets[later]) * G : nullptr;
        p.w_hh_t = w_hh_t[d].const_data_ptr<T>();
        p.gout = gout.defined() ? gout.const_data_ptr<T>() + off * D * P + d * P : nullptr;
        p.grad_hn = ghn.const_data_ptr<T>() + d * B * P;
        p.ws = ws.const_data_ptr<A>() + (d * N + off) * LW;
        p.c_prev = n_prev > 0 ? ws.const_data_ptr<A>() + (d * N + seq.offsets[prev]) * LW + G : nullptr;
        p.c0 = c0c.const_data_ptr<T>() + d * B * H;
        p.dc_state = dc_state.data_ptr<A>() + d * B * H;
        p.dg = dg.data_ptr<A>() + (d * N + off) * G;
        if (s.proj) {
          p.dh_tot = dh_tot.data_ptr<A>() + (d * N + off) * P;
          p.dr = dr.const_data_ptr<A>() + d * B * H;
          p.r_out = r_all.data_ptr<A>() + (d * N + off) * H;
        }
      }
    }
    return steps;
  }

  // The recurrent part through the runner: one persistent launch, or launches per step.
  template <typename Runner>
  void recurrent(Runner& run) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Tt, "lstm_fused_cuda_bwd", [&] {
      using T = scalar_t;
      using A = cuda_step::acc_t<T>;
      auto steps = this->steps<T, A>();
      check_persistent_possible(s.proj);
      bool gemm = false;
      if (persistent_or_steps(run, steps, B, !s.proj, gemm)) return;
      std::vector<Tensor> rec, w_hh_a;  // [B, P] per direction: dG_later·W_hh of the GEMM path
      for (int64_t d = 0; gemm && d < D; ++d) {
        rec.push_back(at::empty({B, P}, input.options().dtype(At)));
        w_hh_a.push_back(dirs[d].w_hh.to(At).contiguous());  // [G, P]
      }
      auto gemm_rec = [&](int64_t i) {
        for (int64_t d = 0; gemm && d < D; ++d) {
          gemm_later_grad(rec[d], lh[d].view(), i, dg[d], w_hh_a[d]);
          steps[i].dir[d].rec = rec[d].template const_data_ptr<A>();
        }
      };
      for (int64_t i = 0; i < n_steps; ++i) {
        const int64_t step = n_steps - 1 - i;
        gemm_rec(i);
        if (!s.proj) {
          run.template bwd<T, A>(steps[i], cuda_step::kFused);
          continue;
        }
        run.template bwd<T, A>(steps[i], cuda_step::kReduceOnly);
        for (int64_t d = 0; d < D; ++d) {
          const SeqLayout seq = lh[d].view();
          const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t];
          Tensor dr_rows = dr[d].narrow(0, 0, bs);
          at::mm_out(dr_rows, dh_tot[d].narrow(0, seq.offsets[t], bs), w_hr_a[d]);
        }
        run.template bwd<T, A>(steps[i], cuda_step::kPointwiseOnly);
      }
    });
  }

  LayerGrads tail() {
    const auto A_opts = input.options().dtype(At);
  // Everything below is one GEMM or reduction over all steps per direction (a few GEMMs for h0 with packed
  // input). Both directions read the same input, so its gradient is their sum.
  const Tensor x2d = input.reshape({N, s.I});
  Tensor dh0 = at::zeros({D, B, P}, A_opts);
  Tensor d_input;
  std::vector<Tensor> d_w_ih, d_w_hh, d_bias, d_w_hr, d_w_ph;
  for (int64_t d = 0; d < D; ++d) {
    const SeqLayout seq = lh[d].view();
    const Tensor dgd = dg[d];
    const Tensor w_hh_a = dirs[d].w_hh.to(At);
    for (int64_t t = 0; t < n_steps; ++t) {
      int64_t prev, n_prev;
      seq.prev_rows(t, prev, n_prev);
      const int64_t bs = seq.batch_sizes[t];
      if (bs > n_prev) {  // rows [n_prev, bs) started from h0 at step t
        Tensor rows = dh0[d].narrow(0, n_prev, bs - n_prev);
        at::mm_out(rows, dgd.narrow(0, seq.offsets[t] + n_prev, bs - n_prev), w_hh_a);
      }
    }
    if (need_grad_input) {
      const Tensor part = at::mm(dgd, dirs[d].w_ih.to(At));
      d_input = d == 0 ? part : d_input.add_(part);
    }
    d_w_ih.push_back(at::mm(dgd.t(), x2d.to(At)).to(Tt));
    const Tensor hprev = gather_prev_hidden(seq, batch_sizes.has_value(), out2d.narrow(1, d * P, P), h0[d].contiguous());
    d_w_hh.push_back(at::mm(dgd.t(), hprev.to(At)).to(Tt));
    if (has_bias) d_bias.push_back(dgd.sum(0).to(Tt));
    if (s.proj) d_w_hr.push_back(at::mm(dh_tot[d].t(), r_all[d]).to(Tt));
    if (s.peephole) {
      // Peephole gradients: per unit, sums over rows of dpre_i·c_{t-1}, dpre_f·c_{t-1} and dpre_o·c_t.
      const Tensor cells = ws[d].narrow(1, G, H);
      const Tensor c_prev = gather_prev_hidden(seq, batch_sizes.has_value(), cells, c0[d].to(At).contiguous());
      const int64_t co = s.coupled ? 2 * H : 3 * H;
      std::vector<Tensor> rows{(dgd.narrow(1, 0, H) * c_prev).sum(0)};
      if (!s.coupled) rows.push_back((dgd.narrow(1, H, H) * c_prev).sum(0));
      rows.push_back((dgd.narrow(1, co, H) * cells).sum(0));
      d_w_ph.push_back(at::stack(rows).to(Tt));
    }
  }
  d_input = need_grad_input ? d_input.to(Tt).view(input.sizes()) : at::empty({0}, input.options());
  return {d_input, dh0.to(Tt), dc_state.to(Tt), d_w_ih, d_w_hh, d_bias, d_w_hr, d_w_ph};
  }
};

template <typename Runner>
LayerGrads layer_bwd(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
                     const std::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0, at::TensorList w_ih,
                     at::TensorList w_hh, const std::optional<at::TensorList>& w_hr,
                     const std::optional<at::TensorList>& w_ph, bool coupled, const Tensor& output,
                     const Tensor& workspace, bool has_bias, bool need_grad_input, Runner& run) {
  BwdPass pass(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, w_hr, w_ph, coupled, output,
               workspace, has_bias, need_grad_input);
  pass.recurrent(run);
  return pass.tail();
}

}  // namespace cuda_driver
}  // namespace lstm_fused
