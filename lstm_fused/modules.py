"""nn.LSTM-compatible modules running on the lstm_fused kernels.

They mirror nn.LSTM's constructor, parameter names/shapes/order, initialisation, attributes, validation and
forward semantics, but do not subclass nn.RNNBase (torch.compile's dynamo refuses RNN subclasses). Python
orchestrates layers, directions, batch_first and dropout; each layer-direction is one fused op over the
whole sequence (packed sequences included, through per-step batch sizes).
"""
import math
import numbers
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _messages, onnx_export, ops
from ._regularisers import drop_weight, zoneout_op_masks

__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "convert"]

_HAS_CUDA_KERNELS = ops.has_kernel("CUDA")


def _autocast_dtype(x: Tensor, rule: str, state: Optional[Tensor] = None) -> Optional[torch.dtype]:
    """The dtype nn's counterpart returns under the caller's autocast region, or None where autocast leaves
    that call alone. Measured against nn (tests/test_autocast.py):
    - CPU: nn.LSTM's padded op (`lstm.input`) is on autocast's lower-precision list, its packed op is not
      (except with proj_size, whose path is, and whose c_n keeps c0's dtype); the packed LSTM, nn.GRU and the
      cells are not cast and return their hidden state's dtype (`state`: h0, or the cell's h; without one, the
      input's dtype). Not matched: nn's CPU float16 LSTM, which fails in oneDNN or falls back to float32
      depending on its inputs' dtypes (lstm_fused returns float16).
    - CUDA: cuDNN's RNN (nn.LSTM, nn.GRU, padded or packed) is cast to float16 whatever the autocast dtype
      (aten/src/ATen/cudnn/AutocastRNN.cpp); the cells (lstm_cell, gru_cell) to the autocast dtype.
    rule: "lstm", "lstm_packed", "gru" or "cell". Float64 and non-float inputs are never cast. Assumes float32
    parameters (autocast's use) and, on CUDA, cuDNN enabled."""
    device = x.device.type
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not torch.is_autocast_enabled(device):
        return None
    if device == "cpu":
        if rule == "lstm":
            return torch.get_autocast_dtype(device)
        if state is not None and state.dtype != x.dtype:
            return state.dtype
        return None
    if device == "cuda" and rule != "cell":
        return torch.float16
    return torch.get_autocast_dtype(device)


def _dtypes_compatible(a: torch.dtype, b: torch.dtype) -> bool:
    """Whether nn accepts input, states and weights of these two dtypes together: equal, or under autocast two
    of float32/float16/bfloat16 (float64 mixed with another type fails in nn's kernels even then)."""
    low = (torch.float32, torch.float16, torch.bfloat16)
    return a == b or (torch._C._is_any_autocast_enabled() and a in low and b in low)


def _compute_dtype(result: torch.dtype, device: torch.device) -> torch.dtype:
    # The CPU kernels run float32/float64: half types compute in float32 (like the GPU path's fp32 accumulate)
    # and are cast back at the end.
    return torch.float32 if device.type == "cpu" and result in (torch.float16, torch.bfloat16) else result


def _check_hx_tensors(hx, op: str, count: int) -> None:
    """The argument checks nn's ops (_VF.lstm, _VF.lstm_cell) make on a tuple of hidden states, with their
    exception types: TypeError for what is not a sequence of tensors, RuntimeError for a wrong count. (A GRU's
    one state is a tensor of the caller's, not a sequence: nothing to check for count 1.)"""
    if count == 1:
        return
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{op}(): argument 'hx' must be tuple of Tensors, not {type(hx).__name__}")
    for i, t in enumerate(hx):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}(): expected Tensor as element {i} in argument 'hx', but got {type(t).__name__}")
    if len(hx) != count:
        raise RuntimeError(f"{op} expects two hidden states, got {len(hx)}")


def _apply_permutation(tensor: Tensor, permutation: Tensor, dim: int = 1) -> Tensor:
    return tensor.index_select(dim, permutation)


# -- hidden states -----------------------------------------------------------------------------------------------
# The modules and cells handle their hidden states as a sequence: LSTM's (h, c), GRU's (h,). An LSTM caller's hx
# is used as that sequence as it is (nn indexes it, so a malformed hx fails as in nn); a GRU's is wrapped.
def _as_states(hx, num_states: int):
    return hx if num_states > 1 else (hx,)


def _as_hx(states, num_states: int):
    """The states in the form the caller gets them: (h, c) for LSTM, h for GRU."""
    return tuple(states) if num_states > 1 else states[0]


def _permuted(states, permutation: Optional[Tensor], num_states: int):
    if permutation is None:
        return states
    return tuple(_apply_permutation(states[i], permutation) for i in range(num_states))


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    # Tensor.to returns the tensor itself when the dtype already matches, but its call costs ~3 µs: on a small
    # layer the forward's dozen casts would cost more than the kernel.
    return t if t.dtype == dtype else t.to(dtype)


# -- the fused ops, called alike: (input, batch_sizes, states, weights) -> (output, *final states) ----------------
# `weights` is one entry per kind in _WEIGHT_KINDS' order: a list over the directions, or None where absent.
_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ph")


