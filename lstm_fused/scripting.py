"""TorchScript support: the twins `torch.jit.script` compiles in place of the lstm_fused modules.

`torch.jit.script` calls a module's `__prepare_scriptable__()` and compiles what it returns. The modules in
modules.py return a twin from here: an instance of a subclass that shares the module's state (the very same
Parameter objects, flags and train/eval mode) and whose `forward`, when compiled, is TorchScript that calls
`torch.ops.lstm_fused.*` directly (nn's checks, exception types and messages for the common cases; the workspace
the backward needs is kept when grad mode is on and an input or parameter requires grad, decided at run time).
Run eagerly, a twin's forward is the original module's (`torch.jit.script(parent)` swaps the twin into the
parent's children, as it does with every `__prepare_scriptable__` result, so the eager parent keeps working
exactly as before).

Scripted, the forward takes tensors; PackedSequence input goes through `forward_packed` (exported), e.g.
`out, (h, c) = self.lstm.forward_packed(packed) if torch.jit.is_scripting() else self.lstm(packed)`.
nn.LSTM/nn.GRU accept a PackedSequence in `forward` through TorchScript overloads, which leave a scripted
top-level nn.LSTM with no `forward` at all; the twins keep a callable `forward` instead.

The RNN twins reach their parameters through a list attribute, as scripted nn.LSTM does (`_flat_weights`): it
holds the same Parameter objects, so optimizer steps, `load_state_dict`, `.to()` and torch.jit.save/load keep
it in step, but assigning a new Parameter object to a scripted module is not seen by its forward (script again).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import ops
from . import modules as _eager
from .modules import _FusedCellBase, _FusedRNNBase

__all__ = ["scriptable"]


# ---- helpers compiled with the twins ----------------------------------------------------------------------
def _dtype_name(dtype: torch.dtype) -> str:
    # TorchScript formats a dtype as its number; the messages want nn's "torch.float32".
    if dtype == torch.float32:
        return "torch.float32"
    if dtype == torch.float64:
        return "torch.float64"
    if dtype == torch.float16:
        return "torch.float16"
    if dtype == torch.bfloat16:
        return "torch.bfloat16"
    return "torch.dtype({})".format(dtype)


def _check_cuda_kernels(x: Tensor, has_cuda_kernels: bool) -> None:
    if x.is_cuda and not has_cuda_kernels:
        raise RuntimeError(
            "lstm_fused was built without CUDA kernels (the installed torch had no CUDA, or no CUDA toolkit was "
            "found at build time). Rebuild with CUDA_HOME set: `pip install --no-build-isolation .`"
        )


def _compute_dtype(x: Tensor) -> torch.dtype:
    # The modules' rule, without autocast (which scripted twins do not apply): the CPU kernels run half types
    # in float32, cast back at the end.
    if x.device.type == "cpu" and (x.dtype == torch.float16 or x.dtype == torch.bfloat16):
        return torch.float32
    return x.dtype


def _any_requires_grad(tensors: List[Tensor]) -> bool:
    for t in tensors:
        if t.requires_grad:
            return True
    return False


def _needs_workspace(tensors: List[Tensor], weights: List[Tensor]) -> bool:
    return torch.is_grad_enabled() and (_any_requires_grad(tensors) or _any_requires_grad(weights))


def _optional(tensors: List[Tensor], present: bool) -> Optional[List[Tensor]]:
    if present:
        return tensors
    return None


# ---- LSTM / GRU -------------------------------------------------------------------------------------------
class _ScriptRNNMixin:
    """What the LSTM and GRU twins share: nn's input checks and the per-layer weight lists."""

    __jit_unused_properties__ = ["_flat_weights", "all_weights"]

    def _script_check_input(self, input: Tensor, packed: bool) -> None:
        for w in self._fused_weights:
            if w.device != input.device:
                raise RuntimeError(
                    "Input and parameter tensors are not at the same device, found input tensor at {} and "
                    "parameter tensor at {}".format(input.device, w.device)
                )
        weight_dtype = self._fused_weights[0].dtype
        if input.dtype != weight_dtype:
            msg = "RNN input dtype ({}) does not match weight dtype ({}). Convert input: input.to({}), or convert " \
                  "model: model.to({})".format(_dtype_name(input.dtype), _dtype_name(weight_dtype),
                                               _dtype_name(weight_dtype), _dtype_name(input.dtype))
            if packed:
                raise RuntimeError(msg)
            raise ValueError(msg)
        expected_input_dim = 2 if packed else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError("input must have {} dimensions, got {}".format(expected_input_dim, input.dim()))
        if self.input_size != input.size(-1):
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. Expected {}, got {}".format(self.input_size,
                                                                                          input.size(-1))
            )

    def _script_check_state(self, t: Tensor) -> None:
        weight = self._fused_weights[0]
        if t.dtype != weight.dtype:
            raise RuntimeError("Expected hidden dtype {}, got {}".format(_dtype_name(weight.dtype),
                                                                       _dtype_name(t.dtype)))
        if t.device != weight.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at {} and hidden tensor "
                "at {}".format(weight.device, t.device)
            )

    def _script_layer_weights(self, weights: List[Tensor], layer: int) -> List[List[Tensor]]:
        """[w_ih, w_hh, b_ih, b_hh, w_hr, w_ph]: lists over the layer's directions (empty where absent)."""
        num_directions = 2 if self.bidirectional else 1
        groups: List[List[Tensor]] = [[], [], [], [], [], []]
        for direction in range(num_directions):
            k = (layer * num_directions + direction) * self._per_direction
            groups[0].append(weights[k])
            groups[1].append(weights[k + 1])
            k += 2
            if self.bias:
                groups[2].append(weights[k])
                groups[3].append(weights[k + 1])
                k += 2
            if self.proj_size > 0:
                groups[4].append(weights[k])
                k += 1
            if self.peephole:
                groups[5].append(weights[k])
        return groups


