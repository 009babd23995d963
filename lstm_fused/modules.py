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

from . import onnx_export, ops

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
    exception types: TypeError for what is not a sequence of tensors, RuntimeError for a wrong count."""
    if not isinstance(hx, (tuple, list)):
        raise TypeError(f"{op}(): argument 'hx' must be tuple of Tensors, not {type(hx).__name__}")
    for i, t in enumerate(hx):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}(): expected Tensor as element {i} in argument 'hx', but got {type(t).__name__}")
    if len(hx) != count:
        raise RuntimeError(f"{op} expects two hidden states, got {len(hx)}")


def _apply_permutation(tensor: Tensor, permutation: Tensor, dim: int = 1) -> Tensor:
    return tensor.index_select(dim, permutation)


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


class _FusedRNNBase(nn.Module):
    """What LSTM and GRU share with nn.RNNBase: constructor checks, parameters (names, shapes, order, seeded
    init), attributes, repr and the input checks; not a subclass of nn.RNNBase (dynamo refuses those)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None, peephole: bool = False, coupled: bool = False) -> None:
        super().__init__()
        _check_rnn_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        for name, flag in (("peephole", peephole), ("coupled", coupled)):
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
                names = []
                for fmt, shape in shapes:
                    name = fmt.format(layer, suffix)
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory_kwargs)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
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
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

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
        return s.format(**self.__dict__)

    # -- argument checks (nn.LSTM's messages and exception types) -------------------------------------------
    def _check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        for p in self._flat_weights:
            if p.device != input.device:
                raise RuntimeError(
                    f"Input and parameter tensors are not at the same device, found input tensor at {input.device} "
                    f"and parameter tensor at {p.device}"
                )
        weight_dtype = self.weight_ih_l0.dtype
        if not _dtypes_compatible(input.dtype, weight_dtype):
            # nn.LSTM checks dtypes in Python only for padded input (ValueError); for a PackedSequence the
            # mismatch surfaces from its kernels as a RuntimeError. Same types here, clearer message.
            raise (RuntimeError if batch_sizes is not None else ValueError)(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight_dtype}). "
                f"Convert input: input.to({weight_dtype}), or convert model: model.to({input.dtype})"
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {input.size(-1)}"
            )

    def _layer_weights(self, layer: int, dtype: torch.dtype) -> dict:
        """Per-parameter lists over the layer's directions: {"weight_ih": [fwd, rev], ..., "weight_ph": None}."""
        num_directions = 2 if self.bidirectional else 1
        per_dir = [
            {name.split("_l")[0]: getattr(self, name).to(dtype) for name in self._all_weights[layer * num_directions + d]}
            for d in range(num_directions)
        ]
        keys = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "weight_ph")
        return {k: ([w[k] for w in per_dir] if k in per_dir[0] else None) for k in keys}

    def _check_device(self, x: Tensor) -> None:
        if x.device.type == "cuda" and not _HAS_CUDA_KERNELS:
            raise RuntimeError(
                "lstm_fused was built without CUDA kernels (the installed torch had no CUDA, or no CUDA toolkit was "
                "found at build time). Rebuild with CUDA_HOME set: `pip install --no-build-isolation .`"
            )