# `zoneout`: the layer's zoneout masks for the op (h's, then LSTM's c's; None where off), or None. `layer_norm`: the
# layer's layer-norm parameters as the op takes them (per direction in _LN_NAMES' order), or None.
def _lstm_layer(x: Tensor, batch_sizes: Optional[Tensor], states, weights, coupled: bool = False, zoneout=None,
                layer_norm=None):
    zo_h, zo_c = zoneout if zoneout is not None else (None, None)
    return ops.lstm_layer(x, batch_sizes, states[0], states[1], *weights, coupled, zoneout_h=zo_h, zoneout_c=zo_c,
                          layer_norm=layer_norm)


def _gru_layer(x: Tensor, batch_sizes: Optional[Tensor], states, weights, zoneout=None, layer_norm=None):
    return ops.gru_layer(x, batch_sizes, states[0], *weights[:4], zoneout_h=zoneout[0] if zoneout is not None else None,
                         layer_norm=layer_norm)


# The layer-norm parameters of a layer (and direction), in the order the ops take them: the gains of the input and
# recurrent products, then (LSTM) c's gain and bias. GRUs have the first two.
_LN_NAMES = ("weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")


def _ln_shapes(mode: str, gate_size: int, hidden_size: int) -> list:
    shapes = [("weight_ln_ih", gate_size), ("weight_ln_hh", gate_size)]
    return shapes + ([("weight_ln_c", hidden_size), ("bias_ln_c", hidden_size)] if mode == "LSTM" else [])


def _init_parameters(module: nn.Module, hidden_size: int) -> None:
    """nn's initialisation, uniform in ±1/√hidden in parameter order, of every parameter but the layer norms' (gains
    one, biases zero), so a module with layer_norm draws the same numbers for its other parameters as without."""
    stdv = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0
    for name, weight in module.named_parameters():
        if name.startswith(_LN_NAMES):
            nn.init.zeros_(weight) if name.startswith("bias_ln") else nn.init.ones_(weight)
        else:
            nn.init.uniform_(weight, -stdv, stdv)


def _options_repr(module) -> str:
    """extra_repr's part for the keyword-only options that are on (shown by name)."""
    s = "".join(f", {name}={getattr(module, name)}" for name in ("weight_drop", "zoneout", "zoneout_cell")
                if getattr(module, name))
    return s + (", layer_norm=True" if module.layer_norm else "")


def _check_rnn_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    # nn.RNNBase.__init__'s checks, in its order, with its messages and exception types.
    if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
        raise ValueError(
            "dropout should be a number in range [0, 1] representing the probability of an element being zeroed"
        )
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
            f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=3,
        )
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError("input_size must be greater than zero")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError("hidden_size must be greater than zero")
    if num_layers <= 0:
        raise ValueError("num_layers must be greater than zero")
    if proj_size < 0:
        raise ValueError("proj_size should be a positive integer or zero to disable projections")
    if proj_size >= hidden_size:
        raise ValueError("proj_size has to be smaller than hidden_size")


def _check_probability(name: str, p) -> float:
    """A regularising option's probability: a real number in [0, 1) (ValueError otherwise, as nn's dropout)."""
    if not isinstance(p, numbers.Real) or isinstance(p, bool) or not 0 <= p < 1:
        raise ValueError(f"{name} should be a number in range [0, 1) (the probability of an element being "
                         f"dropped), got {p!r}")
    return float(p)


