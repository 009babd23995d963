"""Every misuse of the hidden-state argument, for each module class and input kind, raises the exception type
nn raises for it (or succeeds where nn succeeds, with nn's results), and the module keeps working afterwards."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import flat_tensors

B, I, H = 3, 4, 8


def _inputs(kind):
    """input kind -> (input, a well-formed hidden state tensor of the right shape)."""
    g = torch.Generator().manual_seed(0)
    seq = torch.randn(5, B, I, generator=g)
    if kind in ("LSTM", "GRU"):
        return {
            "batched": (seq, torch.zeros(1, B, H)),
            "unbatched": (seq[:, 0], torch.zeros(1, H)),
            "packed_sorted": (pack_padded_sequence(seq, [5, 4, 2]), torch.zeros(1, B, H)),
            "packed_unsorted": (pack_padded_sequence(seq, [2, 5, 4], enforce_sorted=False), torch.zeros(1, B, H)),
        }
    return {"batched": (seq[0], torch.zeros(B, H)), "unbatched": (seq[0, 0], torch.zeros(H))}


def _misuses(h):
    return {
        "three": (h, h, h), "one": (h,), "empty": (), "bare_tensor": h, "list": [h, h], "list_of_three": [h, h, h],
        "none_first": (None, h), "none_second": (h, None), "strings": ("a", "b"), "int": 3,
        "float64": (h.double(), h.double()), "int64_tensor": h.long(), "tensor_and_int": (h, 3),
        "extra_dim": (h.unsqueeze(0), h.unsqueeze(0)), "wrong_batch": (h[..., :1, :], h) if h.dim() == 3 else (h[:1], h),
        "wrong_width": (h[..., :2], h),
    }


CASES = [(cls, kind, misuse) for cls in ("LSTM", "GRU", "LSTMCell", "GRUCell") for kind in _inputs(cls)
         for misuse in _misuses(torch.zeros(2, 2, 2))
         # nn.LSTM segfaults on a 4-D hidden state with packed input (an nn bug): nothing to compare with.
         if not (kind.startswith("packed") and misuse == "extra_dim")]


def _call(module, x, hx):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return flat_tensors(module(x, hx)), None
    except Exception as e:  # noqa: BLE001 (the type is what is compared)
        return None, e


@pytest.mark.parametrize("cls,kind,misuse", CASES, ids=["-".join(c) for c in CASES])
def test_hx_misuse_matches_nn(cls, kind, misuse):
    torch.manual_seed(0)
    ref, ours = getattr(nn, cls)(I, H), getattr(lstm_fused, cls)(I, H)
    ours.load_state_dict(ref.state_dict())
    x, h = _inputs(cls)[kind]
    hx = _misuses(h)[misuse]
    ref_out, ref_err = _call(ref, x, hx)
    out, err = _call(ours, x, hx)
    assert type(err) is type(ref_err), f"nn: {ref_err!r}, lstm_fused: {err!r}"
    if ref_err is None:
        for a, b in zip(out, ref_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The module works as before after the error.
    good = (h, h) if cls in ("LSTM", "LSTMCell") else h
    after, after_err = _call(ours, x, good)
    expected, _ = _call(ref, x, good)
    assert after_err is None, after_err
    for a, b in zip(after, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
