"""nn's error messages for bad module input, written once for the eager modules (modules.py), their TorchScript
twins (scripting.py) and the ONNX export (onnx_export.py, through the modules' checks).

Each function returns the message; the caller raises it with nn's exception type. `mode` is "LSTM" or "GRU".
The functions are TorchScript-compilable (typed, no dtype formatting: TorchScript prints a dtype as its number, so
callers pass dtypes as names).
"""
from typing import List, Tuple

import torch

NO_CUDA_KERNELS = (
    "lstm_fused was built without CUDA kernels (the installed torch had no CUDA, or no CUDA toolkit was found at "
    "build time). Rebuild with CUDA_HOME set: `pip install --no-build-isolation .`"
)


# -- rank and batching (ValueError / RuntimeError) --------------------------------------------------------------
def bad_rank(name: str, what: str, batched_rank: int, got: int) -> str:
    """A module's input or a cell's state that is neither batched nor unbatched (nn: ValueError)."""
    return f"{name}: Expected {what} to be {batched_rank - 1}D or {batched_rank}D, got {got}D instead"


def cell_state_label(num_states: int, idx: int) -> str:
    # nn.LSTMCell names its states hx[0], hx[1]; nn.GRUCell its one state "hidden".
    return "hidden" if num_states == 1 else f"hx[{idx}]"


def hidden_rank(mode: str, is_batched: bool, dims: List[int]) -> str:
    """Hidden states whose rank does not follow the input's batching (nn: RuntimeError): LSTM names its (h, c) hx
    and cx, GRU its one state hx."""
    want = 3 if is_batched else 2
    kind = "batched 3-D" if is_batched else "unbatched 2-D"
    if mode == "GRU":
        return f"For {kind} input, hx should also be {want}-D but got {dims[0]}-D tensor"
    got = ", ".join([f"{d}-D" for d in dims])
    return f"For {kind} input, hx and cx should also be {want}-D but got ({got}) tensors"


def empty_sequence(mode: str) -> str:
    return f"{mode}: the input sequence is empty (0 time steps)"


# -- the sequence modules' input and hidden states (RuntimeError, except ValueError for padded input's dtype) ------
def parameter_device(input_device: torch.device, parameter_device: torch.device) -> str:
    return (f"Input and parameter tensors are not at the same device, found input tensor at {input_device} and "
            f"parameter tensor at {parameter_device}")


def input_dtype(input_dtype: str, weight_dtype: str) -> str:
    return (f"RNN input dtype ({input_dtype}) does not match weight dtype ({weight_dtype}). Convert input: "
            f"input.to({weight_dtype}), or convert model: model.to({input_dtype})")


def input_dims(expected: int, got: int) -> str:
    return f"input must have {expected} dimensions, got {got}"


def input_size(expected: int, got: int) -> str:
    return f"input.size(-1) must be equal to input_size. Expected {expected}, got {got}"


def hidden_label(num_states: int, idx: int) -> str:
    # nn.LSTM names its states hidden[0], hidden[1]; nn.GRU its one state "hidden".
    return "hidden" if num_states == 1 else f"hidden[{idx}]"


def hidden_size(label: str, expected: Tuple[int, int, int], got: List[int]) -> str:
    return f"Expected {label} size {expected}, got {got}"


def hidden_dtype(weight_dtype: str, got: str) -> str:
    return f"Expected hidden dtype {weight_dtype}, got {got}"


def hidden_device(weight_device: torch.device, hidden_device: torch.device) -> str:
    return (f"Input and hidden tensors are not at the same device, found input tensor at {weight_device} and "
            f"hidden tensor at {hidden_device}")


# -- the cells (RuntimeError, as nn's _VF ops raise) --------------------------------------------------------------
def cell_input_size(got: int, expected: int) -> str:
    return f"input has inconsistent input_size: got {got} expected {expected}"


def cell_state_shape(idx: int, got: List[int], expected: List[int]) -> str:
    return f"hx[{idx}] has inconsistent shape: got {got}, expected {expected}"


def cell_dtypes(name: str, input_dtype: str, hidden_dtype: str, weight_dtype: str) -> str:
    return (f"{name}: expected input, hidden state and weights of one dtype, got input {input_dtype}, hidden "
            f"{hidden_dtype}, weights {weight_dtype}")
