// Argument checks and sequence layout shared by the backend bindings (torch-side; kernels never see it).
// Errors use the exception types nn.LSTM raises for the same mistake: RuntimeError for shapes and malformed
// batch_sizes, TypeError for unsupported dtypes.
#pragma once

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "host/op_args.h"
#include "kernels/recurrent_params.h"

namespace lstm_fused {

struct LayerSizes {
  int64_t I = 0;  // input features
  int64_t H = 0;  // hidden units (cell size)
  int64_t P = 0;  // recurrent/output size: proj_size, or H without a projection
  bool proj = false;
  bool coupled = false;   // LSTM with a coupled input-forget gate: gates i, g, o
  bool peephole = false;  // peephole weights w_ph
  int64_t n_gates = 4;    // gate blocks of W_ih / W_hh (LSTM 4, coupled LSTM 3, GRU 3)
  bool zoneout_h = false;  // zoneout masks given for h / c
  bool zoneout_c = false;
  bool layer_norm = false;  // layer-norm parameters given
  int64_t gates() const { return n_gates; }
  int64_t G() const { return gates() * H; }  // gate rows of W_ih / W_hh
  bool zoneout() const { return zoneout_h || zoneout_c; }
  // Workspace columns of an LSTM row: the activated gates, c_t (with zoneout_c the candidate c̃_t, then the zoned-out
  // c_t), then with layer norm the block at ln_col().
  int64_t lstm_ws_cols() const { return ln_col() + (layer_norm ? 2 * G() + H + 3 : 0); }
  // LSTM with layer norm: the column of x̂_ih (the normalised input product, G), followed by x̂_hh (G), ĉ (H) and the
  // reciprocal standard deviations of the three rows (3).
  int64_t ln_col() const { return G() + H + (zoneout_c ? H : 0); }
  // GRU: r, z, n and the recurrent n product, then with layer norm x̂_ih, x̂_hh (G each) and their two reciprocal
  // standard deviations.
  int64_t gru_ws_cols() const { return G() + H + (layer_norm ? 2 * G() + 2 : 0); }
};

// Owns the batch_sizes/offsets arrays a SeqLayout points into.
struct SeqLayoutHolder {
  std::vector<int64_t> batch_sizes, offsets;
  bool reverse = false;
  int64_t N = 0;

  SeqLayout view() const {
    SeqLayout l;
    l.T = static_cast<int64_t>(batch_sizes.size());
    l.B = batch_sizes.empty() ? 0 : batch_sizes[0];
    l.N = N;
    l.batch_sizes = batch_sizes.data();
    l.offsets = offsets.data();
    l.reverse = reverse;
    return l;
  }
};

inline void check_same_dtype_device(const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "lstm_fused: ", name, " has dtype ", t.scalar_type(),
              " but input has dtype ", ref.scalar_type(), "; all tensors must share one dtype");
  TORCH_CHECK(t.device() == ref.device(), "lstm_fused: ", name, " is on ", t.device(), " but input is on ",
              ref.device(), "; all tensors must be on one device");
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, "lstm_fused: expected ", name, " of shape ", expected, ", got ", t.sizes());
}

// The cell a layer op runs, as the checks see it: how many gate blocks its weights have and whether it carries a
// cell state c beside h (LSTM: 4, or 3 when coupled, with c; GRU: 3 — r, z, n — without).
struct CellKind {
  int64_t gates = 4;
  bool has_cell_state = true;
  bool coupled = false;
  const char* states() const { return has_cell_state ? "h0 and c0" : "h0"; }
};
inline CellKind lstm_cell(bool coupled) { return {coupled ? 3 : 4, true, coupled}; }
inline CellKind gru_cell() { return {3, false, false}; }

