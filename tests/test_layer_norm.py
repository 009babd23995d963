"""Layer norm in the fused layer ops (haste's LayerNormLSTM / LayerNormGRU, in nn's layout), on every backend (the CPU
kernels; the CUDA path's GEMM-step kernels, emulated on the CPU and on a GPU): lstm_layer and gru_layer with layer_norm
parameters against a step-by-step loop over lstm_fused.reference's cells, float64, outputs, final states and every
gradient (the gains and c's bias included), padded and packed, one and two directions, every LSTM variant, a
projection, with and without zoneout; gradcheck; inference equals training's forward; the results do not depend on the
thread count; bad parameters are clear errors; the CUDA path refuses a forced kernel without layer norm. Then the
modules' layer_norm=True: against lstm_fused.reference with every other option, on every backend, parameters (names,
order, initial values, the others' draws unchanged), state dicts, TorchScript, torch.compile and torch.export."""
import contextlib

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused
from helpers import (assert_scripted_equals_eager, cell_and_reference_results, grad_leaves, gru_layer_args, layer_args,
                     on_backend, op_args_on, op_results, paths_taken, reference_gru_layer, reference_lstm_layer,
                     requiring_grad)
from lstm_fused import ops, reference

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


BACKENDS = ["cpu", "emulated_cuda", "cuda"]


def _run_on(backend, op, args, ln, leaves_of, **masks):
    """op(*args, layer_norm=ln, **masks) on `backend` (the CUDA path: checking its GEMM-step kernels ran), and
    op_results of it over the moved arguments' leaves and gains."""
    with on_backend(backend) as device:
        ours, gains = op_args_on(args, device), op_args_on(ln, device)
        moved = {k: (m.to(device) if m is not None else None) for k, m in masks.items()}
        with paths_taken() if backend != "cpu" else contextlib.nullcontext({}) as taken:
            results = op_results(op(*ours, layer_norm=gains, **moved), leaves_of(ours) + gains)
    if backend != "cpu":
        assert taken["gemm_step"] > 0 and taken["step"] == taken["persistent"] == 0, taken
    return results


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["lstm", "peephole", "coupled", "peephole+coupled"])
@pytest.mark.parametrize("zoneout", [False, True], ids=["", "zoneout"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_layer_norm_matches_reference(case, packed, directions, variant, zoneout, backend):
    args, ln, rows, P = _lstm(case, packed, directions, variant, seed=sum(case) + directions)
    zo = _masks(directions, rows, (P, case[3]), seed=3) if zoneout else (None, None)
    expected = op_results(reference_lstm_layer(*args, *zo, ln=ln), grad_leaves(args) + ln)
    actual = _run_on(backend, ops.lstm_layer, args, ln, grad_leaves, zoneout_h=zo[0], zoneout_c=zo[1])
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("zoneout", [False, True], ids=["", "zoneout"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_layer_norm_matches_reference(case, packed, directions, bias, zoneout, backend):
    T, B, I, H, _ = case
    args = requiring_grad(gru_layer_args(T, B, I, H, packed, F64, sum(case) + directions, directions, bias))
    ln = _ln_params((3 * H, 3 * H), directions, seed=sum(case))
    zo_h = _masks(directions, args[0].shape[0] if packed else T * B, (H,), seed=4)[0] if zoneout else None
    expected = op_results(reference_gru_layer(*args, zo_h, ln), grad_leaves(args) + ln)
    actual = _run_on(backend, ops.gru_layer, args, ln, grad_leaves, zoneout_h=zo_h)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"result {i}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_longer_than_a_block(backend):
    # H = 260: every norm's row (4H, 3H and H values) is longer than the CUDA row kernels' 256 threads, so each thread
    # sums and writes several elements of it.
    args, ln, rows, P = _lstm((3, 2, 3, 260, 0), True, 2, (True, False), seed=6)
    zo = _masks(2, rows, (P, 260), seed=7)
    expected = op_results(reference_lstm_layer(*args, *zo, ln=ln), grad_leaves(args) + ln)
    actual = _run_on(backend, ops.lstm_layer, args, ln, grad_leaves, zoneout_h=zo[0], zoneout_c=zo[1])
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"LSTM result {i}")
    gargs = requiring_grad(gru_layer_args(3, 2, 3, 260, True, F64, 6, 2, True))
    gln = _ln_params((780, 780), 2, seed=6)
    expected = op_results(reference_gru_layer(*gargs, None, gln), grad_leaves(gargs) + gln)
    actual = _run_on(backend, ops.gru_layer, gargs, gln, grad_leaves)
    for i, (a, b) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11, msg=f"GRU result {i}")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "emulated_cuda"])
