// The sequence loop of the CUDA path for one layer of any cell (Cell: drivers/cell_traits.h), on tensors: checks,
// buffers, the cuBLAS GEMMs (through ATen, on the current stream), the step table, and either one persistent launch
// for the whole sequence or one step launch per time step, through a Runner. cuda/cuda_binding.cpp runs it with the
// GPU launchers, testing/cuda_emulation.cpp with a CPU emulation of the same kernels, so everything here but the
// launches themselves runs in the CPU test suite.
//
// Runner: step(const DirectionParams<Step>&) launches one step of every direction (a backward LSTM step also takes
// a mode); sequence(const StepTable<Step>&, B) runs the whole sequence in one persistent launch and returns true, or
// returns false to get the per-step launches.
#pragma once

#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "drivers/cell_traits.h"
#include "drivers/driver_common.h"

namespace lstm_fused {
namespace cuda_driver {

// The forward of one layer: the constructor checks and allocates, run() fills the step table and runs it.
template <typename Cell>
struct FwdPass {
  const LayerArgs& a;
  std::vector<DirectionWeights> dirs;
  LayerSizes s;
  int64_t D = 0, H = 0, P = 0, G = 0, LW = 0, N = 0, B = 0, n_steps = 0;
  std::vector<SeqLayoutHolder> lh;
  // ws: per row the activated gates and what else the backward reads (LSTM: c_t, or with zoneout on c the candidate
  // c̃_t and c_t; GRU: the recurrent n product).
  Tensor ws, out, h_n, c_n, h0c, c0c;
  // Per direction. xw: the input product of every step, [N, G]: in T with the biases folded in; with layer norm in the
  // accumulate type without them (the norm comes first; in_bias holds them). rec: the GEMM path's h_{t-1}·W_hhᵀ, [B, G].
  std::vector<Tensor> xw, in_bias, w_hh_c, cell_w, r_buf, w_hr_t, rec;

  explicit FwdPass(const LayerArgs& args) : a(args) {
    s = Cell::check(a, dirs);
    check_dtype(a.input);
    D = static_cast<int64_t>(dirs.size());
    lh = direction_layouts(a.input, a.batch_sizes, a.h0.size(1), D);
    H = s.H, P = s.P, G = s.G(), LW = Cell::ws_cols(s), N = lh[0].N, B = lh[0].batch_sizes[0];
    n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
    const auto T_opts = a.input.options();
    const auto A_opts = a.input.options().dtype(acc_type(a.input.scalar_type()));
    const Tensor x2d = a.input.reshape({N, s.I});
    // Training keeps every step's workspace rows (the backward reads them). Inference only needs the previous
    // step's (an LSTM's c_{t-1}), so it alternates between two step buffers instead of holding [N, LW] per direction.
    ws = a.need_workspace ? at::empty({D, N, LW}, A_opts) : at::empty({D, 2, B, LW}, A_opts);
    out = at::empty({N, D * P}, T_opts);
    h_n = at::empty({D, B, P}, T_opts);
    if (Cell::kHasCellState) c_n = at::empty({D, B, H}, T_opts), c0c = a.c0.contiguous();
    h0c = a.h0.contiguous();
    for (int64_t d = 0; d < D; ++d) {
      const DirectionWeights& w = dirs[d];
      cell_w.push_back(Cell::cell_weight(w));
      // Input projection of all steps in one GEMM per direction, with the biases the cell folds in: [N, G].
      const std::optional<Tensor> bias = Cell::input_bias(w);
      if (s.layer_norm) {
        Tensor prod = at::empty({N, G}, A_opts);
        mm_into(prod, x2d, w.w_ih.t());
        xw.push_back(prod);
        in_bias.push_back(bias ? bias->contiguous() : Tensor());
      } else {
        xw.push_back(bias ? at::addmm(*bias, x2d, w.w_ih.t()) : at::mm(x2d, w.w_ih.t()));
      }
      w_hh_c.push_back(w.w_hh.contiguous());
      r_buf.push_back(s.proj ? at::empty({B, H}, T_opts) : Tensor());
      w_hr_t.push_back(s.proj ? w.w_hr->t() : Tensor());
    }
  }

