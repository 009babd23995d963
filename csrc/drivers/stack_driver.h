// lstm_stack_fwd on the CUDA path (and its CPU emulation): all layers of a unidirectional stack in one
// persistent launch as a wavefront, lanes = layers. At grid step s layer l runs its time step t = s − l: layer 0
// adds its precomputed input projection (one GEMM, as in a single layer), layers above reduce their input
// x_t = h^{l−1}_t (written by layer l−1 one grid step earlier) with W_ih inside the same reduction as
// h^l_{t−1}·W_hhᵀ. Steps outside [0, T) of a layer have no rows: its blocks only meet the grid barrier.
// Where the runner declines (the slices do not fit, large batch, LSTM_FUSED_CUDA_ALGO=step, graph capture),
// the stack runs layer by layer through layer_fwd.
#pragma once

#include "host/stack_loop.h"
#include "drivers/layer_driver.h"

namespace lstm_fused {
namespace cuda_driver {

// Whether the runner takes a stack's wavefront (Step: FwdStepParams or BwdStepParams), asked before any work.
template <template <typename, typename> class Step, typename Runner>
bool accepts_stack(Runner& run, const Tensor& input, int64_t K, int64_t B, int64_t L, int64_t H) {
  const auto t = input.scalar_type();
  // Anything malformed takes the layer loop, whose checks report it.
  if (t != at::kFloat && t != at::kDouble && t != at::kHalf && t != at::kBFloat16) return false;
  if (!persistent_considered(B)) return false;
  bool ok = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "lstm_fused_stack_accepts", [&] {
    using A = cuda_step::acc_t<scalar_t>;
    ok = run.template accepts<Step<scalar_t, A>>(H, K, B, static_cast<int>(L), /*optional=*/true);
  });
  return ok;
}

template <typename Runner>
StackOutputs stack_fwd(const LayerArgs& a, Runner& run) {
  const Tensor &input = a.input, &h0 = a.h0, &c0 = a.c0;
  const TensorVec &w_ih = a.w.w_ih, &w_hh = a.w.w_hh;
  const std::optional<TensorVec> &b_ih = a.w.b_ih, &b_hh = a.w.b_hh, &w_ph = a.w.w_ph;
  const bool coupled = a.coupled, need_workspace = a.need_workspace;
  auto by_layers = [&] {
    return stack_loop(a, [&](const LayerArgs& layer) { return layer_fwd<LstmTraits>(layer, run); });
  };
  const int64_t L = check_stack_args(a);
  if (L < 2 || w_hh[0].dim() != 2 ||
      !accepts_stack<cuda_step::FwdStepParams>(run, input, 2 * w_hh[0].size(1), h0.size(1), L, w_hh[0].size(1)))
    return by_layers();  // decided before anything is allocated

  // Every layer's checks, on its own input (the layer below's output has the input's rows and H columns).
  check_dtype(input);
  const int64_t H = w_hh[0].size(1), B = h0.size(1);
  const SeqLayoutHolder lh = direction_layouts(input, a.batch_sizes, B, 1)[0];
  const SeqLayout seq = lh.view();
  const int64_t N = seq.N, n_t = seq.T;
  std::vector<Tensor> outs;
  LayerSizes s;
  for (int64_t l = 0; l < L; ++l) {
    const Tensor x = l == 0 ? input : outs.back().view(with_last(input, H));
    std::vector<DirectionWeights> dirs;
    s = check_lstm_directions(a.layer(l, x), dirs);
    TORCH_CHECK(s.H == H, "lstm_fused: lstm_stack_fwd expects one hidden size for all layers");
    outs.push_back(at::empty({N, H}, input.options()));
  }
  const int64_t G = s.G(), LW = G + H;
  const auto A_opts = input.options().dtype(acc_type(input.scalar_type()));
  std::vector<Tensor> wss, w_ih_c, w_hh_c, w_ph_c, bias;
  for (int64_t l = 0; l < L; ++l) {
    wss.push_back(need_workspace ? at::empty({N, LW}, A_opts) : at::empty({2, B, LW}, A_opts));
    w_ih_c.push_back(w_ih[l].contiguous());
    w_hh_c.push_back(w_hh[l].contiguous());
    w_ph_c.push_back(w_ph ? (*w_ph)[l].contiguous() : Tensor());
    bias.push_back(b_ih ? ((*b_ih)[l] + (*b_hh)[l]).contiguous() : at::zeros({G}, input.options()));
  }
  // Layer 0's input projection for all steps, both biases folded in: [N, G].
  const Tensor xw0 = at::addmm(bias[0], input.reshape({N, input.size(-1)}), w_ih[0].t());
  Tensor h_n = at::empty({L, B, H}, input.options()), c_n = at::empty({L, B, H}, input.options());
  const Tensor h0c = h0.contiguous(), c0c = c0.contiguous();
  auto step_rows = [&](int64_t t) -> int64_t {  // element offset of step t's row 0 in a layer's workspace
    return need_workspace ? seq.offsets[t] * LW : (t % 2) * B * LW;
  };

  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_fused_stack_fwd", [&] {
    using T = scalar_t;
    using A = cuda_step::acc_t<T>;
    persistent::StepTable<cuda_step::FwdStepParams<T, A>> table;
    table.count = static_cast<int>(L);
    table.n_steps = n_t + L - 1;
    table.steps.resize(table.n_steps * L);
    for (int64_t g = 0; g < table.n_steps; ++g) {
      for (int64_t l = 0; l < L; ++l) {
        cuda_step::FwdStepParams<T, A>& p = table.steps[g * L + l];
        p.H = p.P = H;
        p.coupled = coupled;
        p.peep = w_ph ? w_ph_c[l].const_data_ptr<T>() : nullptr;
        p.ld_ws = LW;
        p.ld_out = p.ld_h = H;
        p.h0 = h0c.const_data_ptr<T>() + l * B * H;
        p.c0 = c0c.const_data_ptr<T>() + l * B * H;
        p.w_hh = w_hh_c[l].const_data_ptr<T>();
        p.c_n = c_n.data_ptr<T>() + l * B * H;
        p.h_n = h_n.data_ptr<T>() + l * B * H;
        if (l > 0) {
          p.I_in = H;
          p.ld_x = H;
          p.w_ih = w_ih_c[l].const_data_ptr<T>();
        }
        const int64_t t = g - l;
        p.xw = l == 0 ? xw0.const_data_ptr<T>() : bias[l].const_data_ptr<T>();
        p.ws = wss[l].data_ptr<A>();
        p.h_out = outs[l].data_ptr<T>();
        if (t < 0 || t >= n_t) continue;  // no rows: this layer idles at grid step g
        int64_t prev, n_prev;
        seq.prev_rows(t, prev, n_prev);
        const int64_t off = seq.offsets[t];
        p.rows = seq.batch_sizes[t];
        p.n_prev = n_prev;
        p.h_prev = n_prev > 0 ? outs[l].const_data_ptr<T>() + seq.offsets[prev] * H : nullptr;
        p.c_prev = n_prev > 0 ? wss[l].const_data_ptr<A>() + step_rows(prev) + G : nullptr;
        if (l == 0) {
          p.xw += off * G;
          p.ld_xw = G;
        }  // else ld_xw = 0: the biases only, for every row
        if (l > 0) p.x_in = outs[l - 1].const_data_ptr<T>() + off * H;
        p.ws += step_rows(t);
        p.h_out += off * H;
        ending_rows(seq, t, p.end_lo, p.end_hi);
      }
    }
    done = run.sequence(table, B, /*optional=*/true);
  });
  if (!done) return by_layers();
  count_path(RecurrentPath::kWavefront);
  std::vector<Tensor> outs_v, wss_v;
  auto ws_shape = with_last(input, LW);
  ws_shape.insert(ws_shape.begin(), 1);
  for (int64_t l = 0; l < L; ++l) {
    outs_v.push_back(outs[l].view(with_last(input, H)));
    wss_v.push_back(need_workspace ? wss[l].view(ws_shape) : at::empty({0}, A_opts));
  }
  return {outs_v, h_n, c_n, wss_v};
}

