"""Layer norm in the fused layer ops (haste's LayerNormLSTM / LayerNormGRU, in nn's layout): lstm_layer and gru_layer
with layer_norm parameters against a step-by-step loop over lstm_fused.reference's cells, float64, outputs, final
states and every gradient (the gains and c's bias included), padded and packed, one and two directions, every LSTM
variant, a projection, with and without zoneout; gradcheck; inference equals training's forward; the results do not
depend on the thread count; bad parameters are clear errors; the CUDA path says it does not run it yet."""
import pytest
import torch

from helpers import (grad_leaves, gru_layer_args, layer_args, op_results, reference_gru_layer, reference_lstm_layer,
                     requires_testing_ops, requiring_grad)
from lstm_fused import ops

F64 = torch.float64
CASES = [  # T, B, I, H, proj
    (1, 1, 1, 1, 0),
    (5, 3, 4, 6, 0),
    (6, 4, 3, 7, 3),
    (9, 5, 4, 33, 0),
]


def _ln_params(widths, directions, seed):
    """Per direction one tensor per width: gains near 1, c's bias (the fourth, LSTM) near 0, leaves requiring grad."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(directions):
        for k, w in enumerate(widths):
            t = torch.randn(w, generator=g, dtype=F64) * 0.3 + (0.0 if k == 3 else 1.0)
            out.append(t.requires_grad_())
    return out


def _lstm(case, packed, directions, variant, seed):
    T, B, I, H, proj = case
    args = requiring_grad(layer_args(T, B, I, H, proj, packed, F64, seed, directions, *variant))
    G = (3 if variant[1] else 4) * H
    return args, _ln_params((G, G, H, H), directions, seed + 7), (args[0].shape[0] if packed else T * B), proj or H


def _masks(directions, rows, widths, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(directions, rows, w, generator=g) < 0.4).to(F64) for w in widths]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["lstm", "peephole", "coupled", "peephole+coupled"])
@pytest.mark.parametrize("zoneout", [False, True], ids=["", "zoneout"])
def test_lstm_layer_norm_matches_reference(case, packed, directions, variant, zoneout):
    args, ln, rows, P = _lstm(case, packed, directions, variant, seed=sum(case) + directions)
    zo = _masks(directions, rows, (P, case[3]), seed=3) if zoneout else (None, None)
    leaves = grad_leaves(args) + ln
    expected = op_results(reference_lstm_layer(*args, *zo, ln=ln), leaves)
    actual = op_results(ops.lstm_layer(*args, zoneout_h=zo[0], zoneout_c=zo[1], layer_norm=ln), leaves)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("zoneout", [False, True], ids=["", "zoneout"])
def test_gru_layer_norm_matches_reference(case, packed, directions, bias, zoneout):
    T, B, I, H, _ = case
    args = requiring_grad(gru_layer_args(T, B, I, H, packed, F64, sum(case) + directions, directions, bias))
    ln = _ln_params((3 * H, 3 * H), directions, seed=sum(case))
    zo_h = _masks(directions, args[0].shape[0] if packed else T * B, (H,), seed=4)[0] if zoneout else None
    leaves = grad_leaves(args) + ln
    expected = op_results(reference_gru_layer(*args, zo_h, ln), leaves)
    actual = op_results(ops.gru_layer(*args, zoneout_h=zo_h, layer_norm=ln), leaves)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("packed", [False, True])
def test_layer_norm_gradcheck(packed):
    args, ln, rows, P = _lstm((4, 3, 3, 4, 2), packed, 2, (True, False), seed=3)
    zo = _masks(2, rows, (P, 4), seed=5)
    leaves = grad_leaves(args)

    def lstm(*flat):
        it = iter(flat)
        rebuilt = [a if not isinstance(a, (torch.Tensor, list)) or (isinstance(a, torch.Tensor) and not a.requires_grad)
                   else ([next(it) for _ in a] if isinstance(a, list) else next(it)) for a in args]
        return ops.lstm_layer(*rebuilt, zoneout_h=zo[0], zoneout_c=zo[1], layer_norm=list(it))

    assert torch.autograd.gradcheck(lstm, leaves + ln)
    gargs = requiring_grad(gru_layer_args(4, 3, 3, 5, packed, F64, 2, 2, True))
    gln = _ln_params((15, 15), 2, seed=1)

    def gru(*flat):
        x, h0, *rest = flat
        w_ih, w_hh, b_ih, b_hh, gammas = rest[0:2], rest[2:4], rest[4:6], rest[6:8], rest[8:]
        return ops.gru_layer(x, gargs[1], h0, list(w_ih), list(w_hh), list(b_ih), list(b_hh), layer_norm=list(gammas))

    assert torch.autograd.gradcheck(gru, grad_leaves(gargs) + gln)


def test_inference_equals_training_forward_bit_for_bit():
    # Inference keeps no workspace (a chunk's scratch instead): the same rows are normalised the same way.
    args, ln, rows, P = _lstm((7, 4, 5, 6, 3), True, 2, (True, True), seed=2)
    with torch.no_grad():
        inference = ops.lstm_layer(*args, layer_norm=ln)
    training = ops.lstm_layer(*args, layer_norm=ln)
    assert all(torch.equal(a, b) for a, b in zip(inference, training))
    gargs = requiring_grad(gru_layer_args(7, 4, 5, 6, True, F64, 2, 2, True))
    gln = _ln_params((18, 18), 2, seed=1)
    with torch.no_grad():
        inference = ops.gru_layer(*gargs, layer_norm=gln)
    assert all(torch.equal(a, b) for a, b in zip(inference, ops.gru_layer(*gargs, layer_norm=gln)))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_results_do_not_depend_on_the_thread_count(dtype):
    # The row reductions of the layer norms run in a fixed order whatever thread takes the row.
    args, ln, rows, P = _lstm((6, 40, 8, 24, 0), False, 2, (False, False), seed=9)
    args = [[t.detach().to(dtype).requires_grad_() for t in a] if isinstance(a, list) else
            (a.detach().to(dtype).requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a)
            for a in args]
    ln = [t.detach().to(dtype).requires_grad_() for t in ln]
    saved = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = ops.lstm_layer(*args, layer_norm=ln)
            runs.append([*out, *torch.autograd.grad(sum(t.sum() for t in out), grad_leaves(args) + ln)])
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("bad", ["count", "shape", "dtype"])
def test_bad_parameters_are_clear_errors(bad):
    args, ln, rows, P = _lstm((3, 2, 3, 4, 0), False, 1, (False, False), seed=1)
    ln = [t.detach() for t in ln]
    if bad == "count":
        ln, match = ln[:3], "expected 4 layer_norm tensors"
    elif bad == "shape":
        ln[1], match = torch.ones(5, dtype=F64), "layer_norm parameter"
    else:
        ln[2], match = ln[2].float(), "layer_norm parameter has dtype"
    with pytest.raises(RuntimeError, match=match):
        ops.lstm_layer(*args, layer_norm=ln)


@requires_testing_ops
def test_the_cuda_path_refuses_layer_norm_until_it_runs_it():
    # Not silently ignored: the CUDA driver (here emulated) says it has no layer norm yet, for LSTM and GRU.
    args, ln, rows, P = _lstm((3, 2, 3, 4, 0), False, 1, (False, False), seed=1)
    plain = [[t.detach() for t in a] if isinstance(a, list) else (a.detach() if isinstance(a, torch.Tensor) else a)
             for a in args]
    with pytest.raises(RuntimeError, match="layer_norm is not yet implemented on the CUDA path"):
        torch.ops.lstm_fused_testing.emu_lstm_layer_fwd(*plain, False, None, None, [t.detach() for t in ln])
    x, bs, h0 = plain[:3]
    w = [torch.randn(12, 3, dtype=F64)], [torch.randn(12, 4, dtype=F64)]
    with pytest.raises(RuntimeError, match="layer_norm is not yet implemented on the CUDA path"):
        torch.ops.lstm_fused_testing.emu_gru_layer_fwd(x, bs, h0, *w, None, None, False, None,
                                                       [torch.ones(12, dtype=F64)] * 2)