// Validates one layer's tensors for `cell` and returns its sizes. B is the batch (h0.size(0)); c0 is checked only
// for a cell with a cell state.
inline LayerSizes check_layer_args(const CellKind& cell, const at::Tensor& input,
                                   const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0,
                                   const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                   const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                                   const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& w_ph) {
  const bool packed = batch_sizes.has_value();
  const int64_t ng = cell.gates;
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "lstm_fused: input must have ", packed ? 2 : 3,
              " dimensions, got ", input.dim());
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, "lstm_fused: weights must be 2-D");
  TORCH_CHECK(w_ih.size(0) % ng == 0 && w_ih.size(0) > 0, "lstm_fused: weight_ih must have ", ng,
              "*hidden_size rows, got ", w_ih.size(0));
  LayerSizes s;
  s.coupled = cell.coupled;
  s.n_gates = ng;
  s.peephole = w_ph.has_value();
  s.I = input.size(-1);
  s.H = w_ih.size(0) / ng;
  s.proj = w_hr.has_value();
  s.P = s.proj ? w_hr->size(0) : s.H;
  const int64_t B = h0.dim() == 2 ? h0.size(0) : -1;
  check_shape(w_ih, {ng * s.H, s.I}, "weight_ih (input.size(-1) must be equal to input_size)");
  check_shape(w_hh, {ng * s.H, s.P}, "weight_hh");
  if (s.proj) check_shape(*w_hr, {s.P, s.H}, "weight_hr");
  if (s.peephole) {
    check_shape(*w_ph, {ng - 1, s.H}, "weight_ph");
    check_same_dtype_device(input, *w_ph, "weight_ph");
  }
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), "lstm_fused: pass both biases or neither");
  if (b_ih) {
    check_shape(*b_ih, {ng * s.H}, "bias_ih");
    check_shape(*b_hh, {ng * s.H}, "bias_hh");
  }
  TORCH_CHECK(h0.dim() == 2 && (!cell.has_cell_state || c0.dim() == 2), "lstm_fused: ", cell.states(),
              " must be 2-D [batch, features]");
  check_shape(h0, {B, s.P}, "h0");
  if (cell.has_cell_state) check_shape(c0, {B, s.H}, "c0");
  if (!packed) {
    TORCH_CHECK(input.size(1) == B, "lstm_fused: input batch ", input.size(1), " does not match h0 batch ", B);
  }
  check_same_dtype_device(input, h0, "h0");
  if (cell.has_cell_state) check_same_dtype_device(input, c0, "c0");
  for (auto [t, name] : {std::pair{&w_ih, "weight_ih"}, {&w_hh, "weight_hh"}}) check_same_dtype_device(input, *t, name);
  if (b_ih) {
    check_same_dtype_device(input, *b_ih, "bias_ih");
    check_same_dtype_device(input, *b_hh, "bias_hh");
  }
  if (s.proj) check_same_dtype_device(input, *w_hr, "weight_hr");
  return s;
}

// Output-shaped tensor: the input's leading dims with a last dim of `cols`.
inline std::vector<int64_t> with_last(const at::Tensor& input, int64_t cols) {
  auto shape = input.sizes().vec();
  shape.back() = cols;
  return shape;
}

// One direction's weights, taken from the per-direction lists of the op (ln: its layer-norm parameters, contiguous,
// in LayerArgs::layer_norm's order; empty without).
struct DirectionWeights {
  at::Tensor w_ih, w_hh;
  std::optional<at::Tensor> b_ih, b_hh, w_hr, w_ph;
  std::vector<at::Tensor> ln;
};

