"""lstm_stack_fwd: a stack of unidirectional LSTM layers without projection in one op (what LSTM uses for
num_layers > 1, unidirectional, no proj_size, no dropout in training). On the CPU it is the layer op in a loop,
so its results must be exactly the layer-by-layer results; its autograd (the layer backward, top layer down) is
checked with gradcheck and opcheck; torch.compile takes it whole. The CUDA wavefront is checked in
test_persistent_emulation.py (CPU emulation) and test_cuda_persistent.py (GPU)."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from lstm_fused import ops

stack = torch.ops.lstm_fused.lstm_stack_fwd.default
layer = torch.ops.lstm_fused.lstm_layer_fwd.default


def stack_args(L=3, T=5, B=4, I=6, H=7, packed=False, bias=True, peephole=False, coupled=False, dtype=torch.float64,
               requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*s, scale=0.4):
        return (torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_(requires_grad)

    G = (3 if coupled else 4) * H
    if packed:
        batch_sizes = torch.tensor([B] + [max(1, B - 1 - i) for i in range(T - 1)])
        x = t(int(batch_sizes.sum()), I)
    else:
        batch_sizes, x = None, t(T, B, I)
    return [x, batch_sizes, t(L, B, H), t(L, B, H), [t(G, I if l == 0 else H) for l in range(L)],
            [t(G, H) for _ in range(L)], [t(G) for _ in range(L)] if bias else None,
            [t(G) for _ in range(L)] if bias else None, [t(2 if coupled else 3, H) for _ in range(L)] if peephole else None,
            coupled]


def by_layers(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, need_workspace):
    outs, hns, cns, wss = [], [], [], []
    for l in range(len(w_ih)):
        out, h_n, c_n, ws = layer(x, bs, h0[l:l + 1], c0[l:l + 1], [w_ih[l]], [w_hh[l]],
                                  [b_ih[l]] if b_ih else None, [b_hh[l]] if b_hh else None, None,
                                  [w_ph[l]] if w_ph else None, coupled, need_workspace)
        outs.append(out), hns.append(h_n), cns.append(c_n), wss.append(ws)
        x = out
    return outs, torch.cat(hns), torch.cat(cns), wss


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("variant", [(False, False), (True, False), (False, True)], ids=["lstm", "peephole", "coupled"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("need_workspace", [True, False])
def test_stack_is_the_layer_loop(packed, variant, bias, need_workspace):
    args = stack_args(packed=packed, bias=bias, peephole=variant[0], coupled=variant[1], dtype=torch.float32)
    got = stack(*args, need_workspace)
    exp = by_layers(*args, need_workspace)
    for a, b in zip(got[0] + [got[1], got[2]] + got[3], exp[0] + [exp[1], exp[2]] + exp[3]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("variant", [(False, False), (True, True)], ids=["lstm", "peephole+coupled"])
def test_stack_gradcheck_float64_every_output(packed, variant):
    # All layers' outputs, h_n and c_n feed the loss, so the backward must add an upper layer's input gradient to
    # the gradient a lower layer's output gets directly.
    args = stack_args(L=3, T=4, B=3, I=3, H=4, packed=packed, peephole=variant[0], coupled=variant[1],
                      requires_grad=True)
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled = args
    n = len(w_ih)
    flat = [x, h0, c0, *w_ih, *w_hh, *b_ih, *b_hh, *(w_ph or [])]

    def f(x, h0, c0, *ws):
        wi, wh, bi, bh = ws[:n], ws[n:2 * n], ws[2 * n:3 * n], ws[3 * n:4 * n]
        wp = list(ws[4 * n:]) or None
        outs, h_n, c_n, _ = stack(x, bs, h0, c0, list(wi), list(wh), list(bi), list(bh), wp, coupled, True)
        return (*outs, h_n, c_n)

    assert torch.autograd.gradcheck(f, flat)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("need_workspace", [True, False])
def test_stack_opcheck(packed, need_workspace):
    args = stack_args(L=2, T=4, B=3, I=5, H=6, packed=packed, dtype=torch.float32, requires_grad=need_workspace)
    torch.library.opcheck(stack, args + [need_workspace])


def test_stack_errors():
    args = stack_args(L=2, dtype=torch.float32)
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled = args
    with pytest.raises(RuntimeError, match="one W_ih and one W_hh per layer"):
        stack(x, bs, h0, c0, w_ih, w_hh[:1], b_ih, b_hh, w_ph, coupled, False)
    with pytest.raises(RuntimeError, match=r"\[layers, batch, hidden\]"):
        stack(x, bs, h0[:1], c0[:1], w_ih, w_hh, b_ih, b_hh, w_ph, coupled, False)
    with pytest.raises(RuntimeError):
        stack(x[..., :3], bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled, False)


@pytest.mark.parametrize("kwargs", [dict(num_layers=3), dict(num_layers=2, dropout=0.3), dict(num_layers=2, peephole=True)])
def test_module_uses_the_stack_with_nn_results(kwargs):
    # Eval mode (dropout off) and training without dropout take the stack; results equal nn.LSTM's / the reference.
    torch.manual_seed(0)
    variant = {k: kwargs.pop(k) for k in ("peephole",) if k in kwargs}
    m = lstm_fused.LSTM(5, 8, **kwargs, **variant).eval()
    x = torch.randn(6, 3, 5)
    lengths = torch.tensor([6, 4, 2])
    packed = pack_padded_sequence(x, lengths)
    calls = []
    real = ops.lstm_stack

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    ops.lstm_stack = spy
    try:
        out, (h, c) = m(packed)
    finally:
        ops.lstm_stack = real
    assert calls, "the module did not take the stack op"
    ref_out, (ref_h, ref_c) = lstm_fused.reference.run_lstm(m, packed)
    torch.testing.assert_close(out.data, ref_out.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=1e-6)


def test_stack_compiles_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = lstm_fused.LSTM(5, 8, num_layers=3, batch_first=True)
    x = torch.randn(4, 7, 5, requires_grad=True)
    eager = m(x)
    compiled = torch.compile(m, fullgraph=True)(x)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1][1], eager[1][1])
    g1 = torch.autograd.grad(eager[0].sum(), [x, *m.parameters()])
    g2 = torch.autograd.grad(compiled[0].sum(), [x, *m.parameters()])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("need_grad_input", [False, True])
def test_stack_bwd_opcheck_and_loop(packed, need_grad_input):
    args = stack_args(L=3, T=4, B=3, I=5, H=6, packed=packed, dtype=torch.float32, peephole=True)
    outs, h_n, c_n, wss = stack(*args, True)
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled = args
    bargs = [[torch.randn_like(o) for o in outs], torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih,
             w_hh, w_ph, coupled, outs, wss, True, need_grad_input]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_stack_bwd.default, bargs)
    got = torch.ops.lstm_fused.lstm_stack_bwd.default(*bargs)
    assert (got[0].numel() > 0) == need_grad_input
    assert len(got[3]) == len(got[4]) == len(got[5]) == len(got[6]) == 3


def test_stack_double_backward_raises():
    args = stack_args(L=2, T=3, B=2, I=3, H=4, requires_grad=True)
    out, h_n, c_n = ops.lstm_stack(*args)
    (g,) = torch.autograd.grad(out.sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("trainable", [("_l2",), ("_l1", "_l2"), ("_l0",), ()])
def test_frozen_lower_layers_match_nn_and_are_skipped(trainable):
    # Gradients equal nn.LSTM's whichever layers are frozen; the stack backward starts at the lowest layer that
    # needs one (input and initial states do not need gradients here).
    torch.manual_seed(0)
    ref = torch.nn.LSTM(8, 16, num_layers=3, dtype=torch.float64)
    m = lstm_fused.LSTM(8, 16, num_layers=3, dtype=torch.float64)
    m.load_state_dict(ref.state_dict())
    for mod in (ref, m):
        for name, p in mod.named_parameters():
            p.requires_grad_(name.endswith(trainable) if trainable else True)
    x = torch.randn(5, 4, 8, dtype=torch.float64)
    g1 = torch.autograd.grad(ref(x)[0].square().sum(), [p for p in ref.parameters() if p.requires_grad])
    g2 = torch.autograd.grad(m(x)[0].square().sum(), [p for p in m.parameters() if p.requires_grad])
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # ctx.needs_input_grad of lstm_stack_fwd: input, batch_sizes, h0, c0, then one flag per layer for each list.
    needs = [False, False, False, False] + [[(f"_l{l}" in trainable) if trainable else True for l in range(3)]
                                            for _ in range(5)]
    expected = min([int(t[-1]) for t in trainable], default=0) if trainable else 0
    assert ops._first_layer_needing_grad(needs, 3) == expected
    assert ops._first_layer_needing_grad([True] + needs[1:], 3) == 0  # the input's gradient needs every layer


def test_stack_bwd_empty_output_gradient_means_zero():
    args = stack_args(L=3, T=4, B=3, I=5, H=6, dtype=torch.float64)
    outs, h_n, c_n, wss = stack(*args, True)
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled = args
    rest = [torch.randn_like(h_n), torch.randn_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_ph, coupled, outs, wss, True,
            True]
    top = torch.randn_like(outs[-1])
    for grads in ([outs[0].new_empty(0), outs[1].new_empty(0), top], [outs[0].new_empty(0)] * 3):
        zeros = [torch.zeros_like(o) if g.numel() == 0 else g for o, g in zip(outs, grads)]
        got = torch.ops.lstm_fused.lstm_stack_bwd.default(grads, *rest)
        exp = torch.ops.lstm_fused.lstm_stack_bwd.default(zeros, *rest)
        flat_got = [got[0], got[1], got[2], *got[3], *got[4], *got[5]]
        flat_exp = [exp[0], exp[1], exp[2], *exp[3], *exp[4], *exp[5]]
        for a, b in zip(flat_got, flat_exp):
            assert torch.equal(a, b)
    empty_lower = [outs[0].new_empty(0), outs[1].new_empty(0), top]
    torch.library.opcheck(torch.ops.lstm_fused.lstm_stack_bwd.default, [empty_lower, *rest])