  // Element offset of row 0 of direction d's workspace at processing step `step` (time t).
  int64_t ws_row(int64_t d, int64_t step, int64_t t) const {
    return a.need_workspace ? (d * N + lh[d].offsets[t]) * LW : (d * 2 + step % 2) * B * LW;
  }

  template <typename T, typename A>
  std::vector<cuda_step::DirectionParams<typename Cell::template FwdStep<T, A>>> steps() const {
    std::vector<cuda_step::DirectionParams<typename Cell::template FwdStep<T, A>>> steps(n_steps);
    for (int64_t step = 0; step < n_steps; ++step) {
      auto& dp = steps[step];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), off = seq.offsets[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        auto& p = dp.dir[d];
        p.H = H;
        p.rows = seq.batch_sizes[t];
        p.n_prev = n_prev;
        p.ld_out = D * P;
        p.h_prev = n_prev > 0 ? out.const_data_ptr<T>() + seq.offsets[prev] * D * P + d * P : nullptr;
        p.h0 = h0c.const_data_ptr<T>() + d * h0c.stride(0);
        p.xw = s.layer_norm ? nullptr : xw[d].const_data_ptr<T>() + off * G;  // (layer norm: Cell::fill_fwd)
        p.w_hh = w_hh_c[d].const_data_ptr<T>();
        p.ws = ws.data_ptr<A>() + ws_row(d, step, t);
        // With a projection the cell writes o·tanh(c_t) for the projection GEMM, which writes the output and h_n.
        p.h_out = s.proj ? r_buf[d].data_ptr<T>() : out.data_ptr<T>() + off * D * P + d * P;
        p.h_n = s.proj ? nullptr : h_n.data_ptr<T>() + d * B * P;
        ending_rows(seq, t, p.end_lo, p.end_hi);
        Cell::fill_fwd(p, *this, d, step, off, prev, n_prev);
      }
    }
    return steps;
  }

  template <typename Runner>
  LayerOutputs run(Runner& runner) {
    const auto A_opts = a.input.options().dtype(acc_type(a.input.scalar_type()));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(), "lstm_fused_cuda_fwd", [&] {
      using T = scalar_t;
      using A = cuda_step::acc_t<T>;
      auto steps = this->steps<T, A>();
      // The whole sequence in one persistent launch where the runner can (no projection: it needs a GEMM
      // between the cell and the next step; no layer norm); else one launch per step.
      check_persistent_possible(s.proj);
      check_layer_norm_path(s.layer_norm);
      if (s.layer_norm) input_norm<T, A>(runner);
      bool gemm = false;
      if (persistent_or_steps(runner, steps, B, !s.proj, gemm, s.layer_norm)) return;
      for (int64_t d = 0; gemm && d < D; ++d) rec.push_back(at::empty({B, G}, A_opts));
      for (int64_t step = 0; step < n_steps; ++step) {
        for (int64_t d = 0; gemm && d < D; ++d) {
          gemm_prev_hidden(rec[d], lh[d].view(), step, out.narrow(1, d * P, P), h0c[d], w_hh_c[d].t());
          steps[step].dir[d].rec = rec[d].template data_ptr<A>();
        }
        Cell::run_fwd_step(runner, *this, steps[step], step);  // this step of every direction
        if (s.proj) project<T, A>(runner, step);
      }
    });
    auto ws_shape = with_last(a.input, LW);
    ws_shape.insert(ws_shape.begin(), D);
    return {out.view(with_last(a.input, D * P)), h_n, c_n,
            a.need_workspace ? ws.view(ws_shape) : at::empty({0}, A_opts)};
  }

