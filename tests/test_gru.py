"""lstm_fused.GRU / GRUCell against nn.GRU / nn.GRUCell with identical weights: outputs, h_n and every
gradient; packed, unbatched, gradcheck, opcheck, compile, errors, API and convert()."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import SHAPES, assert_close


def twin_grus(*args, dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.GRU(*args, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    ours = lstm_fused.GRU(*args, dtype=dtype, **kwargs)
    for (n1, a), (n2, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(a, b)  # same names, order and seeded init
    return ref, ours


def compare_grus(ref, ours, x, h0, leaves, dtype):
    results = []
    for m in (ref, ours):
        out, h_n = m(x, h0)
        data = out.data if hasattr(out, "batch_sizes") else out
        g = torch.Generator().manual_seed(1)
        loss = (data * torch.randn(data.shape, generator=g, dtype=dtype)).sum() + \
            (h_n * torch.randn(h_n.shape, generator=g, dtype=dtype)).sum()
        grads = torch.autograd.grad(loss, leaves + list(m.parameters()), retain_graph=True)
        results.append((data, h_n, grads))
    (o1, h1, g1), (o2, h2, g2) = results
    assert o1.shape == o2.shape and h1.shape == h2.shape
    assert_close(o2, o1, dtype, "output")
    assert_close(h2, h1, dtype, "h_n")
    for i, (a, b) in enumerate(zip(g2, g1)):
        assert_close(a, b, dtype, f"grad {i}", grad=True)


STRUCTURES = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("shape", range(0, len(SHAPES), 3))
@pytest.mark.parametrize("case", range(len(STRUCTURES)))
def test_gru_parity_grid(case, shape):
    num_layers, bidirectional, batch_first, bias = STRUCTURES[case]
    T, B, H = SHAPES[(shape + case) % len(SHAPES)]
    ref, ours = twin_grus(H + 2, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                          bias=bias, seed=case)
    D = 2 if bidirectional else 1
    x = torch.randn((B, T, H + 2) if batch_first else (T, B, H + 2), requires_grad=True)
    if case % 2:
        h0 = torch.randn(num_layers * D, B, H, requires_grad=True)
        compare_grus(ref, ours, x, h0, [x, h0], torch.float32)
    else:
        compare_grus(ref, ours, x, None, [x], torch.float32)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gru_packed(bidirectional, enforce_sorted, dtype):
    ref, ours = twin_grus(4, 7, num_layers=2, bidirectional=bidirectional, dtype=dtype)
    lengths = torch.tensor([9, 6, 6, 2, 1]) if enforce_sorted else torch.tensor([2, 9, 1, 6, 4])
    x = torch.randn(9, 5, 4, dtype=dtype, requires_grad=True)
    h0 = torch.randn(2 * (2 if bidirectional else 1), 5, 7, dtype=dtype, requires_grad=True)
    compare_grus(ref, ours, pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), h0, [x, h0], dtype)


@pytest.mark.parametrize("batch_first", [False, True])
def test_gru_unbatched_and_non_contiguous(batch_first):
    ref, ours = twin_grus(4, 6, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    compare_grus(ref, ours, x, h0, [x, h0], torch.float64)
    xs = torch.randn(9, 6, 12, dtype=torch.float64)[:, ::2, 1:5].detach().requires_grad_()
    compare_grus(ref, ours, xs.transpose(0, 1) if batch_first else xs, None, [xs], torch.float64)


def test_gru_dropout_matches_nn_gru_rng_and_eval():
    ref, ours = twin_grus(4, 6, num_layers=3, dropout=0.4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(11)
    o1 = ref(x)[0]
    torch.manual_seed(11)
    o2 = ours(x)[0]
    torch.testing.assert_close(o2, o1)
    ref.eval(), ours.eval()
    torch.testing.assert_close(ours(x)[0], ref(x)[0])


@pytest.mark.parametrize("packed", [False, True])
def test_gru_gradcheck(packed):
    torch.manual_seed(0)
    m = lstm_fused.GRU(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 3, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def f(x, h0, *ps):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, h = torch.func.functional_call(m, dict(zip(names, ps)), (inp, h0))
        return (out.data if packed else out), h

    assert torch.autograd.gradcheck(f, [x, h0, *params])


def _gru_op_args(packed, bias, directions, requires_grad):
    g = torch.Generator().manual_seed(0)

    def t(*s):
        return torch.randn(*s, generator=g).requires_grad_(requires_grad)

    T, B, I, H, D = 4, 3, 5, 6, directions
    bs = torch.tensor([3, 2, 2, 1]) if packed else None
    x = t(int(bs.sum()), I) if packed else t(T, B, I)
    return [x, bs, t(D, B, H), [t(3 * H, I) for _ in range(D)], [t(3 * H, H) for _ in range(D)],
            [t(3 * H) for _ in range(D)] if bias else None, [t(3 * H) for _ in range(D)] if bias else None]


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
def test_gru_opcheck(packed, bias, directions):
    args = _gru_op_args(packed, bias, directions, True)
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, args + [True])
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_fwd.default, _gru_op_args(packed, bias, directions, False)
                          + [False])
    x, bs, h0, w_ih, w_hh, b_ih, b_hh = _gru_op_args(packed, bias, directions, False)
    out, h_n, ws = torch.ops.lstm_fused.gru_layer_fwd.default(x, bs, h0, w_ih, w_hh, b_ih, b_hh, True)
    torch.library.opcheck(torch.ops.lstm_fused.gru_layer_bwd.default,
                          [torch.randn_like(out), torch.randn_like(h_n), x, bs, h0, w_ih, w_hh, out, ws, bias, True])


def test_gru_compile_fullgraph_and_inference_equal_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lstm_fused.GRU(5, 8, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 7, 5)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0], eager[0])
    with torch.no_grad():  # inference keeps no workspace: same bits
        inf = m(x)
    assert torch.equal(inf[0], eager[0]) and torch.equal(inf[1], eager[1])


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
    x, hx = GRU_ERRORS[name]()
    try:
        ref(x, hx)
    except Exception as e:  # noqa: BLE001
        expected = type(e)
    else:
        pytest.fail("nn.GRU accepted the case")
    with pytest.raises(expected):
        ours(x, hx)
    good = torch.randn(4, 2, 3)
    torch.testing.assert_close(ours(good)[0], ref(good)[0], rtol=1e-5, atol=1e-6)


def test_gru_api_and_state_dicts():
    ref, ours = twin_grus(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    assert repr(ours).replace("lstm_fused.", "") == repr(ref)
    assert ours._all_weights == ref._all_weights and ours.mode == "GRU"
    back = nn.GRU(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(back(x)[0], ours(x)[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="proj_size"):  # as nn.GRU
        lstm_fused.GRU(3, 5, proj_size=2)
    with pytest.raises(TypeError):
        lstm_fused.GRU(3, 5, peephole=True)
    with pytest.raises(RuntimeError):  # LSTM weights do not load into a GRU
        ours.load_state_dict(nn.LSTM(3, 5, num_layers=2, bidirectional=True).state_dict())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_gru_cell_parity(bias, batched, with_state):
    torch.manual_seed(0)
    ref = nn.GRUCell(5, 9, bias=bias, dtype=torch.float64)
    torch.manual_seed(0)
    ours = lstm_fused.GRUCell(5, 9, bias=bias, dtype=torch.float64)
    x = torch.randn((4, 5) if batched else (5,), dtype=torch.float64, requires_grad=True)
    h = torch.randn((4, 9) if batched else (9,), dtype=torch.float64, requires_grad=True) if with_state else None
    leaves = [x] + ([h] if with_state else [])
    res = []
    for m in (ref, ours):
        out = m(x, h)
        res.append((out, torch.autograd.grad(out.sin().sum(), leaves + list(m.parameters()))))
    torch.testing.assert_close(res[1][0], res[0][0])
    for a, b in zip(res[1][1], res[0][1]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        ours(torch.randn(2, 3, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError):
        ours(torch.randn(4, 6, dtype=torch.float64))


def test_convert_gru_modules():
    model = nn.Sequential(nn.GRU(3, 4, batch_first=True), nn.ModuleList([nn.GRUCell(4, 4)]))
    params = list(model.parameters())
    lstm_fused.convert(model)
    assert isinstance(model[0], lstm_fused.GRU) and isinstance(model[1][0], lstm_fused.GRUCell)
    assert all(a is b for a, b in zip(model.parameters(), params))


def test_gru_cell_gradcheck_and_compile():
    torch.manual_seed(0)
    cell = lstm_fused.GRUCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in cell.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda x, h, *p: torch.func.functional_call(cell, dict(zip(names, p)), (x, h)), [x, h, *cell.parameters()])
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(cell, fullgraph=True)(x, h), cell(x, h))
