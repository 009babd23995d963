"""Edge cases found in review: double backward, mixed devices, parametrized weights in convert(), autocast,
numpy ints in constructors, the test helpers' device handling."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lstm_fused
from helpers import requires_testing_ops


@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU])
def test_double_backward_raises_instead_of_silent_zeros(cls):
    m = cls(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.pow(2).sum().backward()


@pytest.mark.parametrize("make", [lambda: lstm_fused.LSTM(3, 5, device="meta"), lambda: lstm_fused.GRU(3, 5, device="meta"),
                                  lambda: lstm_fused.LSTMCell(3, 5, device="meta"),
                                  lambda: lstm_fused.GRUCell(3, 5, device="meta")])
def test_parameters_on_another_device_raise_like_nn(make):
    x = torch.randn(2, 1, 3) if not isinstance(make(), (lstm_fused.LSTMCell, lstm_fused.GRUCell)) else torch.randn(1, 3)
    with pytest.raises(RuntimeError, match="same device"):
        make()(x)


def test_convert_leaves_parametrized_modules_with_a_warning():
    model = nn.Sequential(nn.LSTM(3, 5), nn.LSTM(5, 5))
    parametrize.register_parametrization(model[0], "weight_hh_l0", nn.Identity())
    with pytest.warns(UserWarning, match="parametrized"):
        lstm_fused.convert(model)
    assert isinstance(model[0], nn.LSTM) and isinstance(model[1], lstm_fused.LSTM)
    model[1](model[0](torch.randn(2, 1, 3))[0])


def test_autocast_matches_nn_dtypes_and_accepts_its_own_states():
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2)
    ours = lstm_fused.LSTM(3, 4, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    gru = lstm_fused.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o1, hc1 = ref(x)
        o2, hc2 = ours(x)
        assert o2.dtype == o1.dtype == torch.bfloat16 and hc2[0].dtype == hc1[0].dtype
        torch.testing.assert_close(o2.float(), o1.float(), rtol=0.05, atol=0.05)
        ours(x.bfloat16(), hc2)  # its own bf16 states go back in
        g, h = gru(x.bfloat16())
        gru(x.bfloat16(), h)
        lstm_fused.LSTMCell(3, 4)(torch.randn(2, 3).bfloat16())
        lstm_fused.GRUCell(3, 4)(torch.randn(2, 3).bfloat16())


def test_numpy_integers_accepted_like_nn():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn.LSTM(3, 4, num_layers=np.int64(2))
    m = lstm_fused.LSTM(3, 4, num_layers=np.int64(2))
    assert m(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)


def test_single_feature_input_gradients():
    # A 1-feature input takes the BLAS path for its weight gradient (no 32x panel padding); still exact.
    torch.manual_seed(0)
    ref = nn.LSTM(1, 6)
    ours = lstm_fused.LSTM(1, 6)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(40, 3, 1, requires_grad=True)
    g1 = torch.autograd.grad(ref(x)[0].sum(), [x, *ref.parameters()])
    g2 = torch.autograd.grad(ours(x)[0].sum(), [x, *ours.parameters()])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_test_loss_weights_follow_the_outputs_device():
    # The GPU parity tests weight outputs with loss_of: its weights must be made on the outputs' device (a CPU
    # weight times a CUDA output raises), the same numbers whatever the device. meta stands in for CUDA here.
    from helpers import loss_of

    out, h, c = (torch.randn(4, 2, 3), torch.randn(1, 2, 3), torch.randn(1, 2, 3))
    assert loss_of(*(t.to("meta") for t in (out, h, c))).device.type == "meta"
    g = torch.Generator().manual_seed(1)
    w = [torch.randn(t.shape, generator=g) for t in (out, h, c)]
    torch.testing.assert_close(loss_of(out, h, c), sum((t * wt).sum() for t, wt in zip((out, h, c), w)))


@requires_testing_ops
def test_path_counts_op_reports_four_paths():
    counts = torch.ops.lstm_fused_testing.path_counts()
    assert len(counts) == 4 and all(isinstance(n, int) and n >= 0 for n in counts)