def test_layer_norm_gradcheck(packed, backend):
    with on_backend(backend):
        _gradcheck(packed)


def _gradcheck(packed):
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_equals_training_forward_bit_for_bit(backend):
    # Inference keeps no workspace (the CPU: a chunk's scratch; the CUDA path: two steps' rows, x̂_ih in place): the
    # same rows are normalised the same way.
    with on_backend(backend) as device:
        _inference_equals_training(device)


def _inference_equals_training(device):
    args, ln, rows, P = _lstm((7, 4, 5, 6, 3), True, 2, (True, True), seed=2)
    args, ln = op_args_on(args, device), op_args_on(ln, device)
    with torch.no_grad():
        inference = ops.lstm_layer(*args, layer_norm=ln)
    training = ops.lstm_layer(*args, layer_norm=ln)
    assert all(torch.equal(a, b) for a, b in zip(inference, training))
    gargs = op_args_on(requiring_grad(gru_layer_args(7, 4, 5, 6, True, F64, 2, 2, True)), device)
    gln = op_args_on(_ln_params((18, 18), 2, seed=1), device)
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


def _on(args, device, dtype):
    """The op arguments on `device` in `dtype` (floating tensors; new leaves where the originals require grad)."""
    def one(a):
        if not isinstance(a, torch.Tensor) or not a.is_floating_point():
            return a
        return a.detach().to(device, dtype).requires_grad_(a.requires_grad)

    return [[one(t) for t in a] if isinstance(a, list) else one(a) for a in args]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lower_precision_on_a_gpu_tracks_float64(dtype):
    # Accumulate-type math on the GPU (float for the half types, the norms' sums included): outputs and every gradient
    # near the float64 reference, at a tolerance per dtype.
    tol = {torch.float32: 1e-4, torch.bfloat16: 8e-2, torch.float16: 1e-2}[dtype]
    args, ln, rows, P = _lstm((6, 5, 8, 40, 0), True, 2, (True, False), seed=4)
    gargs = requiring_grad(gru_layer_args(6, 5, 8, 40, True, F64, 4, 2, True))
    gln = _ln_params((120, 120), 2, seed=4)
    cases = [(ops.lstm_layer, args, ln, reference_lstm_layer(*args, None, None, ln=ln)),
             (ops.gru_layer, gargs, gln, reference_gru_layer(*gargs, None, gln))]
    with on_backend("cuda") as device:
        for op, a, g, ref in cases:
            expected = op_results(ref, grad_leaves(a) + g)
            ours, gains = _on(a, device, dtype), _on(g, device, dtype)
            actual = op_results(op(*ours, layer_norm=gains), grad_leaves(ours) + gains)
            for i, (x, y) in enumerate(zip(actual, expected, strict=True)):
                torch.testing.assert_close(x.double(), y, rtol=tol, atol=tol * max(1.0, y.abs().max().item()),
                                           msg=f"{op.__name__} result {i}")


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


@pytest.mark.parametrize("algo", ["step", "persistent"])
@pytest.mark.parametrize("backend", ["emulated_cuda", "cuda"])
def test_a_forced_kernel_without_layer_norm_is_a_clear_error(algo, backend, monkeypatch):
    # Layer norm runs on the GEMM-step kernels only (its norms take whole rows, which the others split between blocks):
    # forcing another is an error, not a silent switch; LSTM_FUSED_CUDA_ALGO=gemm and the automatic choice run it.
    args, ln, rows, P = _lstm((3, 2, 3, 4, 0), False, 1, (False, False), seed=1)
    gargs = gru_layer_args(3, 2, 3, 4, False, F64, 1, 1, True)
    gln = _ln_params((12, 12), 1, seed=1)
    with on_backend(backend) as device:
        ops.lstm_layer(*op_args_on(args, device), layer_norm=op_args_on(ln, device))  # (on_backend: the CUDA path ran)
        monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "gemm")
        ops.gru_layer(*op_args_on(gargs, device), layer_norm=op_args_on(gln, device))
        monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)
        with pytest.raises(RuntimeError, match=f"LSTM_FUSED_CUDA_ALGO={algo}, but layer_norm runs on the gemm path"):
            ops.lstm_layer(*op_args_on(args, device), layer_norm=op_args_on(ln, device))
        with pytest.raises(RuntimeError, match=f"LSTM_FUSED_CUDA_ALGO={algo}, but layer_norm runs on the gemm path"):
            ops.gru_layer(*op_args_on(gargs, device), layer_norm=op_args_on(gln, device))