class LSTM(_ScriptRNNMixin, _eager.LSTM):
    """An LSTM whose compiled forward is TorchScript (see the module docstring); eagerly it is LSTM."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if not torch.jit.is_scripting():
            return _eager.LSTM.forward(self, input, hx)
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("LSTM: Expected input to be 2D or 3D, got {}D instead".format(input.dim()))
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        mini_batch = input.size(0) if self.batch_first else input.size(1)
        if hx is None:
            self._script_check_input(input, False)
            h0, c0 = self._script_zeros(input, mini_batch)
        else:
            h0, c0 = hx
            if is_batched:
                if h0.dim() != 3 or c0.dim() != 3:
                    raise RuntimeError(
                        "For batched 3-D input, hx and cx should also be 3-D but got ({}-D, {}-D) tensors".format(
                            h0.dim(), c0.dim())
                    )
            else:
                if h0.dim() != 2 or c0.dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx and cx should also be 2-D but got ({}-D, {}-D) tensors".format(
                            h0.dim(), c0.dim())
                    )
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            self._script_check_input(input, False)
            self._script_check_hidden(h0, c0, mini_batch)
        if input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("LSTM: the input sequence is empty (0 time steps)")
        x = input.transpose(0, 1) if self.batch_first else input
        output, h_n, c_n = self._script_layers(x, None, h0, c0)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    @torch.jit.export
    def forward_packed(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                       ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        """forward for a PackedSequence (scripted modules only take tensors in forward)."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._script_check_input(data, True)
        mini_batch = int(batch_sizes[0])
        if hx is None:
            h0, c0 = self._script_zeros(data, mini_batch)
        else:
            h0, c0 = hx
            self._script_check_hidden(h0, c0, mini_batch)
            if sorted_indices is not None:
                h0, c0 = h0.index_select(1, sorted_indices), c0.index_select(1, sorted_indices)
        output, h_n, c_n = self._script_layers(data, batch_sizes, h0, c0)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), (h_n, c_n)

    def _script_zeros(self, input: Tensor, mini_batch: int) -> Tuple[Tensor, Tensor]:
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        h0 = torch.zeros(self.num_layers * num_directions, mini_batch, real_hidden, dtype=input.dtype,
                         device=input.device)
        c0 = torch.zeros(self.num_layers * num_directions, mini_batch, self.hidden_size, dtype=input.dtype,
                         device=input.device)
        return h0, c0

    def _script_check_hidden(self, h0: Tensor, c0: Tensor, mini_batch: int) -> None:
        num_directions = 2 if self.bidirectional else 1
        real_hidden = self.proj_size if self.proj_size > 0 else self.hidden_size
        expected_h = (self.num_layers * num_directions, mini_batch, real_hidden)
        expected_c = (self.num_layers * num_directions, mini_batch, self.hidden_size)
        if h0.size() != expected_h:
            raise RuntimeError("Expected hidden[0] size {}, got {}".format(expected_h, list(h0.size())))
        if c0.size() != expected_c:
            raise RuntimeError("Expected hidden[1] size {}, got {}".format(expected_c, list(c0.size())))
        self._script_check_state(h0)
        self._script_check_state(c0)

    def _script_layers(self, x: Tensor, batch_sizes: Optional[Tensor], h0_all: Tensor, c0_all: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor]:
        _check_cuda_kernels(x, self._has_cuda_kernels)
        result_dtype = x.dtype
        dtype = _compute_dtype(x)
        weights = [w.to(dtype) for w in self._fused_weights]
        x = x.to(dtype)
        h0_all, c0_all = h0_all.to(dtype), c0_all.to(dtype)
        num_directions = 2 if self.bidirectional else 1
        if self.num_layers > 1 and not self.bidirectional and self.proj_size == 0 and not (
                self.dropout > 0 and self.training):
            # The whole stack in one op (as LSTM._run_layers).
            per_layer: List[List[Tensor]] = [[], [], [], [], [], []]
            for layer in range(self.num_layers):
                groups = self._script_layer_weights(weights, layer)
                for k in range(6):
                    per_layer[k].extend(groups[k])
            need = _needs_workspace([x, h0_all, c0_all], self._fused_weights)
            outs, h_n, c_n, _ = torch.ops.lstm_fused.lstm_stack_fwd(
                x, batch_sizes, h0_all, c0_all, per_layer[0], per_layer[1], _optional(per_layer[2], self.bias),
                _optional(per_layer[3], self.bias), _optional(per_layer[5], self.peephole), self.coupled, need)
            return outs[-1].to(result_dtype), h_n.to(result_dtype), c_n.to(result_dtype)
        h_out: List[Tensor] = []
        c_out: List[Tensor] = []
        for layer in range(self.num_layers):
            groups = self._script_layer_weights(weights, layer)
            first = layer * num_directions
            h0 = h0_all[first:first + num_directions]
            c0 = c0_all[first:first + num_directions]
            layer_params: List[Tensor] = []
            for group in groups:
                layer_params.extend(group)
            need = _needs_workspace([x, h0, c0], layer_params)
            x, h_n, c_n, _ = torch.ops.lstm_fused.lstm_layer_fwd(
                x, batch_sizes, h0, c0, groups[0], groups[1], _optional(groups[2], self.bias),
                _optional(groups[3], self.bias), _optional(groups[4], self.proj_size > 0),
                _optional(groups[5], self.peephole), self.coupled, need)
            h_out.append(h_n)
            c_out.append(c_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x.to(result_dtype), torch.cat(h_out).to(result_dtype), torch.cat(c_out).to(result_dtype)


class GRU(_ScriptRNNMixin, _eager.GRU):
    """A GRU whose compiled forward is TorchScript (see the module docstring); eagerly it is GRU."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return _eager.GRU.forward(self, input, hx)
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError("GRU: Expected input to be 2D or 3D, got {}D instead".format(input.dim()))
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx should also be 2-D but got {}-D tensor".format(hx.dim()))
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError("For batched 3-D input, hx should also be 3-D but got {}-D tensor".format(hx.dim()))
        mini_batch = input.size(0) if self.batch_first else input.size(1)
        self._script_check_input(input, False)
        if hx is None:
            h0 = self._script_zeros(input, mini_batch)
        else:
            h0 = hx
            self._script_check_hidden(h0, mini_batch)
        if input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("GRU: the input sequence is empty (0 time steps)")
        x = input.transpose(0, 1) if self.batch_first else input
        output, h_n = self._script_layers(x, None, h0)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, h_n

    @torch.jit.export
    def forward_packed(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        """forward for a PackedSequence (scripted modules only take tensors in forward)."""
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._script_check_input(data, True)
        mini_batch = int(batch_sizes[0])
        if hx is None:
            h0 = self._script_zeros(data, mini_batch)
        else:
            h0 = hx
            self._script_check_hidden(h0, mini_batch)
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
        output, h_n = self._script_layers(data, batch_sizes, h0)
        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), h_n

    def _script_zeros(self, input: Tensor, mini_batch: int) -> Tensor:
        num_directions = 2 if self.bidirectional else 1
        return torch.zeros(self.num_layers * num_directions, mini_batch, self.hidden_size, dtype=input.dtype,
                           device=input.device)

    def _script_check_hidden(self, hx: Tensor, mini_batch: int) -> None:
        expected = (self.num_layers * (2 if self.bidirectional else 1), mini_batch, self.hidden_size)
        if hx.size() != expected:
            raise RuntimeError("Expected hidden size {}, got {}".format(expected, list(hx.size())))
        self._script_check_state(hx)

    def _script_layers(self, x: Tensor, batch_sizes: Optional[Tensor], hx: Tensor) -> Tuple[Tensor, Tensor]:
        _check_cuda_kernels(x, self._has_cuda_kernels)
        result_dtype = x.dtype
        dtype = _compute_dtype(x)
        weights = [w.to(dtype) for w in self._fused_weights]
        x = x.to(dtype)
        hx = hx.to(dtype)
        num_directions = 2 if self.bidirectional else 1
        h_out: List[Tensor] = []
        for layer in range(self.num_layers):
            groups = self._script_layer_weights(weights, layer)
            first = layer * num_directions
            h0 = hx[first:first + num_directions]
            layer_params: List[Tensor] = []
            for group in groups:
                layer_params.extend(group)
            need = _needs_workspace([x, h0], layer_params)
            x, h_n, _ = torch.ops.lstm_fused.gru_layer_fwd(
                x, batch_sizes, h0, groups[0], groups[1], _optional(groups[2], self.bias),
                _optional(groups[3], self.bias), need)
            h_out.append(h_n)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x.to(result_dtype), torch.cat(h_out).to(result_dtype)


# ---- cells ------------------------------------------------------------------------------------------------
class _ScriptCellMixin:
    def _script_check_step(self, input: Tensor, states: List[Tensor]) -> None:
        # _FusedCellBase._check_step without autocast.
        if input.size(1) != self.input_size:
            raise RuntimeError("input has inconsistent input_size: got {} expected {}".format(input.size(1),
                                                                                              self.input_size))
        if self.weight_ih.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at {} and parameter "
                "tensor at {}".format(input.device, self.weight_ih.device)
            )
        for idx, value in enumerate(states):
            if value.size() != [input.size(0), self.hidden_size]:
                raise RuntimeError("hx[{}] has inconsistent shape: got {}, expected {}".format(
                    idx, list(value.size()), [input.size(0), self.hidden_size]))
            if value.dtype != input.dtype or self.weight_ih.dtype != input.dtype:
                raise RuntimeError(
                    "{}: expected input, hidden state and weights of one dtype, got input {}, hidden {}, weights "
                    "{}".format(self._cell_name, _dtype_name(input.dtype), _dtype_name(value.dtype),
                                _dtype_name(self.weight_ih.dtype))
                )
        _check_cuda_kernels(input, self._has_cuda_kernels)

    def _script_step_weights(self, dtype: torch.dtype) -> Tuple[List[Tensor], List[Tensor], Optional[List[Tensor]],
                                                                Optional[List[Tensor]]]:
        b_ih: Optional[List[Tensor]] = None
        b_hh: Optional[List[Tensor]] = None
        bias_ih = self.bias_ih
        bias_hh = self.bias_hh
        if bias_ih is not None and bias_hh is not None:
            b_ih = [bias_ih.to(dtype)]
            b_hh = [bias_hh.to(dtype)]
        return [self.weight_ih.to(dtype)], [self.weight_hh.to(dtype)], b_ih, b_hh

    def _script_params(self) -> List[Tensor]:
        params = [self.weight_ih, self.weight_hh]
        bias_ih = self.bias_ih
        bias_hh = self.bias_hh
        if bias_ih is not None and bias_hh is not None:
            params += [bias_ih, bias_hh]
        return params


class LSTMCell(_ScriptCellMixin, _eager.LSTMCell):
    """An LSTMCell whose compiled forward is TorchScript; eagerly it is LSTMCell."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return _eager.LSTMCell.forward(self, input, hx)
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError("LSTMCell: Expected input to be 1D or 2D, got {}D instead".format(input.dim()))
        if hx is not None:
            for idx, value in enumerate([hx[0], hx[1]]):
                if value.dim() != 1 and value.dim() != 2:
                    raise ValueError(
                        "LSTMCell: Expected hx[{}] to be 1D or 2D, got {}D instead".format(idx, value.dim()))
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = hx
            if not is_batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
        self._script_check_step(input, [h0, c0])
        result_dtype = input.dtype
        dtype = _compute_dtype(input)
        w_ih, w_hh, b_ih, b_hh = self._script_step_weights(dtype)
        x = input.unsqueeze(0).to(dtype)
        h0, c0 = h0.unsqueeze(0).to(dtype), c0.unsqueeze(0).to(dtype)
        need = _needs_workspace([x, h0, c0], self._script_params())
        _, h_n, c_n, _ = torch.ops.lstm_fused.lstm_layer_fwd(x, None, h0, c0, w_ih, w_hh, b_ih, b_hh, None, None,
                                                              False, need)
        h, c = h_n[0].to(result_dtype), c_n[0].to(result_dtype)
        if not is_batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c


class GRUCell(_ScriptCellMixin, _eager.GRUCell):
    """A GRUCell whose compiled forward is TorchScript; eagerly it is GRUCell."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            return _eager.GRUCell.forward(self, input, hx)
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError("GRUCell: Expected input to be 1D or 2D, got {}D instead".format(input.dim()))
        if hx is not None:
            if hx.dim() != 1 and hx.dim() != 2:
                raise ValueError("GRUCell: Expected hidden to be 1D or 2D, got {}D instead".format(hx.dim()))
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            h0 = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
        else:
            h0 = hx if is_batched else hx.unsqueeze(0)
        self._script_check_step(input, [h0])
        result_dtype = input.dtype
        dtype = _compute_dtype(input)
        w_ih, w_hh, b_ih, b_hh = self._script_step_weights(dtype)
        x = input.unsqueeze(0).to(dtype)
        h0 = h0.unsqueeze(0).to(dtype)
        need = _needs_workspace([x, h0], self._script_params())
        _, h_n, _ = torch.ops.lstm_fused.gru_layer_fwd(x, None, h0, w_ih, w_hh, b_ih, b_hh, need)
        h = h_n[0].to(result_dtype)
        if not is_batched:
            h = h.squeeze(0)
        return h


# ---- the twin factory -------------------------------------------------------------------------------------
_TWINS = {_eager.LSTM: LSTM, _eager.GRU: GRU, _eager.LSTMCell: LSTMCell, _eager.GRUCell: GRUCell}


def scriptable(module):
    """The TorchScript twin of an lstm_fused module (what its `__prepare_scriptable__` returns): an instance of
    the subclass of the same name here, sharing the module's parameters, buffers, hooks and flags. A twin is
    refreshed (its weight list re-read from its parameters) and returned as it is; a user's subclass of an
    lstm_fused module is returned unchanged (it scripts as its own code allows)."""
    if isinstance(module, tuple(_TWINS.values())):
        twin = module
    else:
        cls = _TWINS.get(type(module))
        if cls is None:
            return module
        twin = cls.__new__(cls)
        # The same state, one level deep: the twin gets its own parameter/buffer/module/hook dicts holding the
        # very same objects, so nothing registered on one later shows up on the other.
        twin.__dict__.update({k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()})
    twin._has_cuda_kernels = ops.has_kernel("CUDA")
    if isinstance(twin, _FusedRNNBase):
        twin._fused_weights = list(twin._flat_weights)
        twin._per_direction = len(twin._all_weights[0])
    else:
        assert isinstance(twin, _FusedCellBase)
        twin._cell_name = type(twin).__name__
    return twin