class _FusedRNNBase(nn.Module):
    """What LSTM and GRU share: nn.RNNBase's constructor checks, parameters (names, shapes, order, seeded init),
    attributes and repr, and the whole forward (argument checks, batching, packing, hidden states, the layer
    loop); not a subclass of nn.RNNBase (dynamo refuses those). A subclass gives `_num_states` (LSTM: h and c),
    `_layer_op` (its fused layer op), `_packed_states` (a PackedSequence's hx checked and permuted in nn's order)
    and `_result_dtypes` (the dtypes of the results, autocast included)."""

    # A module pickled before the options existed unpickles without the attributes: it reads these defaults.
    weight_drop = 0.0
    zoneout = 0.0
    zoneout_cell = 0.0
    layer_norm = False

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, peephole: bool = False, coupled: bool = False,
                 weight_drop: float = 0.0, zoneout: float = 0.0, zoneout_cell: float = 0.0,
                 layer_norm: bool = False) -> None:
        super().__init__()
        _check_rnn_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        weight_drop = _check_probability("weight_drop", weight_drop)
        zoneout = _check_probability("zoneout", zoneout)
        zoneout_cell = _check_probability("zoneout_cell", zoneout_cell)
        for name, flag in (("peephole", peephole), ("coupled", coupled), ("layer_norm", layer_norm)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} should be of type bool, got: {type(flag).__name__}")
        factory_kwargs = {"device": device, "dtype": dtype}
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.peephole = peephole
        self.coupled = coupled
        self.weight_drop = weight_drop
        self.zoneout = zoneout
        if mode == "LSTM":
            self.zoneout_cell = zoneout_cell
        self.layer_norm = layer_norm
        num_directions = 2 if bidirectional else 1
        # LSTM: i, f, g, o (coupled: i, g, o with f = 1 - i); GRU: r, z, n.
        gate_size = (3 if coupled or mode == "GRU" else 4) * hidden_size
        real_hidden_size = proj_size if proj_size > 0 else hidden_size

        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(num_directions):
                layer_input_size = input_size if layer == 0 else real_hidden_size * num_directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [
                    ("weight_ih_l{}{}", (gate_size, layer_input_size)),
                    ("weight_hh_l{}{}", (gate_size, real_hidden_size)),
                ]
                if bias:
                    shapes += [("bias_ih_l{}{}", (gate_size,)), ("bias_hh_l{}{}", (gate_size,))]
                if proj_size > 0:
                    shapes += [("weight_hr_l{}{}", (proj_size, hidden_size))]
                if peephole:  # rows p_i, p_f, p_o (p_i, p_o when coupled)
                    shapes += [("weight_ph_l{}{}", (2 if coupled else 3, hidden_size))]
                if layer_norm:  # after the layer's own, so the others keep nn's order
                    shapes += [(name + "_l{}{}", (width,)) for name, width in _ln_shapes(mode, gate_size, hidden_size)]
                names = []
                for fmt, shape in shapes:
                    name = fmt.format(layer, suffix)
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        # Per layer, per kind of _WEIGHT_KINDS: the parameter names over the directions (None where absent),
        # resolved once here rather than parsed from the names on every forward.
        suffixes = ("", "_reverse")[:num_directions]
        self._weight_names = [
            tuple([f"{kind}_l{layer}{sfx}" for sfx in suffixes] if f"{kind}_l{layer}" in self._parameters else None
                  for kind in _WEIGHT_KINDS)
            for layer in range(num_layers)
        ]
        # Per layer: its layer-norm parameters in the ops' order (per direction _LN_NAMES), or None.
        self._ln_names = [
            [f"{name}_l{layer}{sfx}" for sfx in suffixes for name, _ in _ln_shapes(mode, gate_size, hidden_size)]
            if layer_norm else None
            for layer in range(num_layers)
        ]
        self.reset_parameters()

    # -- nn.RNNBase's attributes and housekeeping----------------------------------------------------------
    @property
    def _flat_weights(self) -> list[Tensor]:
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """No-op, kept for nn.LSTM compatibility: the kernels read each parameter where it lives."""

    def __prepare_scriptable__(self):
        """torch.jit.script compiles a TorchScript twin sharing these parameters (lstm_fused/scripting.py)."""
        from .scripting import scriptable

        return scriptable(self)

    def reset_parameters(self) -> None:
        # Same distribution and the same draw order as nn.LSTM: a seeded nn.LSTM and LSTM start equal.
        _init_parameters(self, self.hidden_size)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.proj_size != 0:
            s += ", proj_size={proj_size}"
        if self.num_layers != 1:
            s += ", num_layers={num_layers}"
        if self.bias is not True:
            s += ", bias={bias}"
        if self.batch_first is not False:
            s += ", batch_first={batch_first}"
        if self.dropout != 0:
            s += ", dropout={dropout}"
        if self.bidirectional is not False:
            s += ", bidirectional={bidirectional}"
        if self.peephole:
            s += ", peephole=True"
        if self.coupled:
            s += ", coupled=True"
        return s.format(**self.__dict__) + _options_repr(self)

    # -- argument checks (nn's messages and exception types) ------------------------------------------------------
    def _check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        for p in self._flat_weights:
            if p.device != input.device:
                raise RuntimeError(_messages.parameter_device(input.device, p.device))
        weight_dtype = self.weight_ih_l0.dtype
        if not _dtypes_compatible(input.dtype, weight_dtype):
            # nn.LSTM checks dtypes in Python only for padded input (ValueError); for a PackedSequence the
            # mismatch surfaces from its kernels as a RuntimeError. Same types here, clearer message.
            raise (RuntimeError if batch_sizes is not None else ValueError)(
                _messages.input_dtype(str(input.dtype), str(weight_dtype))
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(_messages.input_dims(expected_input_dim, input.dim()))
        if self.input_size != input.size(-1):
            raise RuntimeError(_messages.input_size(self.input_size, input.size(-1)))

    def _check_ranks(self, input: Tensor, hx) -> tuple:
        """nn's rank checks on padded input (ValueError) and its hx (RuntimeError). Returns whether the input is
        batched, and hx as the sequence of states (None for hx None), unbatched ones given a batch dimension."""
        if input.dim() not in (2, 3):
            raise ValueError(_messages.bad_rank(self.mode, "input", 3, input.dim()))
        is_batched = input.dim() == 3
        if hx is None:
            return is_batched, None
        states = _as_states(hx, self._num_states)
        # In nn's order (h, its rank, c, its rank): a malformed hx fails as it does in nn.
        dims = [states[i].dim() for i in range(self._num_states)]
        if any(d != (3 if is_batched else 2) for d in dims):
            raise RuntimeError(_messages.hidden_rank(self.mode, is_batched, dims))
        if not is_batched:
            states = tuple(states[i].unsqueeze(1) for i in range(self._num_states))
        return is_batched, states

    def _state_widths(self) -> tuple:
        """The last dimension of each hidden state: h's (proj_size with a projection), then LSTM's c's."""
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return (real_hidden_size, self.hidden_size)[: self._num_states]

    def _zero_states(self, input: Tensor, mini_batch: int) -> tuple:
        num_directions = 2 if self.bidirectional else 1
        return tuple(torch.zeros(self.num_layers * num_directions, mini_batch, width, dtype=input.dtype,
                                 device=input.device) for width in self._state_widths())

    def _check_hidden(self, states, mini_batch: int, from_data: bool = False) -> None:
        num_directions = 2 if self.bidirectional else 1
        expected = [(self.num_layers * num_directions, mini_batch, width) for width in self._state_widths()]
        if from_data and torch.compiler.is_compiling():
            # Packed input under torch.compile: the batch comes from batch_sizes' data, so it cannot be
            # compared at trace time; these become runtime asserts instead.
            for state, want in zip(states, expected):
                torch._check(len(state.shape) == 3)
                for g, w in zip(state.shape, want):
                    torch._check(g == w)
        else:
            for i, want in enumerate(expected):
                if states[i].size() != want:
                    label = _messages.hidden_label(self._num_states, i)
                    raise RuntimeError(_messages.hidden_size(label, want, list(states[i].size())))
        weight = self.weight_ih_l0
        for t in states:
            if not _dtypes_compatible(t.dtype, weight.dtype):
                raise RuntimeError(_messages.hidden_dtype(str(weight.dtype), str(t.dtype)))
            if t.device != weight.device:
                raise RuntimeError(_messages.hidden_device(weight.device, t.device))

    def _layer_weights(self, layer: int, dtype: torch.dtype, dropped_hh: Optional[list] = None) -> tuple:
        """The layer's weights in `dtype`, one entry per kind of _WEIGHT_KINDS: a list over the directions, or
        None; weight_hh taken from `dropped_hh` (_dropped_hh's) where given."""
        weights = tuple(None if names is None else [_cast(getattr(self, name), dtype) for name in names]
                        for names in self._weight_names[layer])
        if dropped_hh is None:
            return weights
        return (weights[0], [_cast(w, dtype) for w in dropped_hh[layer]], *weights[2:])

    def _layer_ln(self, layer: int, dtype: torch.dtype) -> Optional[list]:
        """The layer's layer-norm parameters in `dtype`, as the op takes them, or None without layer norm."""
        names = self._ln_names[layer] if self.layer_norm else None
        return None if names is None else [_cast(getattr(self, name), dtype) for name in names]

    def _dropped_hh(self) -> Optional[list]:
        """weight_drop in training: every layer's weight_hh (a list over the directions) with this call's mask,
        drawn for all layers before the first runs (lstm_fused/_regularisers.py); None otherwise."""
        if not (self.weight_drop > 0 and self.training):
            return None
        return [[drop_weight(getattr(self, name), self.weight_drop) for name in names[1]]
                for names in self._weight_names]

    def _zoneout_on(self) -> bool:
        return self.zoneout > 0 or self.zoneout_cell > 0

    def _layer_zoneout(self, x: Tensor, batch_sizes: Optional[Tensor], dtype: torch.dtype) -> Optional[tuple]:
        """This layer's zoneout masks (drawn just before it runs), over its output rows: [T, B] padded, [N] packed."""
        if not self._zoneout_on():
            return None
        rows = [x.size(0), x.size(1)] if batch_sizes is None else [x.size(0)]
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        return zoneout_op_masks([self.zoneout, self.zoneout_cell][:self._num_states], [P, self.hidden_size],
                                2 if self.bidirectional else 1, rows, self.training, x.device, dtype)

    def _check_device(self, x: Tensor) -> None:
        if x.device.type == "cuda" and not _HAS_CUDA_KERNELS:
            raise RuntimeError(_messages.NO_CUDA_KERNELS)

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        """input: [T, B, I] ([B, T, I] with batch_first), unbatched [T, I], or a PackedSequence; hx: the initial
        states, (h_0, c_0) for LSTM, h_0 for GRU (zeros when None). Returns the output, of the input's kind, and
        the final states in hx's form."""
        if onnx_export.is_exporting():  # torch.onnx.export: ONNX's own LSTM / GRU operator, one node per layer
            return onnx_export.rnn_forward(self, input, hx)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        return self._forward_padded(input, hx)

    def _forward_padded(self, input: Tensor, hx):
        is_batched, states = self._check_ranks(input, hx)
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        mini_batch = input.size(batch_dim)
        self._check_input(input, None)
        if states is None:
            states = self._zero_states(input, mini_batch)
        else:  # nn's order: the shapes (its check_forward_args), then its op's argument checks
            self._check_hidden(states, mini_batch)
            _check_hx_tensors(states, self.mode.lower(), self._num_states)
        if input.size(1 - batch_dim) == 0:
            raise RuntimeError(_messages.empty_sequence(self.mode))
        x = input.transpose(0, 1) if self.batch_first else input
        output, states = self._run_layers(x, None, states)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            states = tuple(s.squeeze(1) for s in states)
        return output, _as_hx(states, self._num_states)

    def _forward_packed(self, input: PackedSequence, hx):
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._check_input(data, batch_sizes)
        mini_batch = int(batch_sizes[0])
        if hx is None:
            states = self._zero_states(data, mini_batch)
        else:
            states = self._packed_states(hx, sorted_indices, mini_batch)
        output, states = self._run_layers(data, batch_sizes, states)
        if unsorted_indices is not None:
            states = tuple(_apply_permutation(s, unsorted_indices) for s in states)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), _as_hx(states, self._num_states)

    def _run_layers(self, x: Tensor, batch_sizes: Optional[Tensor], states):
        """x: time-major [T, B, I] or a PackedSequence's data, states [L·D, B, ·] -> (output, final states), in
        the dtypes nn's counterpart returns."""
        self._check_device(x)
        output_dtype, state_dtypes = self._result_dtypes(x, batch_sizes, states)
        x, finals = self._layers(x, batch_sizes, states, _compute_dtype(output_dtype, x.device))
        return _cast(x, output_dtype), tuple(_cast(final, dtype) for final, dtype in zip(finals, state_dtypes))

    def _layers(self, x: Tensor, batch_sizes: Optional[Tensor], states, dtype: torch.dtype):
        """The layers computed in `dtype`: the last one's output and the final states of all."""
        num_directions = 2 if self.bidirectional else 1
        finals = [[] for _ in range(self._num_states)]
        dropped_hh = self._dropped_hh()
        for layer in range(self.num_layers):
            weights = self._layer_weights(layer, dtype, dropped_hh)
            first = layer * num_directions
            if self.num_layers == 1:  # the states are the layer's: no views to make, nothing to concatenate
                layer_states = [_cast(states[i], dtype) for i in range(self._num_states)]
            else:
                layer_states = [_cast(states[i][first : first + num_directions], dtype)
                                for i in range(self._num_states)]
            # One op per layer: both directions step together (one launch per step on the GPU).
            zoneout = self._layer_zoneout(x, batch_sizes, dtype)
            x, *layer_finals = self._layer_op(_cast(x, dtype), batch_sizes, layer_states, weights, zoneout=zoneout,
                                              layer_norm=self._layer_ln(layer, dtype))
            for acc, final in zip(finals, layer_finals):
                acc.append(final)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, [acc[0] if len(acc) == 1 else torch.cat(acc) for acc in finals]