# ---- the modules' layer_norm=True ----------------------------------------------------------------------------------
# (num_layers, bidirectional, proj_size, input, other options): as tests/test_regularisers.py's structures, with the
# variants and the regularising options on some.
MODULE_CASES = [(1, False, 0, "padded", {}), (2, True, 0, "packed", {"peephole": True}),
                (3, False, 0, "batch_first", {"zoneout": 0.2, "zoneout_cell": 0.3}),
                (2, False, 3, "packed", {"coupled": True, "weight_drop": 0.3}),
                (2, True, 2, "unbatched", {"peephole": True, "coupled": True, "zoneout": 0.3})]


def _perturb_ln(m):
    # Away from their initial ones and zeros, so a gain or bias read wrongly shows.
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "_ln_" in name:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) * 0.3)


def _gru_options(options):
    return {k: v for k, v in options.items() if k in ("zoneout", "weight_drop")}


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_reference(cls, case, training, backend):
    with on_backend(backend) as device:
        _module_matches_reference(cls, case, training, device)


def _module_matches_reference(cls, case, training, device):
    num_layers, bidirectional, proj, kind, options = case
    if cls == "GRU" and proj:
        pytest.skip("GRU has no projection")
    options = options if cls == "LSTM" else _gru_options(options)
    extra = dict(proj_size=proj) if proj else {}
    torch.manual_seed(0)
    m = getattr(lstm_fused, cls)(4, 7, num_layers=num_layers, bidirectional=bidirectional, dtype=F64, device=device,
                                 batch_first=kind == "batch_first", layer_norm=True, **options, **extra)
    _perturb_ln(m)
    m.train(training)
    x = torch.randn({"batch_first": (5, 9, 4), "unbatched": (9, 4)}.get(kind, (9, 5, 4)), dtype=F64).to(device)
    x.requires_grad_()
    inp = pack_padded_sequence(x, torch.tensor([9, 3, 6, 1, 9]), enforce_sorted=False) if kind == "packed" else x
    run_ref = reference.run_lstm if cls == "LSTM" else reference.run_gru
    results = []
    for run in (m, lambda i: run_ref(m, i)):
        torch.manual_seed(5)
        out, state = run(inp)
        data = out.data if kind == "packed" else out
        outs = [data, *(state if isinstance(state, tuple) else (state,))]
        g = torch.Generator().manual_seed(2)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=F64).to(device)).sum() for t in outs)
        results.append([*outs, *torch.autograd.grad(loss, [x, *m.parameters()], retain_graph=True)])
    names = ["output", "h_n", "c_n"][:2 + (cls == "LSTM")] + ["grad x"] + [f"grad {n}" for n, _ in m.named_parameters()]
    for name, a, b in zip(names, *results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell"])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("options", [{}, {"zoneout": 0.3, "weight_drop": 0.2}], ids=["", "regularised"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_matches_reference(cls, batched, options, backend):
    with on_backend(backend) as device:
        _cell_matches_reference(cls, batched, options, device)


def _cell_matches_reference(cls, batched, options, device):
    torch.manual_seed(0)
    m = getattr(lstm_fused, cls)(4, 6, dtype=F64, device=device, layer_norm=True, **options)
    _perturb_ln(m)
    x, h, c = (torch.randn(shape, dtype=F64).to(device).requires_grad_()
               for shape in ((3, 4) if batched else (4,), (3, 6) if batched else (6,), (3, 6) if batched else (6,)))
    hx = (h, c) if cls == "LSTMCell" else h
    for a, b in zip(*cell_and_reference_results(m, x, hx, [x, h, c]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("make", [lambda **kw: lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3,
                                                              peephole=True, **kw),
                                  lambda **kw: lstm_fused.GRU(4, 6, num_layers=2, **kw),
                                  lambda **kw: lstm_fused.LSTMCell(4, 6, **kw),
                                  lambda **kw: lstm_fused.GRUCell(4, 6, **kw)], ids=["lstm", "gru", "lstm-cell", "gru-cell"])
def test_parameters_names_order_and_initialisation(make):
    torch.manual_seed(0)
    plain = make()
    torch.manual_seed(0)
    ln = make(layer_norm=True)
    assert "layer_norm=True" in repr(ln) and "layer_norm" not in repr(plain)
    names = [n for n, _ in ln.named_parameters()]
    plain_names = [n for n, _ in plain.named_parameters()]
    # Each layer's (and direction's) layer-norm parameters follow its own; the others keep nn's order and draws.
    assert [n for n in names if "_ln_" not in n] == plain_names
    assert all(torch.equal(getattr(ln, n), getattr(plain, n)) for n in plain_names)
    lstm = isinstance(ln, (lstm_fused.LSTM, lstm_fused.LSTMCell))
    kinds = ["weight_ln_ih", "weight_ln_hh"] + (["weight_ln_c", "bias_ln_c"] if lstm else [])
    cell = isinstance(ln, (lstm_fused.LSTMCell, lstm_fused.GRUCell))
    groups = [[""]] if cell else [[f"_l{k}{s}"] for k in range(2) for s in (("", "_reverse") if ln.bidirectional
                                                                               else ("",))]
    for (suffix,) in groups:
        own = [n for n in plain_names if n.endswith(suffix)]  # this layer and direction's own parameters
        ln_names = [kind + suffix for kind in kinds]
        at = names.index(ln_names[0])
        assert names[at:at + len(kinds)] == ln_names and names[at - 1] == own[-1]
        gates = getattr(ln, ln_names[0]).shape[0]
        assert gates == (4 if lstm else 3) * 6
        for name in ln_names:
            p = getattr(ln, name)
            assert torch.equal(p, torch.zeros_like(p) if name.startswith("bias") else torch.ones_like(p)), name
    # The state dict round-trips.
    _perturb_ln(ln)
    again = make(layer_norm=True)
    again.load_state_dict(ln.state_dict())
    args = (torch.randn(3, 4),) if cell else (torch.randn(5, 3, 4),)
    assert all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves(again(*args)),
                                                 torch.utils._pytree.tree_leaves(ln(*args))))


