// The signatures of the six product ops, written once: host/op_schemas.cpp defines lstm_fused::<name> with them,
// and the test library (testing/) defines its emulated twins lstm_fused_testing::emu_<name> with the same ones.
#pragma once

namespace lstm_fused::schema {

// One LSTM layer over the whole sequence, in D = len(w_ih) directions (2: the second runs in reverse).
// input: [T, B, I] (batch_sizes None) or packed data [N, I] with batch_sizes [T] (int64, CPU).
// h0: [D, B, P], c0: [D, B, H] (P = proj_size or H). The lists hold one tensor per direction.
// Variants: w_ph (peephole weights [3, H]: p_i, p_f, p_o) and coupled (f = 1 − i; gate rows i, g, o, so
// W_ih/W_hh/biases have 3H rows and w_ph is [2, H]: p_i, p_o).
// Zoneout: zoneout_h [D, rows, P] and zoneout_c [D, rows, H] (rows: T·B padded, N packed; any strides, so an
// expanded scalar serves eval) give per row and unit how much of the previous h / c is kept:
// h_t = m ⊙ h_{t-1} + (1 − m) ⊙ h̃_t, c_t likewise; in the accumulate dtype (float64 for float64, else float32).
// Returns output [T, B, D·P] / [N, D·P] (directions side by side, as nn.LSTM), h_n [D, B, P], c_n [D, B, H],
// Layer norm: layer_norm holds per direction γ_ih [G], γ_hh [G], γ_c [H], β_c [H]: gates = LN(x·W_ihᵀ; γ_ih) +
// LN(h·W_hhᵀ; γ_hh) + biases, each LN over the row's G values without bias (ε 1e-5), h = o ⊙ tanh(LN(c; γ_c, β_c)).
// Returns output [T, B, D·P] / [N, D·P] (directions side by side, as nn.LSTM), h_n [D, B, P], c_n [D, B, H],
// and the workspace the backward reads ([D, ..., G + H]: activated gates and c_t per row, G = 4H or 3H; with
// zoneout_c [D, ..., G + 2H]: the candidate c̃_t, then the zoned-out c_t; with layer_norm 2G + H + 3 more columns:
// the normalised products and c, and their three reciprocal deviations; empty when need_workspace is false, as in
// inference).
inline constexpr const char* kLstmLayerFwd =
    "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, "
    "Tensor[]? b_ih, Tensor[]? b_hh, Tensor[]? w_hr, Tensor[]? w_ph, bool coupled, bool need_workspace, "
    "Tensor? zoneout_h=None, Tensor? zoneout_c=None, Tensor[]? layer_norm=None) -> (Tensor, Tensor, Tensor, Tensor)";

// Gradients of lstm_layer_fwd. grad_input is empty unless need_grad_input; grad_bias (the gradient of b_ih
// and of b_hh alike, per direction) is empty unless has_bias; grad_w_hr / grad_w_ph / grad_layer_norm (in
// layer_norm's order) are empty without a projection / peepholes / layer norm.
inline constexpr const char* kLstmLayerBwd =
    "(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor? batch_sizes, "
    "Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, Tensor[]? w_hr, Tensor[]? w_ph, bool coupled, "
    "Tensor output, Tensor workspace, bool has_bias, bool need_grad_input, Tensor? zoneout_h=None, "
    "Tensor? zoneout_c=None, Tensor[]? layer_norm=None) "
    "-> (Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])";

// A stack of unidirectional LSTM layers without projection (host/stack_loop.h): the lists hold one tensor per
// layer, h0/c0 are [L, B, H]. Returns every layer's output, h_n [L, B, H], c_n [L, B, H] and every layer's
// workspace (as lstm_layer_fwd returns them, so the layer backward takes them as they are).
inline constexpr const char* kLstmStackFwd =
    "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, "
    "Tensor[]? b_ih, Tensor[]? b_hh, Tensor[]? w_ph, bool coupled, bool need_workspace) "
    "-> (Tensor[], Tensor, Tensor, Tensor[])";

// Gradients of lstm_stack_fwd: grad_outputs holds one gradient per layer output (an empty tensor where the loss
// did not use one). Returns grad_input, grad_h0 [L, B, H], grad_c0 [L, B, H] and per-layer lists: W_ih, W_hh,
// bias (empty without), peephole (empty without).
inline constexpr const char* kLstmStackBwd =
    "(Tensor[] grad_outputs, Tensor grad_h_n, Tensor grad_c_n, Tensor input, Tensor? batch_sizes, "
    "Tensor h0, Tensor c0, Tensor[] w_ih, Tensor[] w_hh, Tensor[]? w_ph, bool coupled, Tensor[] outputs, "
    "Tensor[] workspaces, bool has_bias, bool need_grad_input) "
    "-> (Tensor, Tensor, Tensor, Tensor[], Tensor[], Tensor[], Tensor[])";

// One GRU layer over the whole sequence in D = len(w_ih) directions (nn.GRU's gates r, z, n: W_ih [3H, I],
// W_hh [3H, H]). h0: [D, B, H]. zoneout_h: [D, rows, H], as lstm_layer_fwd's. layer_norm: per direction γ_ih, γ_hh
// [3H], the products normalised over their 3H values before the biases. Returns output [..., D·H], h_n [D, B, H]
// and the workspace ([D, ..., 4H]: r, z, n and the recurrent n product per row, with layer_norm 6H + 2 more: the
// normalised products and their reciprocal deviations; empty when need_workspace is false).
inline constexpr const char* kGruLayerFwd =
    "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor[] w_ih, Tensor[] w_hh, Tensor[]? b_ih, "
    "Tensor[]? b_hh, bool need_workspace, Tensor? zoneout_h=None, Tensor[]? layer_norm=None) "
    "-> (Tensor, Tensor, Tensor)";

// Gradients of gru_layer_fwd: input (empty unless need_grad_input), h0, and per direction W_ih, W_hh, b_ih,
// b_hh (the bias lists empty unless has_bias), and the layer-norm parameters' (empty without).
inline constexpr const char* kGruLayerBwd =
    "(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, Tensor h0, "
    "Tensor[] w_ih, Tensor[] w_hh, Tensor output, Tensor workspace, bool has_bias, bool need_grad_input, "
    "Tensor? zoneout_h=None, Tensor[]? layer_norm=None) "
    "-> (Tensor, Tensor, Tensor[], Tensor[], Tensor[], Tensor[], Tensor[])";

struct OpSignature {
  const char* name;
  const char* signature;
};

inline constexpr OpSignature kOps[] = {
    {"lstm_layer_fwd", kLstmLayerFwd}, {"lstm_layer_bwd", kLstmLayerBwd}, {"lstm_stack_fwd", kLstmStackFwd},
    {"lstm_stack_bwd", kLstmStackBwd}, {"gru_layer_fwd", kGruLayerFwd},   {"gru_layer_bwd", kGruLayerBwd},
};

}  // namespace lstm_fused::schema