// Validates a layer of D directions (h0 [D, B, P], c0 [D, B, H] where the cell has one, lists of D weights) and
// returns its sizes and each direction's weights.
inline LayerSizes check_directions(const CellKind& cell, const LayerArgs& a, std::vector<DirectionWeights>& dirs) {
  const at::Tensor &h0 = a.h0, &c0 = a.c0;
  const LayerWeights& w = a.w;
  const int64_t D = static_cast<int64_t>(w.w_ih.size());
  TORCH_CHECK(D == 1 || D == 2, "lstm_fused: a layer has 1 or 2 directions, got ", D, " weight_ih tensors");
  auto same_len = [&](const std::optional<TensorVec>& l, const char* name) {
    TORCH_CHECK(!l || static_cast<int64_t>(l->size()) == D, "lstm_fused: expected ", D, " ", name, " tensors");
  };
  TORCH_CHECK(static_cast<int64_t>(w.w_hh.size()) == D, "lstm_fused: expected ", D, " weight_hh tensors");
  same_len(w.b_ih, "bias_ih");
  same_len(w.b_hh, "bias_hh");
  same_len(w.w_hr, "weight_hr");
  same_len(w.w_ph, "weight_ph");
  const bool c_ok = !cell.has_cell_state || (c0.dim() == 3 && c0.size(0) == D);
  TORCH_CHECK(h0.dim() == 3 && h0.size(0) == D && c_ok, "lstm_fused: ", cell.states(),
              " must be [directions, batch, features] with ", D, " directions, got ", h0.sizes(),
              cell.has_cell_state ? " and " + c10::str(c0.sizes()) : std::string());
  dirs.clear();
  LayerSizes s;
  for (int64_t d = 0; d < D; ++d) {
    DirectionWeights dw{w.w_ih[d], w.w_hh[d], std::nullopt, std::nullopt, std::nullopt, std::nullopt, {}};
    if (w.b_ih) dw.b_ih = (*w.b_ih)[d];
    if (w.b_hh) dw.b_hh = (*w.b_hh)[d];
    if (w.w_hr) dw.w_hr = (*w.w_hr)[d];
    if (w.w_ph) dw.w_ph = (*w.w_ph)[d];
    const LayerSizes sd = check_layer_args(cell, a.input, a.batch_sizes, h0[d], cell.has_cell_state ? c0[d] : h0[d],
                                           dw.w_ih, dw.w_hh, dw.b_ih, dw.b_hh, dw.w_hr, dw.w_ph);
    TORCH_CHECK(d == 0 || (sd.H == s.H && sd.P == s.P), "lstm_fused: directions differ in size");
    s = sd;
    dirs.push_back(std::move(dw));
  }
  return s;
}

// A zoneout mask: [D, rows, width] (rows: the input's rows, T·B or N; any strides), in the accumulate dtype (float64
// for float64 input, float32 otherwise), on the input's device.
inline bool check_zoneout_mask(const std::optional<at::Tensor>& mask, const at::Tensor& input, int64_t D, int64_t I,
                               int64_t width, const char* name) {
  if (!mask) return false;
  const int64_t rows = input.numel() / std::max<int64_t>(1, I);
  TORCH_CHECK(mask->dim() == 3 && mask->size(0) == D && mask->size(1) == rows && mask->size(2) == width,
              "lstm_fused: expected ", name, " of shape [", D, ", ", rows, ", ", width, "] (directions, input rows, ",
              "state size), got ", mask->sizes());
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(mask->scalar_type() == acc, "lstm_fused: ", name, " must be ", acc, " for ", input.scalar_type(),
              " input, got ", mask->scalar_type());
  TORCH_CHECK(mask->device() == input.device(), "lstm_fused: ", name, " is on ", mask->device(), " but input is on ",
              input.device());
  return true;
}

// Layer-norm parameters: per direction `widths.size()` vectors of those lengths (LSTM G, G, H, H; GRU G, G), in the
// input's dtype and device, handed to each direction's weights.
inline bool check_layer_norm(const std::optional<TensorVec>& ln, const at::Tensor& input,
                             std::vector<DirectionWeights>& dirs, const std::vector<int64_t>& widths) {
  if (!ln) return false;
  const int64_t D = static_cast<int64_t>(dirs.size()), per = static_cast<int64_t>(widths.size());
  TORCH_CHECK(static_cast<int64_t>(ln->size()) == D * per, "lstm_fused: expected ", D * per, " layer_norm tensors (",
              per, " per direction), got ", ln->size());
  for (int64_t d = 0; d < D; ++d) {
    dirs[d].ln.clear();
    for (int64_t k = 0; k < per; ++k) {
      const at::Tensor& t = (*ln)[d * per + k];
      check_shape(t, {widths[k]}, "layer_norm parameter");
      check_same_dtype_device(input, t, "layer_norm parameter");
      dirs[d].ln.push_back(t.contiguous());
    }
  }
  return true;
}