  // The input side's norm over every step's rows at once, one launch for every direction (what it writes where:
  // Cell::fill_input_norm).
  template <typename T, typename A, typename Runner>
  void input_norm(Runner& runner) {
    cuda_step::RowLaunch<cuda_step::RowNormParams<T, A>> l;
    l.count = static_cast<int>(D);
    for (int64_t d = 0; d < D; ++d) {
      auto& p = l.set[d];
      p.n = G, p.rows = N;
      p.x = xw[d].data_ptr<A>(), p.ld_x = G;
      Cell::fill_input_norm(p, *this, d);
    }
    runner.step(l);
  }

  // The projection of step `step`'s rows, h_t = W_hr·(o·tanh(c_t)), into the output and, for rows that end here, h_n.
  // With zoneout on h, one launch for every direction then zones the projected rows out and writes h_n.
  template <typename T, typename A, typename Runner>
  void project(Runner& runner, int64_t step) {
    cuda_step::DirectionParams<cuda_step::ProjZoneoutParams<T, A>> zo;
    zo.count = static_cast<int>(D);
    for (int64_t d = 0; d < D; ++d) {
      const SeqLayout seq = lh[d].view();
      const int64_t t = seq.time_at(step), off = seq.offsets[t], bs = seq.batch_sizes[t];
      Tensor o = out.narrow(0, off, bs).narrow(1, d * P, P);
      at::mm_out(o, r_buf[d].narrow(0, 0, bs), w_hr_t[d]);
      int64_t e0, e1;
      ending_rows(seq, t, e0, e1);
      if (!s.zoneout_h) {
        if (e1 > e0) h_n[d].narrow(0, e0, e1 - e0).copy_(o.narrow(0, e0, e1 - e0));
        continue;
      }
      int64_t prev, n_prev;
      seq.prev_rows(t, prev, n_prev);
      auto& p = zo.dir[d];
      p.P = P, p.rows = bs, p.n_prev = n_prev, p.ld_out = D * P;
      p.h_prev = n_prev > 0 ? out.const_data_ptr<T>() + seq.offsets[prev] * D * P + d * P : nullptr;
      p.h0 = h0c.const_data_ptr<T>() + d * h0c.stride(0);
      p.zo_h = mask_rows<A>(a.zoneout_h, d, off);
      p.out = out.data_ptr<T>() + off * D * P + d * P;
      p.end_lo = e0, p.end_hi = e1;
      p.h_n = h_n.data_ptr<T>() + d * B * P;
    }
    if (s.zoneout_h) runner.step(zo);
  }
};

template <typename Cell, typename Runner>
LayerOutputs layer_fwd(const LayerArgs& a, Runner& run) {
  return FwdPass<Cell>(a).run(run);
}