@pytest.mark.parametrize("cls", [lstm_fused.LSTM, lstm_fused.GRU, lstm_fused.LSTMCell, lstm_fused.GRUCell])
def test_layer_norm_must_be_a_bool(cls):
    with pytest.raises(TypeError, match="layer_norm should be of type bool"):
        cls(3, 4, layer_norm=1)


@pytest.mark.parametrize("make", [lambda: lstm_fused.LSTM(4, 6, num_layers=2, bidirectional=True, layer_norm=True,
                                                          zoneout=0.2),
                                  lambda: lstm_fused.GRU(4, 6, num_layers=2, layer_norm=True),
                                  lambda: lstm_fused.LSTMCell(4, 6, layer_norm=True),
                                  lambda: lstm_fused.GRUCell(4, 6, layer_norm=True, zoneout=0.3)],
                         ids=["lstm", "gru", "lstm-cell", "gru-cell"])
def test_compile_torchscript_and_export_equal_eager(make):
    torch.manual_seed(0)
    m = make()
    _perturb_ln(m)
    cell = isinstance(m, (lstm_fused.LSTMCell, lstm_fused.GRUCell))
    args = (torch.randn(3, 4),) if cell else (torch.randn(5, 3, 4),)
    leaves = torch.utils._pytree.tree_leaves
    assert_scripted_equals_eager(m, args)
    m.eval()
    want = m(*args)
    torch._dynamo.reset()
    got = torch.compile(m, fullgraph=True)(*args)
    for a, b in zip(leaves(got), leaves(want)):
        torch.testing.assert_close(a, b)
    torch._dynamo.reset()
    ep = torch.export.export(m, args)
    assert all(torch.equal(a, b) for a, b in zip(leaves(ep.module()(*args)), leaves(want)))