// An LSTM layer (coupled: gate blocks i, g, o), with its zoneout masks and layer norm.
inline LayerSizes check_lstm_directions(const LayerArgs& a, std::vector<DirectionWeights>& dirs) {
  LayerSizes s = check_directions(lstm_cell(a.coupled), a, dirs);
  const int64_t D = static_cast<int64_t>(dirs.size());
  s.zoneout_h = check_zoneout_mask(a.zoneout_h, a.input, D, s.I, s.P, "zoneout_h");
  s.zoneout_c = check_zoneout_mask(a.zoneout_c, a.input, D, s.I, s.H, "zoneout_c");
  s.layer_norm = check_layer_norm(a.layer_norm, a.input, dirs, {s.G(), s.G(), s.H, s.H});
  return s;
}

// A GRU layer: h0 [D, B, H], weights with gate blocks r, z, n, no projection or peepholes; its zoneout mask and layer
// norm.
inline LayerSizes check_gru_directions(const LayerArgs& a, std::vector<DirectionWeights>& dirs) {
  LayerSizes s = check_directions(gru_cell(), a, dirs);
  s.zoneout_h = check_zoneout_mask(a.zoneout_h, a.input, static_cast<int64_t>(dirs.size()), s.I, s.H, "zoneout_h");
  s.layer_norm = check_layer_norm(a.layer_norm, a.input, dirs, {s.G(), s.G()});
  return s;
}

// Builds the row layout of a padded [T, B, ...] or packed [N, ...] sequence, validating batch_sizes.
inline SeqLayoutHolder make_layout(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes, int64_t B,
                                   bool reverse) {
  SeqLayoutHolder h;
  if (batch_sizes) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                      "lstm_fused: batch_sizes must be a 1-D int64 CPU tensor (as in PackedSequence)");
    const at::Tensor bsc = bs.contiguous();
    h.batch_sizes.assign(bsc.data_ptr<int64_t>(), bsc.data_ptr<int64_t>() + bsc.numel());
  } else {
    h.batch_sizes.assign(input.size(0), B);
  }
  const int64_t T = static_cast<int64_t>(h.batch_sizes.size());
  TORCH_CHECK(T > 0, "lstm_fused: the input sequence is empty (0 time steps)");
  h.offsets.resize(T);
  int64_t n = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t b = h.batch_sizes[t];
    if (batch_sizes) {
      TORCH_CHECK(b > 0 && b <= (t == 0 ? B : h.batch_sizes[t - 1]),
                        "lstm_fused: batch_sizes must be positive and non-increasing, with batch_sizes[0] == "
                        "h0.size(0) (",
                        B, "); got ", b, " at step ", t);
    }
    h.offsets[t] = n;
    n += b;
  }
  if (batch_sizes) {
    TORCH_CHECK(h.batch_sizes[0] == B, "lstm_fused: batch_sizes[0] (", h.batch_sizes[0],
                      ") must equal the batch of h0 (", B, ")");
    TORCH_CHECK(n == input.size(0), "lstm_fused: batch_sizes sum to ", n, " but the packed input has ",
                      input.size(0), " rows");
  }
  h.N = n;
  h.reverse = reverse;
  return h;
}

// The row layout of each direction of a layer (direction 1 runs in reverse).
inline std::vector<SeqLayoutHolder> direction_layouts(const at::Tensor& input,
                                                      const std::optional<at::Tensor>& batch_sizes, int64_t B,
                                                      int64_t directions) {
  std::vector<SeqLayoutHolder> layouts;
  for (int64_t d = 0; d < directions; ++d) layouts.push_back(make_layout(input, batch_sizes, B, d == 1));
  return layouts;
}

}  // namespace lstm_fused
