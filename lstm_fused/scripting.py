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

from . import _messages, ops
from ._regularisers import zoneout_op_masks
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
        raise RuntimeError(_messages.NO_CUDA_KERNELS)


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


# TorchScript has no union of a tuple and a tensor, so each twin's typed forward turns its hx into a list of
# states ([h, c] for LSTM, [h] for GRU) and back; everything between is shared, in the eager modules' order.
def _pair_states(hx: Optional[Tuple[Tensor, Tensor]]) -> Optional[List[Tensor]]:
    if hx is None:
        return None
    return [hx[0], hx[1]]


def _single_state(hx: Optional[Tensor]) -> Optional[List[Tensor]]:
    if hx is None:
        return None
    return [hx]


# ---- LSTM / GRU -------------------------------------------------------------------------------------------
class _ScriptRNNMixin:
    """What the LSTM and GRU twins share: the forward over a list of states (nn's checks, batching, packing, the
    layer loop); a twin gives `_script_layer`, its fused layer op."""

    __jit_unused_properties__ = ["_flat_weights", "all_weights"]

    def _script_forward(self, input: Tensor, hx: Optional[List[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """_FusedRNNBase._forward_padded."""
        if input.dim() != 2 and input.dim() != 3:
            raise ValueError(_messages.bad_rank(self.mode, "input", 3, input.dim()))
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            hx = self._script_batched_states(hx, is_batched)
        mini_batch = input.size(batch_dim)
        self._script_check_input(input, False)
        if hx is None:
            states = self._script_zeros(input, mini_batch)
        else:
            states = hx
            self._script_check_hidden(states, mini_batch)
        if input.size(1 - batch_dim) == 0:
            raise RuntimeError(_messages.empty_sequence(self.mode))
        x = input.transpose(0, 1) if self.batch_first else input
        output, finals = self._script_layers(x, None, states)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output = output.squeeze(batch_dim)
            finals = [final.squeeze(1) for final in finals]
        return output, finals

    def _script_forward_packed(self, input: PackedSequence, hx: Optional[List[Tensor]]
                               ) -> Tuple[PackedSequence, List[Tensor]]:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        self._script_check_input(data, True)
        mini_batch = int(batch_sizes[0])
        if hx is None:
            states = self._script_zeros(data, mini_batch)
        else:
            states = hx
            self._script_check_hidden(states, mini_batch)
            if sorted_indices is not None:
                states = [state.index_select(1, sorted_indices) for state in states]
        output, finals = self._script_layers(data, batch_sizes, states)
        if unsorted_indices is not None:
            finals = [final.index_select(1, unsorted_indices) for final in finals]
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), finals

    def _script_check_input(self, input: Tensor, packed: bool) -> None:
        for w in self._fused_weights:
            if w.device != input.device:
                raise RuntimeError(_messages.parameter_device(input.device, w.device))
        weight_dtype = self._fused_weights[0].dtype
        if input.dtype != weight_dtype:
            msg = _messages.input_dtype(_dtype_name(input.dtype), _dtype_name(weight_dtype))
            if packed:
                raise RuntimeError(msg)
            raise ValueError(msg)
        expected_input_dim = 2 if packed else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(_messages.input_dims(expected_input_dim, input.dim()))
        if self.input_size != input.size(-1):
            raise RuntimeError(_messages.input_size(self.input_size, input.size(-1)))

    def _script_batched_states(self, states: List[Tensor], is_batched: bool) -> List[Tensor]:
        dims = [state.dim() for state in states]
        for d in dims:
            if d != (3 if is_batched else 2):
                raise RuntimeError(_messages.hidden_rank(self.mode, is_batched, dims))
        if is_batched:
            return states
        return [state.unsqueeze(1) for state in states]

    def _script_state_widths(self) -> List[int]:
        real_hidden_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        return [real_hidden_size, self.hidden_size][:self._num_states]

    def _script_zeros(self, input: Tensor, mini_batch: int) -> List[Tensor]:
        num_directions = 2 if self.bidirectional else 1
        return [torch.zeros(self.num_layers * num_directions, mini_batch, width, dtype=input.dtype,
                            device=input.device) for width in self._script_state_widths()]

    def _script_check_hidden(self, states: List[Tensor], mini_batch: int) -> None:
        num_directions = 2 if self.bidirectional else 1
        widths = self._script_state_widths()
        for i in range(len(widths)):
            expected = (self.num_layers * num_directions, mini_batch, widths[i])
            if states[i].size() != expected:
                label = _messages.hidden_label(self._num_states, i)
                raise RuntimeError(_messages.hidden_size(label, expected, list(states[i].size())))
        weight = self._fused_weights[0]
        for t in states:
            if t.dtype != weight.dtype:
                raise RuntimeError(_messages.hidden_dtype(_dtype_name(weight.dtype), _dtype_name(t.dtype)))
            if t.device != weight.device:
                raise RuntimeError(_messages.hidden_device(weight.device, t.device))

    def _script_layer_weights(self, weights: List[Tensor], layer: int) -> List[List[Tensor]]:
        """[w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, layer_norm]: lists over the layer's directions (empty where absent;
        layer_norm holds each direction's parameters in turn, as the op takes them)."""
        num_directions = 2 if self.bidirectional else 1
        groups: List[List[Tensor]] = [[], [], [], [], [], [], []]
        for direction in range(num_directions):
            k = (layer * num_directions + direction) * self._per_direction
            end = k + self._per_direction
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
                k += 1
            if self.layer_norm:
                for i in range(k, end):
                    groups[6].append(weights[i])
        return groups

    def _script_dropped_hh(self, weights: List[Tensor]) -> List[Tensor]:
        """weight_drop in training: every weight_hh with this call's mask, layer by layer, forward direction first
        (the eager module's order)."""
        out: List[Tensor] = []
        for w in weights:
            out.append(w)
        if self.weight_drop > 0 and self.training:
            num_directions = 2 if self.bidirectional else 1
            for k in range(self.num_layers * num_directions):
                out[k * self._per_direction + 1] = F.dropout(out[k * self._per_direction + 1], self.weight_drop, True)
        return out

    def _script_layers(self, x: Tensor, batch_sizes: Optional[Tensor], states: List[Tensor]
                       ) -> Tuple[Tensor, List[Tensor]]:
        _check_cuda_kernels(x, self._has_cuda_kernels)
        result_dtype = x.dtype
        dtype = _compute_dtype(x)
        weights = [w.to(dtype) for w in self._script_dropped_hh(self._fused_weights)]
        x = x.to(dtype)
        states = [state.to(dtype) for state in states]
        if self.mode == "LSTM" and self.num_layers > 1 and not self.bidirectional and self.proj_size == 0 and not (
                self.dropout > 0 and self.training) and not (self.zoneout > 0 or self.zoneout_cell > 0) and not \
                self.layer_norm:
            x, finals = self._script_lstm_stack(x, batch_sizes, states, weights)
        else:
            x, finals = self._script_layer_loop(x, batch_sizes, states, weights)
        return x.to(result_dtype), [final.to(result_dtype) for final in finals]

    def _script_lstm_stack(self, x: Tensor, batch_sizes: Optional[Tensor], states: List[Tensor],
                           weights: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        # The whole stack in one op (as LSTM._layers).
        per_layer: List[List[Tensor]] = [[], [], [], [], [], []]
        for layer in range(self.num_layers):
            groups = self._script_layer_weights(weights, layer)
            for k in range(6):
                per_layer[k].extend(groups[k])
        need = _needs_workspace([x] + states, self._fused_weights)
        outs, h_n, c_n, _ = torch.ops.lstm_fused.lstm_stack_fwd(
            x, batch_sizes, states[0], states[1], per_layer[0], per_layer[1], _optional(per_layer[2], self.bias),
            _optional(per_layer[3], self.bias), _optional(per_layer[5], self.peephole), self.coupled, need)
        return outs[-1], [h_n, c_n]

    def _script_layer_loop(self, x: Tensor, batch_sizes: Optional[Tensor], states: List[Tensor],
                           weights: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        num_directions = 2 if self.bidirectional else 1
        finals: List[List[Tensor]] = [[] for _ in range(len(states))]
        for layer in range(self.num_layers):
            groups = self._script_layer_weights(weights, layer)
            first = layer * num_directions
            layer_states = [state[first:first + num_directions] for state in states]
            layer_params: List[Tensor] = []
            for group in groups:
                layer_params.extend(group)
            need = _needs_workspace([x] + layer_states, layer_params)
            rows = [x.size(0), x.size(1)] if batch_sizes is None else [x.size(0)]
            masks = zoneout_op_masks([self.zoneout, self.zoneout_cell][:self._num_states], self._script_state_widths(),
                                   num_directions, rows, self.training, x.device, x.dtype)
            x, layer_finals = self._script_layer(x, batch_sizes, layer_states, groups, need, masks)
            for i in range(len(finals)):
                finals[i].append(layer_finals[i])
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, [torch.cat(acc) for acc in finals]


class LSTM(_ScriptRNNMixin, _eager.LSTM):
    """An LSTM whose compiled forward is TorchScript (see the module docstring); eagerly it is LSTM."""

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None
                ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if not torch.jit.is_scripting():
            return _eager.LSTM.forward(self, input, hx)
        output, finals = self._script_forward(input, _pair_states(hx))
        return output, (finals[0], finals[1])

    @torch.jit.export
    def forward_packed(self, input: PackedSequence, hx: Optional[Tuple[Tensor, Tensor]] = None
                       ) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        """forward for a PackedSequence (scripted modules only take tensors in forward)."""
        output, finals = self._script_forward_packed(input, _pair_states(hx))
        return output, (finals[0], finals[1])

    def _script_layer(self, x: Tensor, batch_sizes: Optional[Tensor], states: List[Tensor],
                      groups: List[List[Tensor]], need: bool, masks: List[Optional[Tensor]]
                      ) -> Tuple[Tensor, List[Tensor]]:
        x, h_n, c_n, _ = torch.ops.lstm_fused.lstm_layer_fwd(
            x, batch_sizes, states[0], states[1], groups[0], groups[1], _optional(groups[2], self.bias),
            _optional(groups[3], self.bias), _optional(groups[4], self.proj_size > 0),
            _optional(groups[5], self.peephole), self.coupled, need, masks[0], masks[1],
            _optional(groups[6], self.layer_norm))
        return x, [h_n, c_n]


class GRU(_ScriptRNNMixin, _eager.GRU):
    """A GRU whose compiled forward is TorchScript (see the module docstring); eagerly it is GRU."""

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return _eager.GRU.forward(self, input, hx)
        output, finals = self._script_forward(input, _single_state(hx))
        return output, finals[0]

    @torch.jit.export
    def forward_packed(self, input: PackedSequence, hx: Optional[Tensor] = None) -> Tuple[PackedSequence, Tensor]:
        """forward for a PackedSequence (scripted modules only take tensors in forward)."""
        output, finals = self._script_forward_packed(input, _single_state(hx))
        return output, finals[0]

    def _script_layer(self, x: Tensor, batch_sizes: Optional[Tensor], states: List[Tensor],
                      groups: List[List[Tensor]], need: bool, masks: List[Optional[Tensor]]
                      ) -> Tuple[Tensor, List[Tensor]]:
        x, h_n, _ = torch.ops.lstm_fused.gru_layer_fwd(
            x, batch_sizes, states[0], groups[0], groups[1], _optional(groups[2], self.bias),
            _optional(groups[3], self.bias), need, masks[0], _optional(groups[6], self.layer_norm))
        return x, [h_n]


# ---- cells ------------------------------------------------------------------------------------------------
class _ScriptCellMixin:
    """What the LSTMCell and GRUCell twins share: the step over a list of states, as _FusedCellBase.forward
    (without autocast); a twin gives `_script_step_op`, its fused op on one step."""

    def _script_step(self, input: Tensor, hx: Optional[List[Tensor]]) -> List[Tensor]:
        if input.dim() != 1 and input.dim() != 2:
            raise ValueError(_messages.bad_rank(self._cell_name, "input", 2, input.dim()))
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() != 1 and value.dim() != 2:
                    label = _messages.cell_state_label(self._num_states, idx)
                    raise ValueError(_messages.bad_rank(self._cell_name, label, 2, value.dim()))
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            states = [zeros for _ in range(self._num_states)]
        else:
            states = hx if is_batched else [state.unsqueeze(0) for state in hx]
        self._script_check_step(input, states)
        result_dtype = input.dtype
        dtype = _compute_dtype(input)
        x = input.unsqueeze(0).to(dtype)
        states = [state.unsqueeze(0).to(dtype) for state in states]
        need = _needs_workspace([x] + states, self._script_params())
        finals = [final[0].to(result_dtype) for final in self._script_step_op(x, states, dtype, need)]
        if not is_batched:
            finals = [final.squeeze(0) for final in finals]
        return finals

    def _script_check_step(self, input: Tensor, states: List[Tensor]) -> None:
        # _FusedCellBase._check_step without autocast.
        if input.size(1) != self.input_size:
            raise RuntimeError(_messages.cell_input_size(input.size(1), self.input_size))
        if self.weight_ih.device != input.device:
            raise RuntimeError(_messages.parameter_device(input.device, self.weight_ih.device))
        for idx, value in enumerate(states):
            if value.size() != [input.size(0), self.hidden_size]:
                raise RuntimeError(
                    _messages.cell_state_shape(idx, list(value.size()), [input.size(0), self.hidden_size]))
            if value.dtype != input.dtype or self.weight_ih.dtype != input.dtype:
                raise RuntimeError(_messages.cell_dtypes(self._cell_name, _dtype_name(input.dtype),
                                                         _dtype_name(value.dtype), _dtype_name(self.weight_ih.dtype)))
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
        weight_hh = self.weight_hh
        if self.weight_drop > 0 and self.training:
            weight_hh = F.dropout(weight_hh, self.weight_drop, True)
        return [self.weight_ih.to(dtype)], [weight_hh.to(dtype)], b_ih, b_hh

    def _script_step_masks(self, x: Tensor, dtype: torch.dtype) -> List[Optional[Tensor]]:
        """The step's zoneout masks, drawn after weight_drop's (x: the step input [1, B, I])."""
        return zoneout_op_masks([self.zoneout, self.zoneout_cell][:self._num_states],
                              [self.hidden_size, self.hidden_size], 1, [x.size(1)], self.training, x.device, dtype)

    def _script_step_ln(self, dtype: torch.dtype) -> Optional[List[Tensor]]:
        """The cell's layer-norm parameters as the op takes them, or None without layer norm."""
        return _optional([w.to(dtype) for w in self._ln_weights], self.layer_norm)

    def _script_params(self) -> List[Tensor]:
        params = [self.weight_ih, self.weight_hh]
        bias_ih = self.bias_ih
        bias_hh = self.bias_hh
        if bias_ih is not None and bias_hh is not None:
            params += [bias_ih, bias_hh]
        return params + self._ln_weights


class LSTMCell(_ScriptCellMixin, _eager.LSTMCell):
    """An LSTMCell whose compiled forward is TorchScript; eagerly it is LSTMCell."""

    _ln_weights: List[Tensor]  # (typed: TorchScript cannot infer an empty list's)

    def forward(self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return _eager.LSTMCell.forward(self, input, hx)
        h, c = self._script_step(input, _pair_states(hx))
        return h, c

    def _script_step_op(self, x: Tensor, states: List[Tensor], dtype: torch.dtype, need: bool) -> List[Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._script_step_weights(dtype)
        masks = self._script_step_masks(x, dtype)
        _, h_n, c_n, _ = torch.ops.lstm_fused.lstm_layer_fwd(x, None, states[0], states[1], w_ih, w_hh, b_ih, b_hh,
                                                              None, None, False, need, masks[0], masks[1],
                                                              self._script_step_ln(dtype))
        return [h_n, c_n]


class GRUCell(_ScriptCellMixin, _eager.GRUCell):
    """A GRUCell whose compiled forward is TorchScript; eagerly it is GRUCell."""

    _ln_weights: List[Tensor]  # (typed: TorchScript cannot infer an empty list's)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if not torch.jit.is_scripting():
            return _eager.GRUCell.forward(self, input, hx)
        return self._script_step(input, _single_state(hx))[0]

    def _script_step_op(self, x: Tensor, states: List[Tensor], dtype: torch.dtype, need: bool) -> List[Tensor]:
        w_ih, w_hh, b_ih, b_hh = self._script_step_weights(dtype)
        masks = self._script_step_masks(x, dtype)
        _, h_n, _ = torch.ops.lstm_fused.gru_layer_fwd(x, None, states[0], w_ih, w_hh, b_ih, b_hh, need, masks[0],
                                                       self._script_step_ln(dtype))
        return [h_n]


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
    # TorchScript reads instance attributes only: the class constant the shared forwards read goes on the twin.
    twin._num_states = type(twin)._num_states
    # (A module pickled before an option existed has only the class default; GRUs have no zoneout_cell.)
    twin.weight_drop, twin.zoneout, twin.zoneout_cell = module.weight_drop, module.zoneout, module.zoneout_cell
    twin.layer_norm = module.layer_norm
    if isinstance(twin, _FusedRNNBase):
        twin._fused_weights = list(twin._flat_weights)
        twin._per_direction = len(twin._all_weights[0])
    else:
        assert isinstance(twin, _FusedCellBase)
        twin._cell_name = type(twin).__name__
        twin._ln_weights = [getattr(twin, name) for name in twin._ln_param_names] if twin.layer_norm else []
    return twin