class LSTM(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.LSTM` running on fused lstm_fused kernels.

    Same arguments, parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
    ``weight_hr_l{k}``, ``*_reverse``), initialisation and forward semantics as nn.LSTM, so state_dicts load
    both ways. ``forward(input, hx=None)`` takes a [T, B, I] / [B, T, I] (batch_first) / unbatched [T, I]
    tensor or a PackedSequence, and returns ``output, (h_n, c_n)``.

    Keyword-only variants: ``peephole=True`` adds per-unit peephole weights ``weight_ph_l{k}`` [3, hidden]
    (rows p_i, p_f, p_o: i and f see c_{t-1}, o sees c_t); ``coupled=True`` couples the input and forget gates
    (f = 1 − i; gate rows i, g, o, so W_ih/W_hh/biases have 3·hidden rows and weight_ph is [2, hidden]).
    ``weight_drop=p`` (DropConnect on the recurrent matrices, as AWD-LSTM): in training each call drops every
    ``weight_hh_l{k}`` with F.dropout's mask and 1/(1 − p) scaling, the same for all of that call's steps.
    ``zoneout=p`` / ``zoneout_cell=p`` (Krueger et al. 2016): in training each unit of h / c keeps its previous value
    with probability p per step (h's candidate comes from c's candidate; with proj_size, the projected h); in eval
    h_t = p·h_{t-1} + (1 − p)·h̃_t. Masks come from torch's generator of the input's device.
    ``layer_norm=True`` (haste's LayerNormLSTM): gates = LN(W_ih x; γ_ih) + LN(W_hh h; γ_hh) + b_ih + b_hh over each
    layer's gate rows, h = o ⊙ tanh(LN(c; γ_c, β_c)); parameters ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (gate
    rows), ``weight_ln_c_l{k}``, ``bias_ln_c_l{k}`` (hidden) after each layer's own, initialised to ones, ones, ones,
    zeros.
    """

    _num_states = 2  # (h, c)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, *, peephole: bool = False, coupled: bool = False,
                 weight_drop: float = 0.0, zoneout: float = 0.0, zoneout_cell: float = 0.0,
                 layer_norm: bool = False) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, peephole, coupled, weight_drop, zoneout, zoneout_cell, layer_norm)

    def _packed_states(self, hx, sorted_indices: Optional[Tensor], mini_batch: int):
        # nn.LSTM's order: permute, then the op's argument checks, then the shapes.
        states = _permuted(hx, sorted_indices, 2)
        _check_hx_tensors(states, "lstm", 2)
        self._check_hidden(states, mini_batch, from_data=True)
        return states

    def _result_dtypes(self, x: Tensor, batch_sizes: Optional[Tensor], states):
        rule = "lstm_packed" if batch_sizes is not None and self.proj_size == 0 else "lstm"
        output_dtype = _autocast_dtype(x, rule, states[0]) or x.dtype
        # nn.LSTM's projection path under CPU autocast returns c_n in c0's dtype (float32 for float32 input).
        c_dtype = states[1].dtype if (self.proj_size > 0 and x.device.type == "cpu"
                                      and _autocast_dtype(x, "lstm") is not None) else output_dtype
        return output_dtype, (output_dtype, c_dtype)

    def _layer_op(self, x: Tensor, batch_sizes: Optional[Tensor], states, weights: tuple, zoneout=None,
                  layer_norm=None):
        return _lstm_layer(x, batch_sizes, states, weights, self.coupled, zoneout, layer_norm)

    def _layers(self, x: Tensor, batch_sizes: Optional[Tensor], states, dtype: torch.dtype):
        if not (self.num_layers > 1 and not self.bidirectional and self.proj_size == 0
                and not (self.dropout > 0 and self.training) and not self._zoneout_on() and not self.layer_norm):
            return super()._layers(x, batch_sizes, states, dtype)
        # One op for the whole stack: on the GPU its layers can run as one wavefront launch.
        dropped_hh = self._dropped_hh()
        ws = [self._layer_weights(layer, dtype, dropped_hh) for layer in range(self.num_layers)]
        w_ih, w_hh, b_ih, b_hh, _, w_ph = (None if ws[0][k] is None else [w[k][0] for w in ws]
                                           for k in range(len(_WEIGHT_KINDS)))
        x, h_n, c_n = ops.lstm_stack(_cast(x, dtype), batch_sizes, _cast(states[0], dtype), _cast(states[1], dtype),
                                     w_ih, w_hh, b_ih, b_hh, w_ph, self.coupled)
        return x, [h_n, c_n]


class GRU(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.GRU` running on fused lstm_fused kernels.

    Same constructor, parameters (gate order r, z, n), initialisation and forward semantics as nn.GRU:
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h. ``forward(input, hx=None)``
    returns ``output, h_n``. Keyword-only ``weight_drop=p`` (DropConnect on ``weight_hh_l{k}``) and ``zoneout=p``
    (on h), as for LSTM; ``layer_norm=True`` (haste's LayerNormGRU): both products layer-normalised over their gate rows
    before the biases, gains ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (ones).
    """

    _num_states = 1
    _layer_op = staticmethod(_gru_layer)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 *, weight_drop: float = 0.0, zoneout: float = 0.0, layer_norm: bool = False, **kwargs) -> None:
        if "proj_size" in kwargs:  # as nn.GRU
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype, weight_drop=weight_drop, zoneout=zoneout, layer_norm=layer_norm)

    def _packed_states(self, hx, sorted_indices: Optional[Tensor], mini_batch: int):
        # Checked before the permutation (nn.GRU permutes first): a wrong batch size gets "Expected hidden size"
        # rather than an indexing error.
        states = (hx,)
        self._check_hidden(states, mini_batch, from_data=True)
        return _permuted(states, sorted_indices, 1)

    def _result_dtypes(self, x: Tensor, batch_sizes: Optional[Tensor], states):
        output_dtype = _autocast_dtype(x, "gru", states[0]) or x.dtype
        return output_dtype, (output_dtype,)


class _FusedCellBase(nn.Module):
    """What LSTMCell and GRUCell share with nn.RNNCellBase: parameters weight_ih [gates·H, I], weight_hh
    [gates·H, H], bias_ih, bias_hh (None without bias), seeded init and repr; and the forward, one step of the
    fused layer op. A subclass gives `_mode` ("LSTM" / "GRU"), `_name` (nn's class name), `_num_states` and
    `_layer_op`."""

    weight_drop = zoneout = zoneout_cell = 0.0  # as in _FusedRNNBase
    layer_norm = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None, dtype=None,
                 weight_drop: float = 0.0, zoneout: float = 0.0, layer_norm: bool = False) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        if not isinstance(layer_norm, bool):
            raise TypeError(f"layer_norm should be of type bool, got: {type(layer_norm).__name__}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_drop = _check_probability("weight_drop", weight_drop)
        self.zoneout = _check_probability("zoneout", zoneout)
        self.layer_norm = layer_norm
        self.weight_ih = nn.Parameter(torch.empty((gates * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = nn.Parameter(torch.empty((gates * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        # Layer norm: weight_ln_ih, weight_ln_hh (gate rows) and LSTMCell's weight_ln_c, bias_ln_c (hidden), after the
        # cell's own parameters.
        self._ln_param_names = [name for name, _ in _ln_shapes(self._mode, gates * hidden_size, hidden_size)] \
            if layer_norm else []
        for name, width in _ln_shapes(self._mode, gates * hidden_size, hidden_size) if layer_norm else ():
            setattr(self, name, nn.Parameter(torch.empty(width, **factory_kwargs)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_parameters(self, self.hidden_size)

    def __prepare_scriptable__(self):
        """torch.jit.script compiles a TorchScript twin sharing these parameters (lstm_fused/scripting.py)."""
        from .scripting import scriptable

        return scriptable(self)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__) + _options_repr(self)

    def forward(self, input, hx=None):
        """input: [B, I] or unbatched [I]; hx: the states, (h, c) for LSTMCell, h for GRUCell (zeros when None).
        Returns the states after the step, in hx's form."""
        if onnx_export.is_exporting():  # torch.onnx.export: a one-step ONNX LSTM / GRU node
            return onnx_export.cell_forward(self, input, hx)
        input, states, is_batched = self._batched_step_args(input, hx)
        if states is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = (zeros,) * self._num_states
        _check_hx_tensors(states, f"{self._mode.lower()}_cell", self._num_states)
        result_dtype, compute_dtype = self._check_step(input, states)
        # One time step of the fused layer op: [1, B, I] in, the states after that step out.
        step_states = [_cast(states[i].unsqueeze(0), compute_dtype) for i in range(self._num_states)]
        weights = self._step_weights(compute_dtype)  # (weight drop draws first, as in a sequence module)
        zoneout = zoneout_op_masks([self.zoneout, self.zoneout_cell][:self._num_states], [self.hidden_size] * 2, 1,
                                   [input.size(0)], self.training, input.device, compute_dtype) \
            if self.zoneout > 0 or self.zoneout_cell > 0 else None
        ln = [_cast(getattr(self, name), compute_dtype) for name in self._ln_param_names] if self.layer_norm else None
        _, *finals = self._layer_op(_cast(input.unsqueeze(0), compute_dtype), None, step_states, weights,
                                    zoneout=zoneout, layer_norm=ln)
        finals = [_cast(final[0], result_dtype) for final in finals]
        if not is_batched:
            finals = [final.squeeze(0) for final in finals]
        return _as_hx(finals, self._num_states)

    def _batched_step_args(self, input: Tensor, hx):
        """nn's rank checks (ValueError) on the input and the states; returns the input as [B, I], the states
        as a sequence of [B, H] (None for hx None) and whether the input was batched."""
        if input.dim() not in (1, 2):
            raise ValueError(_messages.bad_rank(self._name, "input", 2, input.dim()))
        states = None if hx is None else _as_states(hx, self._num_states)
        if states is not None:
            for idx, value in enumerate(states):
                if value.dim() not in (1, 2):
                    label = _messages.cell_state_label(self._num_states, idx)
                    raise ValueError(_messages.bad_rank(self._name, label, 2, value.dim()))
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if states is not None:
                states = tuple(states[i].unsqueeze(0) for i in range(self._num_states))
        return input, states, is_batched

    def _check_input_size(self, input: Tensor) -> None:
        if input.size(1) != self.input_size:
            raise RuntimeError(_messages.cell_input_size(input.size(1), self.input_size))

    def _check_step(self, input: Tensor, states) -> tuple[torch.dtype, torch.dtype]:
        """nn's cell checks (RuntimeError, as _VF raises) on the batched input and states; returns the dtypes
        of the results and of the computation."""
        self._check_input_size(input)
        if self.weight_ih.device != input.device:
            raise RuntimeError(_messages.parameter_device(input.device, self.weight_ih.device))
        for idx, value in enumerate(states):
            if value.shape != (input.size(0), self.hidden_size):
                raise RuntimeError(
                    _messages.cell_state_shape(idx, list(value.shape), [input.size(0), self.hidden_size])
                )
            if not (_dtypes_compatible(value.dtype, input.dtype) and _dtypes_compatible(self.weight_ih.dtype, input.dtype)):
                raise RuntimeError(_messages.cell_dtypes(type(self).__name__, str(input.dtype), str(value.dtype),
                                                         str(self.weight_ih.dtype)))
        result = _autocast_dtype(input, "cell", states[0]) or input.dtype
        return result, _compute_dtype(result, input.device)

    def _step_weights(self, dtype: torch.dtype) -> tuple:
        """The parameters as a one-direction layer's weights (the form _lstm_layer and _gru_layer take); weight_hh
        with this call's DropConnect mask under weight_drop in training."""
        weight_hh = drop_weight(self.weight_hh, self.weight_drop) if self.weight_drop > 0 and self.training \
            else self.weight_hh
        params = (self.weight_ih, weight_hh, self.bias_ih, self.bias_hh)
        return tuple(None if p is None else [_cast(p, dtype)] for p in params) + (None, None)


class LSTMCell(_FusedCellBase):
    r"""Drop-in replacement for :class:`torch.nn.LSTMCell`: one fused LSTM step per call.

    Same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), initialisation and
    forward semantics (batched [B, I] or unbatched [I] input, optional ``(h, c)``), returning ``(h', c')``.
    Keyword-only ``weight_drop=p``: DropConnect on ``weight_hh``, a new mask each call in training; ``zoneout=p`` /
    ``zoneout_cell=p``: h / c keep their value (hx's) with probability p, a new mask each call (eval: the expectation).
    """

    _mode, _name, _num_states = "LSTM", "LSTMCell", 2
    _layer_op = staticmethod(_lstm_layer)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 weight_drop: float = 0.0, zoneout: float = 0.0, zoneout_cell: float = 0.0,
                 layer_norm: bool = False) -> None:
        zoneout_cell = _check_probability("zoneout_cell", zoneout_cell)
        super().__init__(input_size, hidden_size, bias, 4, device, dtype, weight_drop, zoneout, layer_norm)
        self.zoneout_cell = zoneout_cell


class GRUCell(_FusedCellBase):
    r"""Drop-in replacement for :class:`torch.nn.GRUCell`: one fused GRU step per call, returning h'. Keyword-only
    ``weight_drop=p`` (DropConnect on ``weight_hh``) and ``zoneout=p``, as for LSTMCell."""

    _mode, _name, _num_states = "GRU", "GRUCell", 1
    _layer_op = staticmethod(_gru_layer)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None, *,
                 weight_drop: float = 0.0, zoneout: float = 0.0, layer_norm: bool = False) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype, weight_drop, zoneout, layer_norm)


