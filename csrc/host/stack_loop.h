// lstm_stack_fwd: the forward of a stack of unidirectional LSTM layers without projection, in one op, so the
// CUDA path can run all layers in one persistent launch as a wavefront (layer l at step t next to layer l+1
// at step t−1: T + L − 1 grid steps instead of L·T). Everywhere else it is the loop below over the layer op, and
// its backward (lstm_stack_bwd) the loop over the layer backward op, top layer first, so its results are the layer
// op's. Returns every layer's output and workspace, which those backwards need.
#pragma once

#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>

namespace lstm_fused {

using StackOutputs = std::tuple<std::vector<at::Tensor>, at::Tensor, at::Tensor, std::vector<at::Tensor>>;

inline std::optional<at::TensorList> layer_of(const std::optional<at::TensorList>& list, int64_t l) {
  return list ? std::optional<at::TensorList>(list->slice(l, 1)) : std::nullopt;
}

// One weight per layer in every list; h0/c0 [L, B, H].
inline int64_t check_stack_args(const at::Tensor& h0, const at::Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                                const std::optional<at::TensorList>& b_ih, const std::optional<at::TensorList>& b_hh,
                                const std::optional<at::TensorList>& w_ph) {
  const int64_t L = static_cast<int64_t>(w_ih.size());
  TORCH_CHECK(L >= 1 && static_cast<int64_t>(w_hh.size()) == L, "lstm_fused: lstm_stack_fwd expects one W_ih and one W_hh "
              "per layer, got ", w_ih.size(), " and ", w_hh.size());
  for (const auto* list : {&b_ih, &b_hh, &w_ph})
    TORCH_CHECK(!*list || static_cast<int64_t>((*list)->size()) == L, "lstm_fused: lstm_stack_fwd expects one tensor per "
                "layer in each optional weight list");
  TORCH_CHECK(h0.dim() == 3 && c0.dim() == 3 && h0.size(0) == L && c0.size(0) == L, "lstm_fused: lstm_stack_fwd "
              "expects h0 and c0 of shape [layers, batch, hidden] with ", L, " layers, got ", h0.sizes(), " and ",
              c0.sizes());
  return L;
}

// The stack as a loop over `layer_fwd`, a callable with lstm_layer_fwd's arguments (without w_hr) and results.
template <typename LayerFwd>
StackOutputs stack_loop(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
                        const at::Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                        const std::optional<at::TensorList>& b_ih, const std::optional<at::TensorList>& b_hh,
                        const std::optional<at::TensorList>& w_ph, bool coupled, bool need_workspace,
                        const LayerFwd& layer_fwd) {
  const int64_t L = check_stack_args(h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph);
  std::vector<at::Tensor> outs, wss, hns, cns;
  at::Tensor x = input;
  for (int64_t l = 0; l < L; ++l) {
    auto [out, h_n, c_n, ws] = layer_fwd(x, batch_sizes, h0.narrow(0, l, 1), c0.narrow(0, l, 1), w_ih.slice(l, 1),
                                         w_hh.slice(l, 1), layer_of(b_ih, l), layer_of(b_hh, l), layer_of(w_ph, l),
                                         coupled, need_workspace);
    x = out;
    outs.push_back(out);
    wss.push_back(ws);
    hns.push_back(h_n);
    cns.push_back(c_n);
  }
  return {outs, at::cat(hns), at::cat(cns), wss};
}

// Gradients of lstm_stack_fwd (grad_outputs: one per layer output, empty where the loss did not use it): grad_input (empty unless need_grad_input), grad_h0 [L, B, H], grad_c0 [L, B, H], and
// per layer: W_ih, W_hh, bias (empty list without biases; b_ih and b_hh share it), peephole (empty list without).
using StackGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>,
                              std::vector<at::Tensor>, std::vector<at::Tensor>>;

// An empty output gradient stands for zeros (the loss did not use that layer's output).
inline bool no_grad(const at::Tensor& grad, const at::Tensor& output) {
  return grad.numel() == 0 && output.numel() != 0;
}

// The stack's backward as a loop over `layer_bwd` (lstm_layer_bwd's arguments and results), top layer first: a
// layer's output gradient is its own (grad_outputs[l]) plus the input gradient of the layer above.
template <typename LayerBwd>
StackGrads stack_bwd_loop(at::TensorList grad_outputs, const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                          const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
                          const at::Tensor& c0, at::TensorList w_ih, at::TensorList w_hh,
                          const std::optional<at::TensorList>& w_ph, bool coupled, at::TensorList outputs,
                          at::TensorList workspaces, bool has_bias, bool need_grad_input, const LayerBwd& layer_bwd) {
  const int64_t L = check_stack_args(h0, c0, w_ih, w_hh, std::nullopt, std::nullopt, w_ph);
  TORCH_CHECK(static_cast<int64_t>(grad_outputs.size()) == L && static_cast<int64_t>(outputs.size()) == L &&
                  static_cast<int64_t>(workspaces.size()) == L,
              "lstm_fused: lstm_stack_bwd expects one output gradient, output and workspace per layer");
  std::vector<at::Tensor> gh0(L), gc0(L), gw_ih(L), gw_hh(L), gb, gw_ph;
  at::Tensor from_above, grad_input;
  for (int64_t l = L - 1; l >= 0; --l) {
    const at::Tensor& own = grad_outputs[l];
    const at::Tensor g = no_grad(own, outputs[l]) ? (from_above.defined() ? from_above : at::zeros_like(outputs[l]))
                                                  : (from_above.defined() ? own + from_above : own);
    auto [gi, h, c, wi, wh, b, hr, ph] =
        layer_bwd(g, grad_h_n.narrow(0, l, 1), grad_c_n.narrow(0, l, 1), l == 0 ? input : outputs[l - 1], batch_sizes,
                  h0.narrow(0, l, 1), c0.narrow(0, l, 1), w_ih.slice(l, 1), w_hh.slice(l, 1), std::nullopt,
                  layer_of(w_ph, l), coupled, outputs[l], workspaces[l], has_bias, l > 0 || need_grad_input);
    gh0[l] = h, gc0[l] = c, gw_ih[l] = wi[0], gw_hh[l] = wh[0];
    if (has_bias) gb.insert(gb.begin(), b[0]);
    if (w_ph) gw_ph.insert(gw_ph.begin(), ph[0]);
    (l > 0 ? from_above : grad_input) = gi;
  }
  return {grad_input, at::cat(gh0), at::cat(gc0), gw_ih, gw_hh, gb, gw_ph};
}

}  // namespace lstm_fused
