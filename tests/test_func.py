"""torch.func transforms over models holding lstm_fused modules: grad, vjp, jacrev and vmap equal nn's (or a
per-sample loop) through the same transform; forward-mode AD fails with an error naming lstm_fused."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

import lstm_fused

CONFIGS = [
    ("lstm_2l_bi", lambda m: m.LSTM(3, 4, num_layers=2, bidirectional=True), (5, 2, 3)),
    ("lstm_stack", lambda m: m.LSTM(3, 4, num_layers=2), (5, 2, 3)),
    ("lstm_proj_bf", lambda m: m.LSTM(3, 5, proj_size=2, batch_first=True), (2, 5, 3)),
    ("gru_bi", lambda m: m.GRU(3, 4, bidirectional=True), (5, 2, 3)),
    ("lstm_cell", lambda m: m.LSTMCell(3, 4), (2, 3)),
    ("gru_cell", lambda m: m.GRUCell(3, 4), (2, 3)),
]
IDS = [c[0] for c in CONFIGS]


def _first(result):
    return result[0] if isinstance(result, tuple) else result


def _twins(make, dtype=torch.float64):
    torch.manual_seed(0)
    ref = make(nn).to(dtype)
    ours = make(lstm_fused).to(dtype)
    ours.load_state_dict(ref.state_dict())
    params = {k: v.detach() for k, v in ref.named_parameters()}
    return ref, ours, params


def _loss(module):
    def f(params, x):
        out = _first(functional_call(module, params, (x,)))
        return (out * out).sum() + out.sum()
    return f


@pytest.mark.parametrize("name,make,shape", CONFIGS, ids=IDS)
def test_grad_matches_nn(name, make, shape):
    ref, ours, params = _twins(make)
    x = torch.randn(shape, dtype=torch.float64)
    expected = grad(_loss(ref), argnums=(0, 1))(params, x)
    got = grad(_loss(ours), argnums=(0, 1))(params, x)
    for k in params:
        torch.testing.assert_close(got[0][k], expected[0][k], msg=k)
    torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("name,make,shape", CONFIGS, ids=IDS)
def test_vjp_and_jacrev_match_nn(name, make, shape):
    ref, ours, params = _twins(make)
    x = torch.randn(shape, dtype=torch.float64)

    def run(module):
        return lambda xx: _first(functional_call(module, params, (xx,)))

    out_r, vjp_r = vjp(run(ref), x)
    out_o, vjp_o = vjp(run(ours), x)
    torch.testing.assert_close(out_o, out_r)
    cot = torch.randn_like(out_r)
    torch.testing.assert_close(vjp_o(cot)[0], vjp_r(cot)[0])
    torch.testing.assert_close(jacrev(run(ours))(x), jacrev(run(ref))(x))
    # Jacobian with respect to the parameters too (vmap over the backward op).
    jac_o = jacrev(lambda p: _first(functional_call(ours, p, (x,))).sum(-1))(params)
    jac_r = jacrev(lambda p: _first(functional_call(ref, p, (x,))).sum(-1))(params)
    for k in params:
        torch.testing.assert_close(jac_o[k], jac_r[k], msg=k)


@pytest.mark.parametrize("name,make,shape", CONFIGS, ids=IDS)
def test_vmap_equals_per_sample_loop(name, make, shape):
    _, ours, params = _twins(make)
    xs = torch.randn(3, *shape, dtype=torch.float64)

    def f(xx):
        return _first(functional_call(ours, params, (xx,)))

    torch.testing.assert_close(vmap(f)(xs), torch.stack([f(xx) for xx in xs]))
    # Per-sample gradients: vmap over grad.
    per_sample = vmap(grad(_loss(ours)), in_dims=(None, 0))(params, xs)
    for i in range(3):
        one = grad(_loss(ours))(params, xs[i])
        for k in params:
            torch.testing.assert_close(per_sample[k][i], one[k], msg=k)


def test_forward_mode_names_lstm_fused():
    _, ours, params = _twins(CONFIGS[0][1])
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="lstm_fused: forward-mode AD"):
        jvp(lambda xx: ours(xx)[0], (x,), (torch.ones_like(x),))


def test_functionalize_keeps_the_ops():
    """functionalize (and make_fx over it) sees the ops as they are, as torch.export does."""
    from torch.fx.experimental.proxy_tensor import make_fx

    _, ours, _ = _twins(CONFIGS[0][1])
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    f = torch.func.functionalize(lambda xx: ours(xx)[0])
    torch.testing.assert_close(f(x), ours(x)[0])
    targets = {str(n.target) for n in make_fx(f)(x).graph.nodes if n.op == "call_function"}
    assert "lstm_fused.lstm_stack_fwd.default" in targets or "lstm_fused.lstm_layer_fwd.default" in targets, targets
