// lstm_stack_fwd: the forward of a stack of unidirectional LSTM layers without projection, in one op, so the
// CUDA path can run all layers in one persistent launch as a wavefront (layer l at step t next to layer l+1
// at step t−1: T + L − 1 grid steps instead of L·T). Everywhere else it is the loop below over the layer op, and
// its backward (lstm_stack_bwd) the loop over the layer backward op, top layer first, so its results are the layer
// op's. Returns every layer's output and workspace, which those backwards need.
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "host/op_args.h"

namespace lstm_fused {

// One weight per layer in every list; h0/c0 [L, B, H].
inline int64_t check_stack_args(const LayerArgs& a) {
  const LayerWeights& w = a.w;
  const int64_t L = static_cast<int64_t>(w.w_ih.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(w.w_hh.size()) == L, "lstm_fused: lstm_stack_fwd expects one W_ih and one "
              "W_hh per layer, got ", w.w_ih.size(), " and ", w.w_hh.size());
  for (const auto* list : {&w.b_ih, &w.b_hh, &w.w_ph})
    TORCH_CHECK(!*list || static_cast<int64_t>((*list)->size()) == L, "lstm_fused: lstm_stack_fwd expects one tensor per "
                "layer in each optional weight list");
  TORCH_CHECK(a.h0.dim() == 3 && a.c0.dim() == 3 && a.h0.size(0) == L && a.c0.size(0) == L, "lstm_fused: "
              "lstm_stack_fwd expects h0 and c0 of shape [layers, batch, hidden] with ", L, " layers, got ",
              a.h0.sizes(), " and ", a.c0.sizes());
  return L;
}

// The stack as a loop over `layer_fwd`, a callable taking one layer's LayerArgs (no w_hr) to its LayerOutputs.
template <typename LayerFwd>
StackOutputs stack_loop(const LayerArgs& a, const LayerFwd& layer_fwd) {
  const int64_t L = check_stack_args(a);
  StackOutputs r;
  std::vector<at::Tensor> hns, cns;
  at::Tensor x = a.input;
  for (int64_t l = 0; l < L; ++l) {
    LayerOutputs o = layer_fwd(a.layer(l, x));
    x = o.output;
    r.outputs.push_back(o.output);
    r.workspaces.push_back(o.workspace);
    hns.push_back(o.h_n);
    cns.push_back(o.c_n);
  }
  r.h_n = at::cat(hns);
  r.c_n = at::cat(cns);
  return r;
}

// An empty output gradient stands for zeros (the loss did not use that layer's output).
inline bool no_grad(const at::Tensor& grad, const at::Tensor& output) {
  return grad.numel() == 0 && output.numel() != 0;
}

// The stack's backward as a loop over `layer_bwd` (a callable taking one layer's LayerBwdArgs to its LayerGrads),
// top layer first: a layer's output gradient is its own (grad_outputs[l]) plus the input gradient of the layer above.
// Returns grad_input (empty unless need_grad_input), grad_h0 and grad_c0 [L, B, H], and per layer W_ih, W_hh, bias
// (in b_ih; empty without biases) and peephole (empty without) gradients.
template <typename LayerBwd>
LayerGrads stack_bwd_loop(const StackBwdArgs& a, const LayerBwd& layer_bwd) {
  const int64_t L = check_stack_args(a.fwd);
  TORCH_CHECK(static_cast<int64_t>(a.grad_outputs.size()) == L && static_cast<int64_t>(a.outputs.size()) == L &&
                  static_cast<int64_t>(a.workspaces.size()) == L,
              "lstm_fused: lstm_stack_bwd expects one output gradient, output and workspace per layer");
  std::vector<at::Tensor> gh0(L), gc0(L);
  LayerGrads r;
  r.w_ih.resize(L), r.w_hh.resize(L);
  at::Tensor from_above;
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& own = a.grad_outputs[l];
    const at::Tensor& output = a.outputs[l];
    const at::Tensor grad = no_grad(own, output) ? (from_above.defined() ? from_above : at::zeros_like(output))
                                                 : (from_above.defined() ? own + from_above : own);
    LayerGrads g = layer_bwd(a.layer(l, grad, l > 0 || a.need_grad_input));
    gh0[l] = g.h0, gc0[l] = g.c0, r.w_ih[l] = g.w_ih[0], r.w_hh[l] = g.w_hh[0];
    if (a.has_bias) r.b_ih.insert(r.b_ih.begin(), g.b_ih[0]);
    if (a.fwd.w.w_ph) r.w_ph.insert(r.w_ph.begin(), g.w_ph[0]);
    (l > 0 ? from_above : r.input) = g.input;
  }
  r.h0 = at::cat(gh0), r.c0 = at::cat(gc0);
  return r;
}

}  // namespace lstm_fused
