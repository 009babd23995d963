"""Peephole and coupled-gate LSTMs: the kernels against lstm_fused.reference (itself checked against nn.LSTM
where the variants reduce to it), gradients of every parameter, gradcheck, compile and the parameter layout."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import BACKENDS, on_backend
from lstm_fused import reference

VARIANTS = [dict(peephole=True), dict(coupled=True), dict(peephole=True, coupled=True)]
VARIANT_IDS = ["peephole", "coupled", "peephole+coupled"]


def test_reference_coupled_equals_nn_lstm_with_negated_forget_weights():
    # f = σ(−a_i) = 1 − σ(a_i): an nn.LSTM whose forget rows are the negated input rows is a coupled LSTM.
    torch.manual_seed(0)
    H = 5
    cpl = lstm_fused.LSTM(3, H, num_layers=2, coupled=True, dtype=torch.float64)
    ref = nn.LSTM(3, H, num_layers=2, dtype=torch.float64)
    with torch.no_grad():
        for name, p in cpl.named_parameters():
            i, g, o = p.chunk(3, dim=0)
            getattr(ref, name).copy_(torch.cat([i, -i, g, o]))
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    out, (h, c) = ref(x)
    r_out, (r_h, r_c) = reference.run_lstm(cpl, x)
    for a, b in ((r_out, out), (r_h, h), (r_c, c)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_reference_zero_peepholes_equal_nn_lstm():
    torch.manual_seed(0)
    peep = lstm_fused.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, peephole=True, dtype=torch.float64)
    ref = nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    with torch.no_grad():
        for name, p in peep.named_parameters():
            if name.startswith("weight_ph"):
                p.zero_()
            else:
                getattr(ref, name).copy_(p)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    for a, b in zip(reference.run_lstm(peep, x)[1], ref(x)[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and the fused kernels agree too
    for a, b in zip(peep(x)[1], ref(x)[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


STRUCTURES = list(itertools.product([1, 2], [False, True], [0, 3], [False, True], [False, True]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("structure", STRUCTURES, ids=str)
def test_variant_kernels_match_reference(backend, variant, structure):
    num_layers, bidirectional, proj, batch_first, packed = structure
    with on_backend(backend) as device:
        torch.manual_seed(1)
        m = lstm_fused.LSTM(4, 7, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj,
                            batch_first=batch_first, dtype=torch.float64, **variant).to(device)
        D = 2 if bidirectional else 1
        x = torch.randn((5, 9, 4) if batch_first else (9, 5, 4), dtype=torch.float64).to(device).requires_grad_()
        h0 = torch.randn(num_layers * D, 5, proj or 7, dtype=torch.float64).to(device).requires_grad_()
        c0 = torch.randn(num_layers * D, 5, 7, dtype=torch.float64).to(device).requires_grad_()
        inp = pack_padded_sequence(x, torch.tensor([9, 3, 6, 1, 9]), batch_first=batch_first,
                                   enforce_sorted=False) if packed else x
        results = []
        for run in (m, lambda i, hx: reference.run_lstm(m, i, hx)):
            out, (h, c) = run(inp, (h0, c0))
            data = out.data if packed else out
            g = torch.Generator().manual_seed(2)
            loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype).to(device)).sum() for t in (data, h, c))
            results.append([data, h, c, *torch.autograd.grad(loss, [x, h0, c0, *m.parameters()], retain_graph=True)])
    names = ["output", "h_n", "c_n", "grad x", "grad h0", "grad c0"] + [f"grad {n}" for n, _ in m.named_parameters()]
    for name, a, b in zip(names, *results):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("packed", [False, True])
def test_variant_wide_layer_matches_reference(backend, variant, packed):
    # H 33 crosses the kernels' 32-unit tiles; then a fast gradcheck of every parameter (~9k).
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = lstm_fused.LSTM(6, 33, num_layers=2, bidirectional=True, proj_size=5, dtype=torch.float64, **variant)
        x = torch.randn(11, 9, 6, dtype=torch.float64)
        lengths = torch.tensor([11, 3, 7, 1, 11, 5, 9, 2, 6])
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        ref_out, (ref_h, ref_c) = reference.run_lstm(m, inp)
        m = m.to(device)
        inp = pack_padded_sequence(x.to(device), lengths, enforce_sorted=False) if packed else x.to(device)
        out, (h, c) = m(inp)
        d_out, d_ref = (out.data, ref_out.data) if packed else (out, ref_out)
        for a, b in ((d_out, d_ref), (h, ref_h), (c, ref_c)):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)
        names = [n for n, _ in m.named_parameters()]
        assert torch.autograd.gradcheck(
            lambda *ps: torch.func.functional_call(m, dict(zip(names, ps)), (inp,))[1][0],
            [p.detach().clone().requires_grad_() for p in m.parameters()], fast_mode=True)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_variant_float32_matches_float64_reference(variant):
    torch.manual_seed(0)
    m = lstm_fused.LSTM(16, 40, num_layers=2, bidirectional=True, **variant)
    x = torch.randn(30, 8, 16)
    out, (h, c) = m(x)
    m64 = lstm_fused.LSTM(16, 40, num_layers=2, bidirectional=True, dtype=torch.float64, **variant)
    m64.load_state_dict(m.state_dict())
    r_out, (r_h, r_c) = reference.run_lstm(m64, x.double())
    for a, b in ((out, r_out), (h, r_h), (c, r_c)):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_variant_gradcheck(backend, variant):
    with on_backend(backend) as device:
        torch.manual_seed(0)
        m = lstm_fused.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64,
                            **variant).to(device)
        names = [n for n, _ in m.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in m.parameters()]
        x = torch.randn(5, 3, 3, dtype=torch.float64).to(device).requires_grad_()
        lengths = torch.tensor([5, 2, 4])

        def f(x, *ps):
            out, (h, c) = torch.func.functional_call(m, dict(zip(names, ps)),
                                                     (pack_padded_sequence(x, lengths, enforce_sorted=False),))
            return out.data, h, c

        assert torch.autograd.gradcheck(f, [x, *params])


def test_variant_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lstm_fused.LSTM(5, 8, num_layers=2, bidirectional=True, peephole=True, coupled=True, batch_first=True)
    x = torch.randn(4, 7, 5)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1][1], eager[1][1])


def test_variant_parameter_layout_and_state_dicts():
    torch.manual_seed(3)
    m = lstm_fused.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, peephole=True, coupled=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    assert shapes["weight_ih_l0"] == (18, 3) and shapes["weight_hh_l1_reverse"] == (18, 2)
    assert shapes["bias_ih_l1"] == (18,) and shapes["weight_hr_l0"] == (2, 6)
    assert shapes["weight_ph_l0"] == (2, 6) and shapes["weight_ph_l1_reverse"] == (2, 6)
    assert list(shapes)[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0", "weight_hr_l0",
                                "weight_ph_l0"]
    assert lstm_fused.LSTM(3, 6, peephole=True).weight_ph_l0.shape == (3, 6)
    bound = 6 ** -0.5
    assert all(p.abs().max() <= bound for p in m.parameters())
    assert "peephole=True" in repr(m) and "coupled=True" in repr(m)
    plain = nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    with pytest.raises(RuntimeError):  # a plain LSTM's weights do not silently load into a variant
        m.load_state_dict(plain.state_dict())
    with pytest.raises(RuntimeError):
        lstm_fused.LSTM(3, 6, peephole=True).load_state_dict(nn.LSTM(3, 6).state_dict())
    with pytest.raises(TypeError):
        lstm_fused.LSTM(3, 6, peephole=1)
    with pytest.raises(TypeError):
        lstm_fused.LSTM(3, 6, 1, True, False, 0.0, False, 0, None, None, True)  # keyword-only flags