# The hook registries of nn.Module that a replacement takes over (the dicts themselves, so that the handles the
# user holds still remove their hooks).
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")
_CONVERTIBLE = (nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell)


def _carry_over(old: nn.Module, new: nn.Module) -> None:
    """Hooks, buffers and the user's own attributes of `old` onto its replacement."""
    for name in _HOOK_DICTS:
        if hasattr(old, name):
            setattr(new, name, getattr(old, name))
    new._is_full_backward_hook = old._is_full_backward_hook
    for name, buf in old.named_buffers(recurse=False):
        new.register_buffer(name, buf, persistent=name not in old._non_persistent_buffers_set)
    for name, value in vars(old).items():
        if not name.startswith("_") and name not in vars(new):
            setattr(new, name, value)


def _fused_equivalent(module: nn.Module) -> Optional[nn.Module]:
    """The lstm_fused module replacing `module` (same weights, device, dtype, train/eval, hooks), or None."""
    if not isinstance(module, _CONVERTIBLE):
        return None
    if torch.nn.utils.parametrize.is_parametrized(module):
        # Parametrized weights (weight_norm, ...) are computed properties, not parameters to carry over. (Checked
        # first: parametrization also turns the module's class into a generated subclass.)
        warnings.warn(f"lstm_fused.convert: leaving {type(module).__name__} with parametrized weights unconverted",
                      stacklevel=4)
        return None
    names = getattr(module, "_flat_weights_names", ["weight_ih", "weight_hh", "bias_ih", "bias_hh"])
    computed = [n for n in names if n not in module._parameters]
    if computed:
        # The old torch.nn.utils.weight_norm / spectral_norm replace a parameter by a tensor their hook recomputes.
        warnings.warn(f"lstm_fused.convert: leaving {type(module).__name__} unconverted: {', '.join(computed)} "
                      "not plain parameters (weight_norm / spectral_norm?)", stacklevel=4)
        return None
    if type(module) not in _CONVERTIBLE:
        # A subclass may override forward or keep state of its own: swapping it would silently drop both.
        base = next(c for c in _CONVERTIBLE if isinstance(module, c))
        warnings.warn(f"lstm_fused.convert: leaving {type(module).__qualname__} (a subclass of nn.{base.__name__}) "
                      f"unconverted; subclass lstm_fused.{base.__name__} instead to run it on the fused kernels",
                      stacklevel=4)
        return None
    if type(module) is nn.LSTM:
        new = LSTM(module.input_size, module.hidden_size, num_layers=module.num_layers, bias=module.bias,
                   batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                   proj_size=module.proj_size, device="meta")
    elif type(module) is nn.GRU:
        new = GRU(module.input_size, module.hidden_size, num_layers=module.num_layers, bias=module.bias,
                  batch_first=module.batch_first, dropout=module.dropout, bidirectional=module.bidirectional,
                  device="meta")
    elif type(module) is nn.LSTMCell:
        new = LSTMCell(module.input_size, module.hidden_size, bias=module.bias, device="meta")
    else:
        new = GRUCell(module.input_size, module.hidden_size, bias=module.bias, device="meta")
    # Take the very parameter objects: optimizers and weight tying keep pointing at them.
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    new.train(module.training)
    _carry_over(module, new)
    return new


def convert(module: nn.Module) -> nn.Module:
    """Replaces every nn.LSTM, nn.GRU, nn.LSTMCell and nn.GRUCell inside `module` (recursively, through
    containers) with its lstm_fused equivalent, carrying the parameters themselves (so device, dtype,
    requires_grad, optimizer state and weight tying stay as they were), buffers, the train/eval mode, the
    user's own attributes and registered hooks (the handles keep working). A module referenced more than once
    in the tree becomes one lstm_fused module that every reference points to. Returns the model; a bare
    recurrent module passed in is returned converted. Only exact nn classes are swapped: subclasses (which may
    override forward) and modules with parametrized weights (torch.nn.utils.parametrize) are left as they are,
    with a warning that names them. References held outside nn.Module children (a plain list or dict attribute)
    are not followed."""
    return _convert(module, {})


def _convert(module: nn.Module, memo: dict) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    replaced = _fused_equivalent(module)
    memo[id(module)] = module if replaced is None else replaced
    if replaced is not None:
        return replaced
    for name, child in list(module._modules.items()):
        if child is not None:
            new = _convert(child, memo)
            if new is not child:
                module._modules[name] = new
    return module
