"""float64 gradcheck of the op and of the module, parameters included."""
import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from lstm_fused.ops import lstm_layer


def _t(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_layer_op(reverse, proj, bias, packed):
    T, B, I, H = 4, 3, 3, 4
    P = 2 if proj else H
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = _t(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        x = _t(T, B, I)
    args = [x, _t(B, P), _t(B, H), _t(4 * H, I), _t(4 * H, P)]
    b = [_t(4 * H), _t(4 * H)] if bias else [None, None]
    w_hr = _t(P, H) if proj else None

    def f(x, h0, c0, w_ih, w_hh, *rest):
        it = iter(rest)
        b_ih = next(it) if bias else None
        b_hh = next(it) if bias else None
        w = next(it) if proj else None
        return lstm_layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w, reverse)

    inputs = args + [t for t in b if t is not None] + ([w_hr] if proj else [])
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module_all_parameters(packed):
    torch.manual_seed(0)
    m = lstm_fused.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = _t(5, 3, 3)
    h0, c0 = _t(4, 3, 2), _t(4, 3, 4)
    lengths = torch.tensor([5, 2, 4])

    def f(x, h0, c0, *ps):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, (h, c) = functional_call(m, dict(zip(names, ps)), (inp, (h0, c0)))
        return (out.data if packed else out), h, c

    assert torch.autograd.gradcheck(f, [x, h0, c0, *params])