// The backward of one layer, in three parts so a layer stack (drivers/stack_driver.h) can run the recurrent part
// of all its layers in one launch: the constructor checks and allocates, steps() builds the per-step kernel
// parameters, tail() turns the pre-activation gradients into the op's results (GEMMs over all steps).
template <typename Cell>
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
  Tensor gout, ghn, h0c, c0c, ws, out2d;
  // Pre-activation gradients [D, N, G]: dg of the input-side product (x·W_ihᵀ, and the biases folded into it);
  // dg_rec of the recurrent product h·W_hhᵀ: the same tensor for an LSTM, its own for a GRU (r scales W_hn·h).
  // With layer norm both are the products' gradients after their norms (an LSTM's differ then too), and dpre / dpre_rec
  // the gradients before them (the biases', the gains', the peepholes'; the same tensor for an LSTM).
  Tensor dg, dg_rec, dpre, dpre_rec;
  Tensor dy_c;      // [D, N, H] layer-norm LSTM: gradient of γ_c ⊙ ĉ + β_c
  Tensor dh;        // [D, N, H] GRU: total gradient of each h_t (the next step's z ⊙ dh reads it)
  Tensor dc_state;  // [D, B, H] LSTM: gradient of the cell state, carried from step to step
  Tensor dh_tot, dr, r_all;  // projection: [D, N, P] gradient of h_t, [D, B, H] of o·tanh(c_t), [D, N, H] o·tanh(c_t)
  std::optional<Tensor> zoneout_h, zoneout_c;  // the forward's masks [D, N, P] / [D, N, H], any strides
  Tensor dh_carry;  // [D, B, P] LSTM with zoneout on h: the part of a step's h gradient for h_{t-1} (BwdStepParams)
  std::vector<Tensor> w_hh_t, w_hr_a, cell_w;  // per direction

  explicit BwdPass(const LayerBwdArgs& a)
      : input(a.fwd.input), batch_sizes(a.fwd.batch_sizes), h0(a.fwd.h0), c0(a.fwd.c0), has_bias(a.has_bias),
        need_grad_input(a.need_grad_input), zoneout_h(a.fwd.zoneout_h), zoneout_c(a.fwd.zoneout_c) {
    const Tensor &grad_output = a.grad_output, &output = a.output, &workspace = a.workspace;
    s = Cell::check(a.fwd, dirs);
    check_dtype(input);
    D = static_cast<int64_t>(dirs.size());
    lh = direction_layouts(input, batch_sizes, h0.size(1), D);
    H = s.H, P = s.P, G = s.G(), LW = Cell::ws_cols(s), N = lh[0].N;
    n_steps = static_cast<int64_t>(lh[0].batch_sizes.size());
    B = h0.size(1);
    Tt = input.scalar_type(), At = acc_type(Tt);
    const auto A_opts = input.options().dtype(At);
    // An undefined grad_output (a stack's lower layer whose output the loss did not use) means zero.
    if (grad_output.defined()) check_shape(grad_output, output.sizes(), "grad_output");
    check_shape(a.grad_h_n, h0.sizes(), "grad_h_n");
    if (Cell::kHasCellState) check_shape(a.grad_c_n, c0.sizes(), "grad_c_n");
    TORCH_CHECK(output.numel() == N * D * P && workspace.numel() == D * N * LW && workspace.scalar_type() == At,
                "lstm_fused: output/workspace do not come from ", Cell::kFwdOp, " with these arguments (was the "
                "forward run without a workspace, e.g. under no_grad?)");
    for (auto [t, name] : {std::pair{&grad_output, "grad_output"}, {&a.grad_h_n, "grad_h_n"},
                           {&a.grad_c_n, "grad_c_n"}, {&output, "output"}})
      if (t->defined()) check_same_dtype_device(input, *t, name);
    TORCH_CHECK(workspace.device() == input.device(), "lstm_fused: workspace is on another device");
    if (grad_output.defined()) gout = grad_output.reshape({N, D * P}).contiguous();
    ghn = a.grad_h_n.contiguous(), h0c = h0.contiguous();
    ws = workspace.reshape({D, N, LW}).contiguous();
    out2d = output.reshape({N, D * P}).contiguous();
    dg = at::empty({D, N, G}, A_opts);
    dg_rec = Cell::kSplitGates || s.layer_norm ? at::empty({D, N, G}, A_opts) : dg;
    if (s.layer_norm) {
      dpre = at::empty({D, N, G}, A_opts);
      dpre_rec = Cell::kSplitGates ? at::empty({D, N, G}, A_opts) : dpre;
      if (Cell::kHasCellState) dy_c = at::empty({D, N, H}, A_opts);
    }
    if (Cell::kSplitGates) dh = at::empty({D, N, H}, A_opts);
    if (Cell::kHasCellState) {
      c0c = c0.contiguous();
      dc_state = a.grad_c_n.to(At).contiguous().clone();
      if (s.zoneout_h) dh_carry = at::zeros({D, B, P}, A_opts);
    }
    if (s.proj) {
      dh_tot = at::empty({D, N, P}, A_opts);
      dr = at::empty({D, B, H}, A_opts);
      r_all = at::empty({D, N, H}, A_opts);
    }
    for (int64_t d = 0; d < D; ++d) {
      cell_w.push_back(Cell::cell_weight(dirs[d]));
      w_hh_t.push_back(dirs[d].w_hh.t().contiguous());  // [P, G]: the backward reduces along W_hh's columns
      w_hr_a.push_back(s.proj ? dirs[d].w_hr->to(At) : Tensor());
    }
  }

  template <typename T, typename A>
  std::vector<cuda_step::DirectionParams<typename Cell::template BwdStep<T, A>>> steps() {
    // steps[i]: the i-th step the backward processes (forward processing order reversed).
    std::vector<cuda_step::DirectionParams<typename Cell::template BwdStep<T, A>>> steps(n_steps);
    for (int64_t i = 0; i < n_steps; ++i) {
      const int64_t step = n_steps - 1 - i;
      auto& dp = steps[i];
      dp.count = static_cast<int>(D);
      for (int64_t d = 0; d < D; ++d) {
        const SeqLayout seq = lh[d].view();
        const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t];
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        // The step after t in forward order was processed just before this one here.
        const int64_t later = seq.reverse ? t - 1 : t + 1;
        const bool has_later = later >= 0 && later < n_steps;
        const BwdRows r{seq.offsets[t], n_prev > 0 ? seq.offsets[prev] : 0, n_prev, has_later,
                         has_later ? seq.offsets[later] : 0};
        auto& p = dp.dir[d];
        p.H = H;
        p.rows = bs;
        p.n_later = has_later ? std::min(bs, seq.batch_sizes[later]) : 0;
        p.n_prev = n_prev;
        p.w_hh_t = w_hh_t[d].const_data_ptr<T>();
        p.grad_hn = ghn.const_data_ptr<T>() + d * B * P;
        p.ws = ws.const_data_ptr<A>() + (d * N + r.off) * LW;
        Cell::fill_bwd(p, *this, d, r);
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
      check_layer_norm_path(s.layer_norm);
      bool gemm = false;
      if (persistent_or_steps(run, steps, B, !s.proj, gemm, s.layer_norm)) return;
      std::vector<Tensor> rec, w_hh_a;  // [B, P] per direction: dG_rec_later·W_hh of the GEMM path
      for (int64_t d = 0; gemm && d < D; ++d) {
        rec.push_back(at::empty({B, P}, input.options().dtype(At)));
        w_hh_a.push_back(dirs[d].w_hh.to(At).contiguous());  // [G, P]
      }
      for (int64_t i = 0; i < n_steps; ++i) {
        for (int64_t d = 0; gemm && d < D; ++d) {
          gemm_later_grad(rec[d], lh[d].view(), i, dg_rec[d], w_hh_a[d]);
          steps[i].dir[d].rec = rec[d].template const_data_ptr<A>();
        }
        if constexpr (Cell::kHasProjection) {
          if (s.proj) {
            project_back<T, A>(run, steps[i], n_steps - 1 - i);
            continue;
          }
        }
        Cell::run_bwd_step(run, *this, steps[i], n_steps - 1 - i);
      }
    });
  }

  // A step with a projection: the reduction gives the total gradient of h_t, the projection's GEMM takes it back
  // to o·tanh(c_t), then the pointwise part.
  template <typename T, typename A, typename Runner, typename Step>
  void project_back(Runner& run, const Step& step_params, int64_t step) {
    run.step(step_params, cuda_step::kReduceOnly);
    for (int64_t d = 0; d < D; ++d) {
      const SeqLayout seq = lh[d].view();
      const int64_t t = seq.time_at(step), bs = seq.batch_sizes[t];
      Tensor dr_rows = dr[d].narrow(0, 0, bs);
      at::mm_out(dr_rows, dh_tot[d].narrow(0, seq.offsets[t], bs), w_hr_a[d]);
    }
    if (s.layer_norm)
      run.ln_step(step_params);  // reads dr as the plain pointwise launch does
    else
      run.step(step_params, cuda_step::kPointwiseOnly);
  }

  // The gains' gradients (in LayerArgs::layer_norm's order): γ_ih and γ_hh the gradients before the norms times x̂, an
  // LSTM's γ_c dy_c times ĉ and β_c dy_c, each summed over every row.
  void layer_norm_grads(LayerGrads& g, int64_t d) {
    const int64_t col = Cell::ln_col(s);
    const Tensor w = ws[d];
    g.ln.push_back((dpre[d] * w.narrow(1, col, G)).sum(0).to(Tt));
    g.ln.push_back((dpre_rec[d] * w.narrow(1, col + G, G)).sum(0).to(Tt));
    if (Cell::kHasCellState) {
      g.ln.push_back((dy_c[d] * w.narrow(1, col + 2 * G, H)).sum(0).to(Tt));
      g.ln.push_back(dy_c[d].sum(0).to(Tt));
    }
  }

  LayerGrads tail() {
    const auto A_opts = input.options().dtype(At);
    // Everything below is one GEMM or reduction over all steps per direction (a few GEMMs for h0 with packed
    // input). Both directions read the same input, so its gradient is their sum.
    const Tensor x2d = input.reshape({N, s.I});
    Tensor dh0 = at::zeros({D, B, P}, A_opts);
    LayerGrads g;
    for (int64_t d = 0; d < D; ++d) {
      const SeqLayout seq = lh[d].view();
      const Tensor dgd = dg[d], dg_rec_d = dg_rec[d];
      const Tensor w_hh_a = dirs[d].w_hh.to(At);
      for (int64_t t = 0; t < n_steps; ++t) {
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        const int64_t bs = seq.batch_sizes[t];
        if (bs > n_prev) {  // rows [n_prev, bs) started from h0 at step t
          const int64_t r0 = seq.offsets[t] + n_prev, n = bs - n_prev;
          Tensor rows = dh0[d].narrow(0, n_prev, n);
          at::mm_out(rows, dg_rec_d.narrow(0, r0, n), w_hh_a);
          Cell::h0_grad_rows(rows, *this, d, r0, n_prev, n);
        }
      }
      if (need_grad_input) {
        const Tensor part = at::mm(dgd, dirs[d].w_ih.to(At));
        g.input = d == 0 ? part : g.input.add_(part);
      }
      g.w_ih.push_back(at::mm(dgd.t(), x2d.to(At)).to(Tt));
      const Tensor hprev = gather_prev_hidden(seq, batch_sizes.has_value(), out2d.narrow(1, d * P, P), h0c[d]);
      g.w_hh.push_back(at::mm(dg_rec_d.t(), hprev.to(At)).to(Tt));
      // The biases sit after the norms: their gradients are the ones before.
      const Tensor dbias = s.layer_norm ? dpre[d] : dgd, dbias_rec = s.layer_norm ? dpre_rec[d] : dg_rec_d;
      if (has_bias) {
        g.b_ih.push_back(dbias.sum(0).to(Tt));
        if (Cell::kSplitGates) g.b_hh.push_back(dbias_rec.sum(0).to(Tt));
      }
      if (s.layer_norm) layer_norm_grads(g, d);
      if (s.proj) g.w_hr.push_back(at::mm(dh_tot[d].t(), r_all[d]).to(Tt));
      Cell::cell_weight_grads(g, *this, d);
    }
    g.input = need_grad_input ? g.input.to(Tt).view(input.sizes()) : at::empty({0}, input.options());
    g.h0 = dh0.to(Tt);
    if (Cell::kHasCellState) g.c0 = dc_state.to(Tt);
    return g;
  }
};

template <typename Cell, typename Runner>
LayerGrads layer_bwd(const LayerBwdArgs& a, Runner& run) {
  BwdPass<Cell> pass(a);
  pass.recurrent(run);
  return pass.tail();
}

}  // namespace cuda_driver
}  // namespace lstm_fused
