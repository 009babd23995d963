"""Bad input raises the exception type nn.LSTM raises for it, with a clear message, and the module
keeps working afterwards."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import lstm_fused
from helpers import assert_raises_like, twin_grus, twin_lstms

I, H, P = 3, 6, 4


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


FORWARD_CASES = {
    "wrong_feature_size": lambda: (_x(5, 2, I + 1), None),
    "input_1d": lambda: (_x(5), None),
    "input_4d": lambda: (_x(5, 2, 1, I), None),
    "wrong_h0_shape": lambda: (_x(5, 2, I), (_x(2, 2, P), _x(2, 2, H))),
    "wrong_h0_batch": lambda: (_x(5, 2, I), (_x(4, 3, P), _x(4, 2, H))),
    "wrong_c0_shape": lambda: (_x(5, 2, I), (_x(4, 2, P), _x(4, 2, P))),
    "h0_without_proj_size": lambda: (_x(5, 2, I), (_x(4, 2, H), _x(4, 2, H))),
    "batched_input_2d_hx": lambda: (_x(5, 2, I), (_x(4, P), _x(4, H))),
    "unbatched_input_3d_hx": lambda: (_x(5, I), (_x(4, 1, P), _x(4, 1, H))),
    "input_dtype_mismatch": lambda: (_x(5, 2, I, dtype=torch.float64), None),
    "integer_input": lambda: (torch.ones(5, 2, I, dtype=torch.long), None),
    "hx_dtype_mismatch": lambda: (_x(5, 2, I), (_x(4, 2, P, dtype=torch.float64), _x(4, 2, H))),
    "empty_sequence": lambda: (_x(0, 2, I), None),
    "empty_unbatched_sequence": lambda: (_x(0, I), None),
    "hx_is_a_tensor": lambda: (_x(5, 2, I), _x(4, 2, P)),
    "packed_wrong_feature_size": lambda: (pack_padded_sequence(_x(5, 3, I + 2), torch.tensor([5, 4, 2])), None),
    "packed_wrong_h0_batch": lambda: (pack_padded_sequence(_x(5, 3, I), torch.tensor([5, 4, 2])),
                                      (_x(4, 2, P), _x(4, 2, H))),
    "packed_dtype_mismatch": lambda: (pack_padded_sequence(_x(5, 3, I, dtype=torch.float64),
                                                           torch.tensor([5, 4, 2])), None),
}


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is compared
        return e
    return None


@pytest.mark.parametrize("name", sorted(FORWARD_CASES))
def test_forward_errors_match_nn_lstm(name):
    ref, ours = twin_lstms(I, H, num_layers=2, bidirectional=True, proj_size=P)
    torch.manual_seed(0)
    x, hx = FORWARD_CASES[name]()
    expected = _raised(lambda: ref(x, hx))
    assert expected is not None, f"nn.LSTM accepts case {name}; the case is wrong"
    with pytest.raises(type(expected)) as info:
        ours(x, hx)
    assert str(info.value), "the error must say what is wrong"
    # The module still works after the error.
    good = torch.randn(4, 2, I)
    torch.testing.assert_close(ours(good)[0], ref(good)[0], rtol=1e-5, atol=1e-6)


CONSTRUCTOR_CASES = [
    dict(input_size=3, hidden_size=4, dropout=-0.1),
    dict(input_size=3, hidden_size=4, dropout=1.5),
    dict(input_size=3, hidden_size=4, dropout=True),
    dict(input_size=3, hidden_size=4, dropout="0.1"),
    dict(input_size=3, hidden_size=0),
    dict(input_size=3, hidden_size=-2),
    dict(input_size=3, hidden_size=2.5),
    dict(input_size=0, hidden_size=4),
    dict(input_size=3.0, hidden_size=4),
    dict(input_size=3, hidden_size=4, num_layers=0),
    dict(input_size=3, hidden_size=4, proj_size=-1),
    dict(input_size=3, hidden_size=4, proj_size=4),
    dict(input_size=3, hidden_size=4, proj_size=7),
    dict(input_size=3, hidden_size=4, bias="yes"),
    dict(input_size=3, hidden_size=4, batch_first=1),
]


@pytest.mark.parametrize("kwargs", CONSTRUCTOR_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_constructor_errors_match_nn_lstm(kwargs):
    expected = _raised(lambda: nn.LSTM(**kwargs))
    assert expected is not None
    with pytest.raises(type(expected), match=str(expected)[:20].replace("(", r"\(").replace(")", r"\)")):
        lstm_fused.LSTM(**kwargs)


def test_batch_zero_is_accepted_like_nn_lstm():
    ref, ours = twin_lstms(I, H, num_layers=2, bidirectional=True, proj_size=P)
    o1, (h1, c1) = ref(torch.randn(5, 0, I))
    o2, (h2, c2) = ours(torch.randn(5, 0, I))
    assert o1.shape == o2.shape and h1.shape == h2.shape and c1.shape == c2.shape


# -- the ops themselves: malformed calls get clear errors, never a crash -----------------------------------
def _op_args(**over):
    T, B = 4, 3
    args = dict(input=torch.randn(T, B, I), batch_sizes=None, h0=torch.randn(1, B, H), c0=torch.randn(1, B, H),
                w_ih=[torch.randn(4 * H, I)], w_hh=[torch.randn(4 * H, H)], b_ih=[torch.randn(4 * H)],
                b_hh=[torch.randn(4 * H)], w_hr=None, w_ph=None, coupled=False, need_workspace=True)
    args.update(over)
    return list(args.values())


OP_CASES = {
    "unsorted_batch_sizes": (dict(input=torch.randn(9, I), batch_sizes=torch.tensor([2, 3, 3, 1])), RuntimeError),
    "batch_sizes_wrong_sum": (dict(input=torch.randn(8, I), batch_sizes=torch.tensor([3, 3, 2, 1])), RuntimeError),
    "batch_sizes_zero": (dict(input=torch.randn(6, I), batch_sizes=torch.tensor([3, 3, 0])), RuntimeError),
    "batch_sizes_not_int64": (dict(input=torch.randn(9, I), batch_sizes=torch.tensor([3., 3., 2., 1.])), RuntimeError),
    "batch_sizes_first_not_batch": (dict(input=torch.randn(6, I), batch_sizes=torch.tensor([2, 2, 2])), RuntimeError),
    "empty_sequence": (dict(input=torch.randn(0, 3, I)), RuntimeError),
    "weight_dtype_mismatch": (dict(w_hh=[torch.randn(4 * H, H, dtype=torch.float64)]), RuntimeError),
    "bad_w_ih_shape": (dict(w_ih=[torch.randn(4 * H, I + 1)]), RuntimeError),
    "w_ih_rows_not_4h": (dict(w_ih=[torch.randn(4 * H + 1, I)]), RuntimeError),
    "bad_w_hr_shape": (dict(w_hr=[torch.randn(2, H + 1)]), RuntimeError),
    "one_bias_only": (dict(b_hh=None), RuntimeError),
    "h0_batch_mismatch": (dict(h0=torch.randn(1, 2, H), c0=torch.randn(1, 2, H)), RuntimeError),
    "h0_not_3d": (dict(h0=torch.randn(3, H), c0=torch.randn(3, H)), RuntimeError),
    "three_directions": (dict(w_ih=[torch.randn(4 * H, I)] * 3, w_hh=[torch.randn(4 * H, H)] * 3), RuntimeError),
    "direction_lists_differ": (dict(w_hh=[torch.randn(4 * H, H)] * 2), RuntimeError),
    "h0_directions_mismatch": (dict(w_ih=[torch.randn(4 * H, I)] * 2, w_hh=[torch.randn(4 * H, H)] * 2,
                                    b_ih=None, b_hh=None), RuntimeError),
    "bad_peephole_shape": (dict(w_ph=[torch.randn(2, H)]), RuntimeError),
    "coupled_with_4h_rows": (dict(coupled=True, w_ih=[torch.randn(4 * H + 1, I)]), RuntimeError),
    "half_dtype_on_cpu": (dict(input=torch.randn(4, 3, I).half(), h0=torch.randn(1, 3, H).half(),
                               c0=torch.randn(1, 3, H).half(), w_ih=[torch.randn(4 * H, I).half()],
                               w_hh=[torch.randn(4 * H, H).half()], b_ih=None, b_hh=None), TypeError),
}


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_op_errors(name):
    over, exc = OP_CASES[name]
    with pytest.raises(exc, match="lstm_fused"):
        torch.ops.lstm_fused.lstm_layer_fwd.default(*_op_args(**over))


@pytest.mark.skipif(lstm_fused.has_cuda_kernels() or not torch.cuda.is_available(), reason="needs a GPU and a CPU-only build")
def test_cuda_tensor_on_cpu_only_build_is_a_clear_error():
    m = lstm_fused.LSTM(I, H).cuda()
    with pytest.raises(RuntimeError, match="built without CUDA"):
        m(torch.randn(4, 2, I, device="cuda"))


@pytest.mark.skipif(not (torch.cuda.is_available() and lstm_fused.has_cuda_kernels()), reason="needs a GPU and a CUDA build")
def test_cuda_input_with_states_on_the_cpu_raises():
    m = lstm_fused.LSTM(3, 4).cuda()
    with pytest.raises(RuntimeError):
        m(torch.randn(5, 2, 3, device="cuda"), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


@pytest.mark.parametrize("make", [lambda: lstm_fused.LSTM(3, 5, device="meta"),
                                  lambda: lstm_fused.GRU(3, 5, device="meta"),
                                  lambda: lstm_fused.LSTMCell(3, 5, device="meta"),
                                  lambda: lstm_fused.GRUCell(3, 5, device="meta")])
def test_parameters_on_another_device_raise_like_nn(make):
    x = torch.randn(2, 1, 3) if not isinstance(make(), (lstm_fused.LSTMCell, lstm_fused.GRUCell)) else torch.randn(1, 3)
    with pytest.raises(RuntimeError, match="same device"):
        make()(x)


GRU_ERRORS = {
    "wrong_feature_size": lambda: (torch.randn(5, 2, 4), None),
    "input_1d": lambda: (torch.randn(5), None),
    "wrong_h0_shape": lambda: (torch.randn(5, 2, 3), torch.randn(1, 2, 6)),
    "batched_input_2d_hx": lambda: (torch.randn(5, 2, 3), torch.randn(4, 6)),
    "unbatched_input_3d_hx": lambda: (torch.randn(5, 3), torch.randn(4, 1, 6)),
    "dtype_mismatch": lambda: (torch.randn(5, 2, 3, dtype=torch.float64), None),
    "empty_sequence": lambda: (torch.randn(0, 2, 3), None),
}


@pytest.mark.parametrize("name", sorted(GRU_ERRORS))
def test_gru_errors_match(name):
    ref, ours = twin_grus(3, 6, num_layers=2, bidirectional=True)
    assert_raises_like(ref, ours, *GRU_ERRORS[name]())
    good = torch.randn(4, 2, 3)
    torch.testing.assert_close(ours(good)[0], ref(good)[0], rtol=1e-5, atol=1e-6)