class LSTM(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.LSTM` running on fused lstm_fused kernels.

    Same arguments, parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
    ``weight_hr_l{k}``, ``*_reverse``), initialisation and forward semantics as nn.LSTM, so state_dicts load
    both ways. ``forward(input, hx=None)`` takes a [T, B, I] / [B, T, I] (batch_first) / unbatched [T, I]
    tensor or a PackedSequence, and returns ``output, (h_n, c_n)``.

    Keyword-only variants: ``peephole=True`` adds per-unit peephole weights ``weight_ph_l{k}`` [3, hidden]
    (rows p_i, p_f, p_o: i and f see c_{t-1}, o sees c_t); ``coupled=True`` couples the input and forget gates
    (f = 1 − i; gate rows i, g, o, so W_ih/W_hh/biases have 3·hidden rows and weight_ph is [2, hidden]).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        peephole: bool = False,
        coupled: bool = False,
    ) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, peephole, coupled)

    def _check_hidden(self, hx: tuple[Tensor, Tensor], mini_batch: int, from_data: bool = False) -> None:
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        expected_h = (self.num_layers * num_directions, mini_batch, real_hidden)
        expected_c = (self.num_layers * num_directions, mini_batch, self.hidden_size)
        if from_data and torch.compiler.is_compiling():
            # Packed input under torch.compile: the batch comes from batch_sizes' data, so it cannot be
            # compared at trace time; these become runtime asserts instead.
            for got, want in ((hx[0].shape, expected_h), (hx[1].shape, expected_c)):
                torch._check(len(got) == 3)
                for g, w in zip(got, want):
                    torch._check(g == w)
        else:
            if hx[0].size() != expected_h:
                raise RuntimeError(f"Expected hidden[0] size {expected_h}, got {list(hx[0].size())}")
            if hx[1].size() != expected_c:
                raise RuntimeError(f"Expected hidden[1] size {expected_c}, got {list(hx[1].size())}")
        for t in hx:
            if not _dtypes_compatible(t.dtype, self.weight_ih_l0.dtype):
                raise RuntimeError(f"Expected hidden dtype {self.weight_ih_l0.dtype}, got {t.dtype}")
            if t.device != self.weight_ih_l0.device:
                raise RuntimeError(
                    f"Input and hidden tensors are not at the same device, found input tensor at "
                    f"{self.weight_ih_l0.device} and hidden tensor at {t.device}"
                )

    def _zeros_hx(self, input: Tensor, mini_batch: int) -> tuple[Tensor, Tensor]:
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        shape = (self.num_layers * num_directions, mini_batch)
        kw = {"dtype": input.dtype, "device": input.device}
        return torch.zeros(*shape, real_hidden, **kw), torch.zeros(*shape, self.hidden_size, **kw)

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, input, hx: Optional[tuple[Tensor, Tensor]] = None):
        if onnx_export.is_exporting():  # torch.onnx.export: ONNX's own LSTM operator, one node per layer
            return onnx_export.lstm_forward(self, input, hx)
        orig_input = input
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            is_batched = True
            self._check_input(input, batch_sizes)
            mini_batch = int(batch_sizes[0])
            if hx is None:
                hx = self._zeros_hx(input, mini_batch)
            else:
                # nn.LSTM's order: permute, then the op's argument checks, then the shapes.
                if sorted_indices is not None:
                    hx = (_apply_permutation(hx[0], sorted_indices), _apply_permutation(hx[1], sorted_indices))
                _check_hx_tensors(hx, "lstm", 2)
                self._check_hidden(hx, mini_batch, from_data=True)
            x = input
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
            mini_batch = input.size(0) if self.batch_first else input.size(1)
            if hx is None:
                self._check_input(input, None)
                hx = self._zeros_hx(input, mini_batch)
            else:
                if is_batched:
                    if hx[0].dim() != 3 or hx[1].dim() != 3:
                        raise RuntimeError(
                            "For batched 3-D input, hx and cx should also be 3-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                else:
                    if hx[0].dim() != 2 or hx[1].dim() != 2:
                        raise RuntimeError(
                            "For unbatched 2-D input, hx and cx should also be 2-D but got "
                            f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors"
                        )
                    hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
                self._check_input(input, None)
                self._check_hidden(hx, mini_batch)
                _check_hx_tensors(hx, "lstm", 2)
            if input.size(0 if not self.batch_first else 1) == 0:
                raise RuntimeError("LSTM: the input sequence is empty (0 time steps)")
            x = input.transpose(0, 1) if self.batch_first else input

        output, h_n, c_n = self._run_layers(x, batch_sizes, hx)

        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n, c_n = _apply_permutation(h_n, unsorted_indices), _apply_permutation(c_n, unsorted_indices)
            return packed, (h_n, c_n)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _run_layers(self, x: Tensor, batch_sizes: Optional[Tensor], hx: tuple[Tensor, Tensor]):
        self._check_device(x)
        h0_all, c0_all = hx
        packed = batch_sizes is not None
        result_dtype = (_autocast_dtype(x, "lstm_packed" if packed and self.proj_size == 0 else "lstm", h0_all)
                        or x.dtype)
        # nn.LSTM's projection path under CPU autocast returns c_n in c0's dtype (float32 for float32 input).
        c_dtype = c0_all.dtype if (self.proj_size > 0 and x.device.type == "cpu"
                                   and _autocast_dtype(x, "lstm") is not None) else result_dtype
        compute_dtype = _compute_dtype(result_dtype, x.device)
        num_directions = 2 if self.bidirectional else 1
        if (self.num_layers > 1 and not self.bidirectional and self.proj_size == 0
                and not (self.dropout > 0 and self.training)):
            # One op for the whole stack: on the GPU its layers can run as one wavefront launch.
            ws = [self._layer_weights(layer, compute_dtype) for layer in range(self.num_layers)]
            per_layer = {k: ([w[k][0] for w in ws] if ws[0][k] is not None else None) for k in ws[0]}
            x, h_n, c_n = ops.lstm_stack(x.to(compute_dtype), batch_sizes, h0_all.to(compute_dtype),
                                         c0_all.to(compute_dtype), per_layer["weight_ih"], per_layer["weight_hh"],
                                         per_layer["bias_ih"], per_layer["bias_hh"], per_layer["weight_ph"],
                                         self.coupled)
            return x.to(result_dtype), h_n.to(result_dtype), c_n.to(c_dtype)
        h_out, c_out = [], []
        for layer in range(self.num_layers):
            w = self._layer_weights(layer, compute_dtype)
            first = layer * num_directions
            h0 = h0_all[first : first + num_directions].to(compute_dtype)
            c0 = c0_all[first : first + num_directions].to(compute_dtype)
            # One op per layer: both directions step together (one launch per step on the GPU).
            x, h_n, c_n = ops.lstm_layer(x.to(compute_dtype), batch_sizes, h0, c0, w["weight_ih"], w["weight_hh"],
                                         w["bias_ih"], w["bias_hh"], w["weight_hr"], w["weight_ph"], self.coupled)
            h_out.append(h_n)
            c_out.append(c_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x.to(result_dtype), torch.cat(h_out).to(result_dtype), torch.cat(c_out).to(c_dtype)


class GRU(_FusedRNNBase):
    r"""Drop-in replacement for :class:`torch.nn.GRU` running on fused lstm_fused kernels.

    Same constructor, parameters (gate order r, z, n), initialisation and forward semantics as nn.GRU:
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h. ``forward(input, hx=None)``
    returns ``output, h_n``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        if "proj_size" in kwargs:  # as nn.GRU
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(f"GRU.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0,
                         device, dtype)

    def _check_hidden(self, hx: Tensor, mini_batch, from_data: bool = False) -> None:
        expected = (self.num_layers * (2 if self.bidirectional else 1), mini_batch, self.hidden_size)
        if from_data and torch.compiler.is_compiling():
            torch._check(hx.dim() == 3)
            for g, w in zip(hx.shape, expected):
                torch._check(g == w)
        elif hx.size() != expected:
            raise RuntimeError(f"Expected hidden size {expected}, got {list(hx.size())}")
        if not _dtypes_compatible(hx.dtype, self.weight_ih_l0.dtype):
            raise RuntimeError(f"Expected hidden dtype {self.weight_ih_l0.dtype}, got {hx.dtype}")
        if hx.device != self.weight_ih_l0.device:
            raise RuntimeError(
                f"Input and hidden tensors are not at the same device, found input tensor at "
                f"{self.weight_ih_l0.device} and hidden tensor at {hx.device}"
            )

    def forward(self, input, hx: Optional[Tensor] = None):
        if onnx_export.is_exporting():  # torch.onnx.export: ONNX's own GRU operator, one node per layer
            return onnx_export.gru_forward(self, input, hx)
        orig_input = input
        num_directions = 2 if self.bidirectional else 1
        if isinstance(orig_input, PackedSequence):
            input, batch_sizes, sorted_indices, unsorted_indices = orig_input
            is_batched = True
            self._check_input(input, batch_sizes)
            mini_batch = int(batch_sizes[0])
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, mini_batch, self.hidden_size, dtype=input.dtype,
                                 device=input.device)
            else:
                self._check_hidden(hx, mini_batch, from_data=True)
                if sorted_indices is not None:
                    hx = _apply_permutation(hx, sorted_indices)
            x = input
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
            mini_batch = input.size(0) if self.batch_first else input.size(1)
            self._check_input(input, None)
            if hx is None:
                hx = torch.zeros(self.num_layers * num_directions, mini_batch, self.hidden_size, dtype=input.dtype,
                                 device=input.device)
            else:
                self._check_hidden(hx, mini_batch)
            if input.size(0 if not self.batch_first else 1) == 0:
                raise RuntimeError("GRU: the input sequence is empty (0 time steps)")
            x = input.transpose(0, 1) if self.batch_first else input

        output, h_n = self._run_layers(x, batch_sizes, hx)

        if isinstance(orig_input, PackedSequence):
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                h_n = _apply_permutation(h_n, unsorted_indices)
            return packed, h_n
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, h_n

    def _run_layers(self, x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor):
        self._check_device(x)
        result_dtype = _autocast_dtype(x, "gru", hx) or x.dtype
        compute_dtype = _compute_dtype(result_dtype, x.device)
        num_directions = 2 if self.bidirectional else 1
        h_out = []
        for layer in range(self.num_layers):
            w = self._layer_weights(layer, compute_dtype)
            first = layer * num_directions
            h0 = hx[first : first + num_directions].to(compute_dtype)
            x, h_n = ops.gru_layer(x.to(compute_dtype), batch_sizes, h0, w["weight_ih"], w["weight_hh"], w["bias_ih"],
                                   w["bias_hh"])
            h_out.append(h_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x.to(result_dtype), torch.cat(h_out).to(result_dtype)


class _FusedCellBase(nn.Module):
    """What LSTMCell and GRUCell share with nn.RNNCellBase: parameters weight_ih [gates·H, I], weight_hh
    [gates·H, H], bias_ih, bias_hh (None without bias), seeded init and repr."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int, device=None, dtype=None) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.weight_ih = nn.Parameter(torch.empty((gates * hidden_size, input_size), **factory_kwargs))
        self.weight_hh = nn.Parameter(torch.empty((gates * hidden_size, hidden_size), **factory_kwargs))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size, **factory_kwargs))
            self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size, **factory_kwargs))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -stdv, stdv)

    def __prepare_scriptable__(self):
        """torch.jit.script compiles a TorchScript twin sharing these parameters (lstm_fused/scripting.py)."""
        from .scripting import scriptable

        return scriptable(self)

    def extra_repr(self) -> str:
        s = "{input_size}, {hidden_size}"
        if self.bias is not True:
            s += ", bias={bias}"
        return s.format(**self.__dict__)

    def _check_step(self, input: Tensor, states) -> tuple[torch.dtype, torch.dtype]:
        """nn's cell checks (RuntimeError, as _VF raises) on the batched input and states; returns the dtypes
        of the results and of the computation."""
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {self.input_size}")
        if self.weight_ih.device != input.device:
            raise RuntimeError(
                f"Input and parameter tensors are not at the same device, found input tensor at {input.device} "
                f"and parameter tensor at {self.weight_ih.device}"
            )
        for idx, value in enumerate(states):
            if value.shape != (input.size(0), self.hidden_size):
                raise RuntimeError(
                    f"hx[{idx}] has inconsistent shape: got {list(value.shape)}, expected "
                    f"{[input.size(0), self.hidden_size]}"
                )
            if not (_dtypes_compatible(value.dtype, input.dtype) and _dtypes_compatible(self.weight_ih.dtype, input.dtype)):
                raise RuntimeError(
                    f"{type(self).__name__}: expected input, hidden state and weights of one dtype, got input "
                    f"{input.dtype}, hidden {value.dtype}, weights {self.weight_ih.dtype}"
                )
        result = _autocast_dtype(input, "cell", states[0]) or input.dtype
        return result, _compute_dtype(result, input.device)

    def _step_weights(self, dtype: torch.dtype):
        w = [p.to(dtype) if p is not None else None for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)]
        return [w[0]], [w[1]], ([w[2]] if self.bias else None), ([w[3]] if self.bias else None)


class LSTMCell(_FusedCellBase):
    r"""Drop-in replacement for :class:`torch.nn.LSTMCell`: one fused LSTM step per call.

    Same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``), initialisation and
    forward semantics (batched [B, I] or unbatched [I] input, optional ``(h, c)``), returning ``(h', c')``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
        if onnx_export.is_exporting():  # torch.onnx.export: a one-step ONNX LSTM node
            return onnx_export.lstm_cell_forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        _check_hx_tensors(hx, "lstm_cell", 2)
        result_dtype, compute_dtype = self._check_step(input, hx)
        w_ih, w_hh, b_ih, b_hh = self._step_weights(compute_dtype)
        # One time step of the fused layer op: [1, B, I] in, h and c of that step out.
        _, h_n, c_n = ops.lstm_layer(input.unsqueeze(0).to(compute_dtype), None, hx[0].unsqueeze(0).to(compute_dtype),
                                     hx[1].unsqueeze(0).to(compute_dtype), w_ih, w_hh, b_ih, b_hh, None)
        h, c = h_n[0].to(result_dtype), c_n[0].to(result_dtype)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_FusedCellBase):
    r"""Drop-in replacement for :class:`torch.nn.GRUCell`: one fused GRU step per call, returning h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if onnx_export.is_exporting():  # torch.onnx.export: a one-step ONNX GRU node
            return onnx_export.gru_cell_forward(self, input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        elif not is_batched:
            hx = hx.unsqueeze(0)
        result_dtype, compute_dtype = self._check_step(input, (hx,))
        w_ih, w_hh, b_ih, b_hh = self._step_weights(compute_dtype)
        _, h_n = ops.gru_layer(input.unsqueeze(0).to(compute_dtype), None, hx.unsqueeze(0).to(compute_dtype), w_ih,
                               w_hh, b_ih, b_hh)
        h = h_n[0].to(result_dtype)
        return h if is_batched else h.squeeze(0)


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
