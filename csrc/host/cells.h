// The cells as every backend's layer driver sees them, whatever the device: their checks, whether they carry a cell
// state, where their biases go, the weight only the cell reads, whether W_ih and W_hh share one pre-activation
// gradient. Each backend extends these
// with what it runs (drivers/cell_traits.h for the CUDA path, cpu/layer_cpu.h for the CPU).
#pragma once

#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "host/arg_checks.h"

namespace lstm_fused {

// LSTM, its peephole and coupled variants included: h and the cell state c; workspace rows hold the activated gates
// and c_t.
struct LstmCell {
  static constexpr bool kHasCellState = true;
  static constexpr bool kHasProjection = true;
  // One pre-activation gradient serves W_ih, W_hh and both biases.
  static constexpr bool kSplitGates = false;
  static constexpr const char* kFwdOp = "lstm_layer_fwd";

  static LayerSizes check(const LayerArgs& a, std::vector<DirectionWeights>& dirs) {
    return check_lstm_directions(a, dirs);
  }
  // The input projection carries both biases: the recurrent product adds none.
  static std::optional<at::Tensor> input_bias(const DirectionWeights& w) {
    return w.b_ih ? std::optional<at::Tensor>(*w.b_ih + *w.b_hh) : std::nullopt;
  }
  // The weight only the cell itself reads: the peepholes ([3 or 2, H]); undefined without.
  static at::Tensor cell_weight(const DirectionWeights& w) { return w.w_ph ? w.w_ph->contiguous() : at::Tensor(); }
  // Workspace columns per row: gates and c_t (with zoneout on c, c̃_t and c_t), and the layer norm's from ln_col.
  static int64_t ws_cols(const LayerSizes& s) { return s.lstm_ws_cols(); }
  // With layer norm, the workspace column of x̂_ih (x̂_hh follows, then ĉ and the reciprocal deviations).
  static int64_t ln_col(const LayerSizes& s) { return s.ln_col(); }
};

// GRU (nn.GRU's gates r, z, n): b_hh stays with the recurrent product (r scales W_hn·h + b_hn), so W_ih's and
// W_hh's pre-activation gradients differ; workspace rows hold r, z, n and that product.
struct GruCell {
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasProjection = false;
  static constexpr bool kSplitGates = true;
  static constexpr const char* kFwdOp = "gru_layer_fwd";

  static LayerSizes check(const LayerArgs& a, std::vector<DirectionWeights>& dirs) {
    return check_gru_directions(a, dirs);
  }
  static std::optional<at::Tensor> input_bias(const DirectionWeights& w) { return w.b_ih; }
  // The weight only the cell itself reads: b_hh ([3H]); undefined without.
  static at::Tensor cell_weight(const DirectionWeights& w) { return w.b_hh ? w.b_hh->contiguous() : at::Tensor(); }
  // Workspace columns per row: r, z, n and the recurrent n product (and the layer norm's, LayerSizes::gru_ws_cols).
  static int64_t ws_cols(const LayerSizes& s) { return s.gru_ws_cols(); }
  // With layer norm, the workspace column of x̂_ih (x̂_hh follows, then the two reciprocal deviations).
  static int64_t ln_col(const LayerSizes& s) { return s.G() + s.H; }
};

}  // namespace lstm_fused