// The stack's backward: the recurrent part of every layer in one persistent launch, a wavefront from the top
// layer down (at grid step s layer l runs its backward step s − (L−1−l)): a layer below reduces, with its own
// dG_later·W_hh, the gradient its output gets from the layer above, dG_up·W_ih_up, which that layer produced one
// grid step earlier. The GEMMs over all steps then run per layer (BwdPass::tail). Where the runner declines,
// the loop over layer_bwd.
template <typename Runner>
LayerGrads stack_bwd(const StackBwdArgs& a, Runner& run) {
  const TensorVec &grad_outputs = a.grad_outputs, &outputs = a.outputs, &workspaces = a.workspaces;
  const Tensor &input = a.fwd.input, &h0 = a.fwd.h0;
  const TensorVec &w_ih = a.fwd.w.w_ih, &w_hh = a.fwd.w.w_hh;
  const bool has_bias = a.has_bias;
  auto by_layers = [&] {
    return stack_bwd_loop(a, [&](const LayerBwdArgs& layer) { return layer_bwd<LstmTraits>(layer, run); });
  };
  const int64_t L = check_stack_args(a.fwd);
  if (L < 2 || static_cast<int64_t>(grad_outputs.size()) != L || static_cast<int64_t>(outputs.size()) != L ||
      static_cast<int64_t>(workspaces.size()) != L)
    return by_layers();  // (which reports the mismatch)
  if (w_hh[0].dim() != 2 ||
      !accepts_stack<cuda_step::BwdStepParams>(run, input, 2 * w_hh[0].size(0), h0.size(1), L, w_hh[0].size(1)))
    return by_layers();  // decided before anything is allocated
  std::vector<BwdPass<LstmTraits>> passes;
  for (int64_t l = 0; l < L; ++l)
    passes.emplace_back(a.layer(l, no_grad(grad_outputs[l], outputs[l]) ? Tensor() : grad_outputs[l],
                                l == 0 && a.need_grad_input));
  const int64_t H = passes[0].H, n = passes[0].n_steps, B = passes[0].B;
  for (const auto& p : passes)
    TORCH_CHECK(p.H == H && p.D == 1, "lstm_fused: lstm_stack_bwd: one hidden size, one direction");
  std::vector<Tensor> w_ih_up_t;  // [H, G] per layer below the top: W_ih of the layer above, transposed
  for (int64_t l = 0; l + 1 < L; ++l) w_ih_up_t.push_back(w_ih[l + 1].t().contiguous());
  const SeqLayout seq = passes[0].lh[0].view();

  bool done = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "lstm_fused_stack_bwd", [&] {
    using T = scalar_t;
    using A = cuda_step::acc_t<T>;
    using Step = cuda_step::BwdStepParams<T, A>;
    std::vector<std::vector<cuda_step::DirectionParams<Step>>> per_layer;
    for (auto& p : passes) per_layer.push_back(p.template steps<T, A>());
    persistent::StepTable<Step> table;
    table.count = static_cast<int>(L);
    table.n_steps = n + L - 1;
    table.steps.resize(table.n_steps * L);
    for (int64_t g = 0; g < table.n_steps; ++g) {
      for (int64_t l = 0; l < L; ++l) {
        const int64_t i = g - (L - 1 - l);  // this layer's backward step at grid step g
        const bool active = i >= 0 && i < n;
        Step p = per_layer[l][active ? i : 0].dir[0];
        if (l + 1 < L) {
          const int64_t G_up = passes[l + 1].G, t = seq.time_at(n - 1 - (active ? i : 0));
          p.K_up = G_up;
          p.w_ih_up_t = w_ih_up_t[l].const_data_ptr<T>();
          p.dg_up = passes[l + 1].dg.template const_data_ptr<A>() + seq.offsets[t] * G_up;
        }
        if (!active) p.rows = 0;  // this layer idles at grid step g
        table.steps[g * L + l] = p;
      }
    }
    done = run.sequence(table, B, /*optional=*/true);
  });
  if (!done) return by_layers();
  count_path(RecurrentPath::kWavefront);
  std::vector<Tensor> gh0, gc0;
  LayerGrads r;
  for (int64_t l = 0; l < L; ++l) {
    LayerGrads g = passes[l].tail();
    if (l == 0) r.input = g.input;
    gh0.push_back(g.h0), gc0.push_back(g.c0), r.w_ih.push_back(g.w_ih[0]), r.w_hh.push_back(g.w_hh[0]);
    if (has_bias) r.b_ih.push_back(g.b_ih[0]);
    if (a.fwd.w.w_ph) r.w_ph.push_back(g.w_ph[0]);
  }
  r.h0 = at::cat(gh0), r.c0 = at::cat(gc0);
  return r;
}

}  // namespace cuda_driver
}  // namespace lstm_fused
