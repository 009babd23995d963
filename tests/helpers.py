"""Shared helpers for the parity tests: twin modules with identical weights and loose-but-tight comparisons."""
import contextlib
import itertools

import pytest
import torch
from torch import nn

import lstm_fused

# The test-only ops (lstm_fused_testing::*) exist only in a build made with LSTM_FUSED_TESTING=1 (conftest.py).
HAS_TESTING_OPS = hasattr(torch.ops.lstm_fused_testing, "path_counts")
requires_testing_ops = pytest.mark.skipif(not HAS_TESTING_OPS, reason="needs the test-only ops: build with "
                                          "LSTM_FUSED_TESTING=1 (scripts/test.sh does)")


def twin_lstms(*args, dtype=torch.float32, seed=0, **kwargs):
    """nn.LSTM and lstm_fused.LSTM with identical parameters."""
    torch.manual_seed(seed)
    ref = nn.LSTM(*args, dtype=dtype, **kwargs)
    ours = lstm_fused.LSTM(*args, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def tolerances(dtype, grad=False):
    # fp32: ~1e-5 relative to the magnitude of the reference (gradients are sums over all steps and rows,
    # where summation order alone moves cancelling sums by ~1e-5 of the largest entry); fp64: near machine
    # precision.
    if dtype == torch.float32:
        return (1e-5, 1e-5 if grad else 1e-6)
    return (1e-10, 1e-11 if grad else 1e-12)


def assert_raises_like(ref, ours, *args):
    """nn's module `ref` rejects args; ours must raise the same exception type."""
    try:
        ref(*args)
    except Exception as e:  # noqa: BLE001
        expected = type(e)
    else:
        pytest.fail(f"{type(ref).__name__} accepted the case")
    with pytest.raises(expected):
        ours(*args)


def assert_close(actual, expected, dtype, what="", grad=False):
    rtol, atol = tolerances(dtype, grad)
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


def loss_of(output, h_n, c_n, seed=1):
    """A loss that touches every output with distinct weights, so every gradient path is checked."""
    g = torch.Generator().manual_seed(seed)
    data = output.data if hasattr(output, "batch_sizes") else output
    # Drawn on the CPU (the same numbers whatever the device), then moved to the outputs' device.
    w_o = torch.randn(data.shape, generator=g, dtype=data.dtype).to(data.device)
    w_h = torch.randn(h_n.shape, generator=g, dtype=h_n.dtype).to(h_n.device)
    w_c = torch.randn(c_n.shape, generator=g, dtype=c_n.dtype).to(c_n.device)
    return (data * w_o).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()


def outputs_and_grads(model, x):
    """Output, h_n, c_n, the input's and every parameter's gradient of a fixed loss (for equality checks)."""
    model.zero_grad()
    xg = x.clone().requires_grad_()
    out, (h, c) = model(xg)
    (out.square().sum() + h.sum() + c.sum()).backward()
    return [out, h, c, xg.grad] + [p.grad.clone() for p in model.parameters()]


def run_and_grads(module, x, hx, leaf_inputs):
    out, (h_n, c_n) = module(x, hx)
    loss = loss_of(out, h_n, c_n)
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, leaf_inputs + params, allow_unused=True, retain_graph=True)
    return out, h_n, c_n, grads


def compare_modules(ref, ours, x, hx, leaf_inputs, dtype):
    """Outputs, final states and every gradient (inputs, states, all parameters) must match."""
    o1, h1, c1, g1 = run_and_grads(ref, x, hx, leaf_inputs)
    o2, h2, c2, g2 = run_and_grads(ours, x, hx, leaf_inputs)
    d1 = o1.data if hasattr(o1, "batch_sizes") else o1
    d2 = o2.data if hasattr(o2, "batch_sizes") else o2
    assert d1.shape == d2.shape
    assert_close(d2, d1, dtype, "output")
    assert_close(h2, h1, dtype, "h_n")
    assert_close(c2, c1, dtype, "c_n")
    names = [f"input{i}" for i in range(len(leaf_inputs))] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g2, g1):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, dtype, f"grad {name}", grad=True)
    return o2, h2, c2


PATHS = ("persistent", "wavefront", "step", "gemm_step")


@contextlib.contextmanager
def paths_taken():
    """How many sequences each recurrent path of the CUDA driver (on a GPU or emulated) ran inside the block:
    a test of one kernel checks that it ran, not a silent fallback."""
    before = torch.ops.lstm_fused_testing.path_counts()
    taken = {}
    yield taken
    after = torch.ops.lstm_fused_testing.path_counts()
    taken.update({name: a - b for name, a, b in zip(PATHS, after, before)})


# ---- backends: the same module tests on the CPU kernels, on the CUDA path emulated on the CPU, and on a GPU ------
BACKENDS = ("cpu", "emulated_cuda", "cuda")


class _EmulatedOps:
    """Stands in for torch.ops.lstm_fused inside lstm_fused.ops: each op's emulated twin (lstm_fused_testing::emu_*,
    the CUDA drivers with the kernels' own schedules run on the CPU)."""

    def __getattr__(self, name):
        return getattr(torch.ops.lstm_fused_testing, "emu_" + name)


_EMULATED_AUTOGRAD = []


def _register_emulated_autograd():
    # The twins get the product ops' autograd formulas and fake kernels; with the stand-in active, the formulas'
    # backward op is the emulated one too, so forward and backward (eager or torch.compile'd) both run on the CUDA
    # path.
    if _EMULATED_AUTOGRAD:
        return
    from lstm_fused import ops

    formulas = {"lstm_layer_fwd": (ops._backward, ops._setup_context),
                "lstm_stack_fwd": (ops._stack_backward, ops._stack_setup_context),
                "gru_layer_fwd": (ops._gru_backward, ops._gru_setup_context)}
    for name, (backward, setup) in formulas.items():
        torch.library.register_autograd(f"lstm_fused_testing::emu_{name}", backward, setup_context=setup)
    for name in ("lstm_layer_bwd", "lstm_stack_bwd", "gru_layer_bwd"):
        torch.library.register_autograd(f"lstm_fused_testing::emu_{name}", ops._no_double_backward,
                                        setup_context=ops._no_context)
    fakes = {"lstm_layer_fwd": ops._lstm_layer_fwd_fake, "lstm_layer_bwd": ops._lstm_layer_bwd_fake,
             "lstm_stack_fwd": ops._lstm_stack_fwd_fake, "lstm_stack_bwd": ops._lstm_stack_bwd_fake,
             "gru_layer_fwd": ops._gru_layer_fwd_fake, "gru_layer_bwd": ops._gru_layer_bwd_fake}
    for name, fake in fakes.items():
        torch.library.register_fake(f"lstm_fused_testing::emu_{name}", fake)
    _EMULATED_AUTOGRAD.append(True)


@contextlib.contextmanager
def on_backend(backend):
    """Runs the block's lstm_fused modules on `backend` and yields the device their tensors go on: "cpu" (the CPU
    kernels), "emulated_cuda" (CPU tensors through the CUDA path's drivers and kernel schedules, emulated; needs
    the test-only ops) or "cuda" (a GPU and a CUDA build). Skips the test where the backend is missing."""
    if backend == "cuda":
        if not (torch.cuda.is_available() and lstm_fused.has_cuda_kernels()):
            pytest.skip("needs a GPU and a CUDA build")
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        # nn.LSTM on cuDNN may use TF32 for float32 unless told not to: compare true float32 with true float32.
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield torch.device("cuda")
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    elif backend == "emulated_cuda":
        if not HAS_TESTING_OPS:
            pytest.skip("needs the test-only ops: build with LSTM_FUSED_TESTING=1")
        from lstm_fused import ops

        _register_emulated_autograd()
        saved = ops._ops
        ops._ops = _EmulatedOps()
        try:
            with paths_taken() as taken:
                yield torch.device("cpu")
        finally:
            ops._ops = saved
        # The block really ran the CUDA path (its driver counts every layer pass), not the CPU kernels.
        assert sum(taken.values()) > 0, "the emulated CUDA path did not run"
    else:
        assert backend == "cpu", backend
        yield torch.device("cpu")


def assert_error_within_reference(triples, factor=4, slack=1e-3):
    """Half types: for each (ours, nn's, float64 exact) our error may be at most `factor` times nn's own error at
    that dtype (plus `slack`)."""
    for ours, ref, exact in triples:
        err_ours = (ours.double().cpu() - exact).abs().max().item()
        err_ref = (ref.double().cpu() - exact).abs().max().item()
        assert err_ours <= factor * err_ref + slack, (err_ours, err_ref)


def check_half_type_vs_float64(ref, ours, ref64, x, dtype):
    """nn's module `ref` and ours at a half type against `ref64` (float64, on the CPU), same weights: outputs and
    final states may be at most 4x nn's own error (assert_error_within_reference), and every parameter gradient of
    a float64 weighted loss at most 10x nn's error plus 1% of the gradient's scale — loose enough for a different
    summation order, tight enough to catch a wrong tile layout or a lost term, which are off by O(1)."""
    results = []
    for m, inp in ((ref64, x.double().cpu()), (ref.to(dtype), x.to(dtype)), (ours.to(dtype), x.to(dtype))):
        out, state = m(inp)
        outs = [out, *(state if isinstance(state, tuple) else (state,))]
        g = torch.Generator().manual_seed(1)
        loss = sum((t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.device)).sum()
                   for t in outs)
        names = [n for n, _ in m.named_parameters()]
        results.append((outs, dict(zip(names, torch.autograd.grad(loss, [p for _, p in m.named_parameters()])))))
    (exact, exact_g), (theirs, theirs_g), (mine, mine_g) = results
    assert all(t.dtype == dtype for t in mine)
    assert_error_within_reference(zip(mine, theirs, exact))
    assert exact_g.keys() == mine_g.keys() == theirs_g.keys()
    for name, e in exact_g.items():
        err_mine = (mine_g[name].double().cpu() - e).abs().max().item()
        err_theirs = (theirs_g[name].double().cpu() - e).abs().max().item()
        assert err_mine <= 10 * err_theirs + 1e-2 * e.abs().max().item(), (name, err_mine, err_theirs)


# The shared parity grid. Every (T, B, H) of the grid, in a fixed order the parity tests cycle through.
SHAPES = list(itertools.product([1, 2, 17, 50], [1, 3, 16], [1, 5, 33, 128]))
# A sample of SHAPES for backends where each case costs more (CUDA): one of each size class, every H.
SHAPE_SAMPLE = [(1, 1, 1), (2, 3, 5), (17, 16, 33), (50, 3, 128)]
assert set(SHAPE_SAMPLE) <= set(SHAPES)
# Beyond SHAPES: a batch over 64 (the CUDA driver's per-step GEMM path) with H off the kernels' 32-unit tiles.
LARGE_BATCH_SHAPES = [(9, 70, 65)]
# Module structures: (num_layers, bidirectional, batch_first, bias, use_proj) for LSTM, the same less use_proj for
# GRU (which has no projection).
LSTM_STRUCTURES = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False], [False, True]))
GRU_STRUCTURES = list(itertools.product([1, 2, 3], [False, True], [False, True], [True, False]))


def flat_tensors(result):
    """Every tensor of a module's result, in order (a PackedSequence contributes its data)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if hasattr(result, "batch_sizes"):
        return [result.data]
    return [t for r in result for t in flat_tensors(r)]


# ---- op-level helpers: the layer ops on the CPU and (test-only ops) the CUDA path emulated on the CPU ----------
fwd_cpu = torch.ops.lstm_fused.lstm_layer_fwd.default
bwd_cpu = torch.ops.lstm_fused.lstm_layer_bwd.default
gru_fwd_cpu = torch.ops.lstm_fused.gru_layer_fwd.default
gru_bwd_cpu = torch.ops.lstm_fused.gru_layer_bwd.default
if HAS_TESTING_OPS:
    fwd_emu = torch.ops.lstm_fused_testing.emu_lstm_layer_fwd.default
    bwd_emu = torch.ops.lstm_fused_testing.emu_lstm_layer_bwd.default
    gru_fwd_emu = torch.ops.lstm_fused_testing.emu_gru_layer_fwd.default
    gru_bwd_emu = torch.ops.lstm_fused_testing.emu_gru_layer_bwd.default
else:  # a build without the test-only ops: the emulation test modules are not collected (conftest.py)
    fwd_emu = bwd_emu = gru_fwd_emu = gru_bwd_emu = None

VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (peephole, coupled)
VARIANT_IDS = ["lstm", "peephole", "coupled", "peephole+coupled"]

LSTM_GRAD_NAMES = ("grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias", "grad_w_hr", "grad_w_ph",
                   "grad_layer_norm")
GRU_GRAD_NAMES = ("grad_input", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "grad_layer_norm")


def layer_args(T, B, I, H, proj, packed, dtype, seed, directions=1, peephole=False, coupled=False):
    """Arguments of lstm_layer_fwd (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled), drawn
    in float64 from `seed` and cast to `dtype`; packed: random lengths, the longest T."""
    g = torch.Generator().manual_seed(seed)

    def t(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    P = proj or H
    D = directions
    if packed:
        lengths = torch.randint(1, T + 1, (B,), generator=g).sort(descending=True).values
        lengths[0] = T
        batch_sizes = torch.tensor([int((lengths > t_).sum()) for t_ in range(T)])
        x = t(int(batch_sizes.sum()), I)
    else:
        batch_sizes = None
        x = t(T, B, I)
    k = H ** -0.5
    G = (3 if coupled else 4) * H
    return [x, batch_sizes, t(D, B, P), t(D, B, H), [t(G, I, scale=k) for _ in range(D)],
            [t(G, P, scale=k) for _ in range(D)], [t(G, scale=k) for _ in range(D)],
            [t(G, scale=k) for _ in range(D)], [t(P, H, scale=k) for _ in range(D)] if proj else None,
            [t(2 if coupled else 3, H) for _ in range(D)] if peephole else None, coupled]


def gru_layer_args(T, B, I, H, packed, dtype, seed, directions, bias=True):
    """Arguments of gru_layer_fwd (x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh), as layer_args draws them."""
    x, bs, h0, *_ = layer_args(T, B, I, H, 0, packed, dtype, seed, directions)
    g = torch.Generator().manual_seed(seed + 1)
    k = H ** -0.5

    def t(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * k).to(dtype)

    D = directions
    return [x, bs, h0, [t(3 * H, I) for _ in range(D)], [t(3 * H, H) for _ in range(D)],
            [t(3 * H) for _ in range(D)] if bias else None, [t(3 * H) for _ in range(D)] if bias else None]


def assert_nested_close(a, b, tol, name):
    """Tensors or (nested) lists of tensors: same lengths, same shapes, equal within rtol = atol = tol."""
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            assert_nested_close(x, y, tol, f"{name}[{i}]")
        return
    assert a.shape == b.shape, name
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


def cast_args(a, dtype):
    """Every floating tensor of an op's argument list (nested lists too) cast to dtype; the rest unchanged."""
    if isinstance(a, list):
        return [cast_args(x, dtype) for x in a]
    return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a


# Every cell the layer ops run, for op-level tests that differ only by cell: name -> (peephole, coupled) for the
# LSTM variants, None for the GRU (with and without biases).
CELLS = {"lstm": (False, False), "peephole": (True, False), "coupled": (False, True),
         "peephole+coupled": (True, True), "gru": None, "gru-no-bias": None}


def cell_layer_args(cell, T, B, I, H, proj, packed, dtype, seed, directions=1):
    """The layer op's arguments for `cell` (layer_args or gru_layer_args; the GRU has no projection, proj unused)."""
    if CELLS[cell] is None:
        return gru_layer_args(T, B, I, H, packed, dtype, seed, directions, bias=cell == "gru")
    peephole, coupled = CELLS[cell]
    return layer_args(T, B, I, H, proj, packed, dtype, seed, directions, peephole=peephole, coupled=coupled)


def cell_gates(cell):
    """Gate rows per hidden unit: 3 for the coupled LSTM and the GRU, 4 for the others."""
    return 3 if CELLS[cell] is None or CELLS[cell][1] else 4


def _layer_op(args):
    """What differs between the LSTM and the GRU layer ops, told apart by their argument count (11 / 7): the
    number of forward results before the workspace, the CPU and emulated forward/backward, the gradients' names."""
    if len(args) == 11:
        return 3, fwd_cpu, bwd_cpu, fwd_emu, bwd_emu, LSTM_GRAD_NAMES
    return 2, gru_fwd_cpu, gru_bwd_cpu, gru_fwd_emu, gru_bwd_emu, GRU_GRAD_NAMES


def _layer_bwd(bwd, args, grads, fwd_result, need_grad_input):
    """The layer's backward op called with the gradients of its forward results and what the forward saved."""
    n = len(grads)
    if n == 3:
        x, bs, h0, c0, w_ih, w_hh, b_ih, _, w_hr, w_ph, cpl = args
        return bwd(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd_result[0], fwd_result[n], b_ih is not None,
                   need_grad_input)
    x, bs, h0, w_ih, w_hh, b_ih, _ = args
    return bwd(*grads, x, bs, h0, w_ih, w_hh, fwd_result[0], fwd_result[n], b_ih is not None, need_grad_input)


def _flat(result):
    """An op's results with lists of per-direction tensors spread out; absent (None) results skipped."""
    return [t for r in result if r is not None for t in (r if isinstance(r, (list, tuple)) else [r])]


def check_half_layer(args64, dtype, tol, backward=True, ws_float32=False):
    """The emulated layer (LSTM or GRU) at `dtype` against the CPU kernels in float64: outputs within tol, and
    (backward) every gradient within 4·tol of its scale. ws_float32: also check the half-type workspace is kept in
    float32."""
    n, fwd_c, bwd_c, fwd_e, bwd_e, _ = _layer_op(args64)
    args = cast_args(args64, dtype)
    ref = fwd_c(*args64, True)
    emu = fwd_e(*args, True)
    if ws_float32:
        assert emu[n].dtype == torch.float32
    for a, b in zip(emu[:n], ref[:n]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)
    if not backward:
        return
    grads64 = [torch.randn(t.shape, dtype=torch.float64) for t in ref[:n]]
    r = _layer_bwd(bwd_c, args64, grads64, ref, True)
    e = _layer_bwd(bwd_e, args, [t.to(dtype) for t in grads64], emu, True)
    for a, b in zip(_flat(e), _flat(r), strict=True):
        assert a.dtype == dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol * 4, atol=tol * 4 * scale)


def check_layer(args, inference=False, need_grad_inputs=(True,)):
    """float64 layer (LSTM or GRU): the emulated CUDA path (whatever LSTM_FUSED_CUDA_ALGO selects) equals the CPU
    kernels in outputs, workspace and every gradient; `inference` also runs the forward without a workspace."""
    n, fwd_c, bwd_c, fwd_e, bwd_e, grad_names = _layer_op(args)
    ref = fwd_c(*args, True)
    emu = fwd_e(*args, True)
    for name, a, b in zip(("output", "h_n", "c_n")[:n] + ("workspace",), emu, ref):
        assert_nested_close(a, b, 1e-12, name)
    if inference:
        assert_nested_close(list(fwd_e(*args, False)[:n]), list(ref[:n]), 1e-12, "inference")
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref[:n]]
    for need_grad_input in need_grad_inputs:
        r = _layer_bwd(bwd_c, args, grads, ref, need_grad_input)
        e = _layer_bwd(bwd_e, args, grads, emu, need_grad_input)
        for name, a, b in zip(grad_names, e, r, strict=True):
            assert_nested_close(a, b, 1e-10, name)


def twin_grus(*args, dtype=torch.float32, seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = nn.GRU(*args, dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    ours = lstm_fused.GRU(*args, dtype=dtype, **kwargs)
    for (n1, a), (n2, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert n1 == n2 and torch.equal(a, b)  # same names, order and seeded init
    return ref, ours


# nn.GRU on cuDNN against our GRU kernels, float32: outputs, states and gradients within 1e-5 of the largest entry
# (the tolerance the GPU's GRU parity test was written with; not yet run on a GPU, so not tightened blind).
CUDNN_GRU_TOL = (1e-5, 1e-5)


def compare_grus(ref, ours, x, h0, leaves, dtype, tol=None):
    """GRU outputs, final state and every gradient (leaves, then parameters) must match; `tol` (rtol, atol relative
    to the largest entry) replaces the dtype's tolerances for every comparison."""
    results = []
    for m in (ref, ours):
        out, h_n = m(x, h0)
        data = out.data if hasattr(out, "batch_sizes") else out
        g = torch.Generator().manual_seed(1)
        # Drawn on the CPU (the same numbers whatever the device), then moved to the outputs' device.
        loss = (data * torch.randn(data.shape, generator=g, dtype=dtype).to(data.device)).sum() + \
            (h_n * torch.randn(h_n.shape, generator=g, dtype=dtype).to(h_n.device)).sum()
        grads = torch.autograd.grad(loss, leaves + list(m.parameters()), retain_graph=True)
        results.append((data, h_n, grads))
    (o1, h1, g1), (o2, h2, g2) = results
    assert o1.shape == o2.shape and h1.shape == h2.shape

    def close(a, b, what, grad=False):
        if tol is None:
            return assert_close(a, b, dtype, what, grad=grad)
        scale = max(1.0, b.abs().max().item()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1] * scale, msg=lambda m: f"{what}: {m}")

    close(o2, o1, "output")
    close(h2, h1, "h_n")
    for i, (a, b) in enumerate(zip(g2, g1)):
        close(a, b, f"grad {i}", grad=True)


# ---- the layer ops' contract, one step at a time (zoneout and layer norm included) --------------------------------
def _op_steps(x, batch_sizes):
    """The op's row layout: the input as rows, and per step t its row count n_t and first row off_t (the rows of step
    t are [off_t, off_t + n_t) of the data, padded or packed)."""
    if batch_sizes is None:
        T, B = x.shape[:2]
        sizes, rows = [B] * T, x.reshape(T * B, -1)
    else:
        sizes, rows = batch_sizes.tolist(), x
    return rows, sizes, [sum(sizes[:t]) for t in range(len(sizes))]


def _op_output(outs, x, batch_sizes):
    out = torch.cat(outs, -1)
    return out if batch_sizes is not None else out.reshape(x.shape[0], x.shape[1], -1)


def reference_lstm_layer(x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled, zo_h=None, zo_c=None,
                         ln=None):
    """lstm_layer_fwd's results from lstm_fused.reference's cell and zoneout, step by step: zo_h / zo_c the op's masks
    [D, rows, ·], ln its layer_norm list (per direction γ_ih, γ_hh, γ_c, β_c)."""
    from lstm_fused import reference

    rows, sizes, offsets = _op_steps(x, batch_sizes)
    outs, h_n, c_n = [], [], []
    for d in range(len(w_ih)):
        h, c = h0[d], c0[d]
        out = [None] * len(sizes)
        for t in (range(len(sizes)) if d == 0 else reversed(range(len(sizes)))):
            n, r0 = sizes[t], offsets[t]
            h_new, c_new = reference.lstm_cell(rows[r0:r0 + n], h[:n], c[:n], w_ih[d], w_hh[d],
                                               b_ih[d] if b_ih else None, b_hh[d] if b_hh else None,
                                               w_hr[d] if w_hr else None, w_ph[d] if w_ph else None, coupled,
                                               tuple(ln[4 * d:4 * d + 4]) if ln else None)
            if zo_h is not None:
                h_new = reference.zoneout(h[:n], h_new, zo_h[d, r0:r0 + n])
            if zo_c is not None:
                c_new = reference.zoneout(c[:n], c_new, zo_c[d, r0:r0 + n])
            h, c = torch.cat([h_new, h[n:]]), torch.cat([c_new, c[n:]])
            out[t] = h_new
        outs.append(torch.cat(out))
        h_n.append(h)
        c_n.append(c)
    return _op_output(outs, x, batch_sizes), torch.stack(h_n), torch.stack(c_n)


def reference_gru_layer(x, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, zo_h=None, ln=None):
    """gru_layer_fwd's results, as reference_lstm_layer (ln: per direction γ_ih, γ_hh)."""
    from lstm_fused import reference

    rows, sizes, offsets = _op_steps(x, batch_sizes)
    outs, h_n = [], []
    for d in range(len(w_ih)):
        h = h0[d]
        out = [None] * len(sizes)
        for t in (range(len(sizes)) if d == 0 else reversed(range(len(sizes)))):
            n, r0 = sizes[t], offsets[t]
            h_new = reference.gru_cell(rows[r0:r0 + n], h[:n], w_ih[d], w_hh[d], b_ih[d] if b_ih else None,
                                       b_hh[d] if b_hh else None, tuple(ln[2 * d:2 * d + 2]) if ln else None)
            if zo_h is not None:
                h_new = reference.zoneout(h[:n], h_new, zo_h[d, r0:r0 + n])
            h = torch.cat([h_new, h[n:]])
            out[t] = h_new
        outs.append(torch.cat(out))
        h_n.append(h)
    return _op_output(outs, x, batch_sizes), torch.stack(h_n)


def requiring_grad(args):
    """Op arguments with every floating tensor (in lists too) made a leaf requiring grad."""
    return [[t.requires_grad_() for t in a] if isinstance(a, list) else
            (a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a) for a in args]


def grad_leaves(args):
    """The tensors of op arguments that require grad, in argument order."""
    return [a for group in args if group is not None and not isinstance(group, bool)
            for a in (group if isinstance(group, list) else [group]) if isinstance(a, torch.Tensor) and a.requires_grad]


def op_args_on(args, device):
    """The op arguments on `device`, new leaves where the originals require grad (batch_sizes stays on the CPU)."""
    def one(a):
        if not isinstance(a, torch.Tensor) or not a.is_floating_point():
            return a
        c = a.detach().to(device)
        return c.requires_grad_() if a.requires_grad else c

    return [[one(t) for t in a] if isinstance(a, list) else one(a) for a in args]


def op_results(outputs, leaves):
    """Outputs and the gradients of a fixed random weighting of them (float64), on the CPU."""
    w = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=w, dtype=torch.float64).to(t.device)).sum() for t in outputs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [t.detach().cpu() if t is not None else None for t in (*outputs, *grads)]


def cell_and_reference_results(m, x, hx, leaves):
    """A cell module's outputs and gradients (of a fixed weighting of its outputs, for `leaves` and its parameters)
    next to lstm_fused.reference's for the same module, each call from seed 5 so the options draw the same masks."""
    from lstm_fused import reference

    run_ref = reference.run_lstm_cell if isinstance(m, lstm_fused.LSTMCell) else reference.run_gru_cell
    results = []
    for run in (m, lambda i, s: run_ref(m, i, s)):
        torch.manual_seed(5)
        out = run(x, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((t * torch.arange(t.numel(), dtype=t.dtype, device=t.device).view(t.shape).cos()).sum()
                   for t in outs)
        results.append([*outs, *torch.autograd.grad(loss, leaves + list(m.parameters()), allow_unused=True)])
    return results


def assert_scripted_equals_eager(m, args):
    """torch.jit.script(m) gives m's results bit for bit, in training (the same seed drawing the same masks) and in
    eval."""
    leaves = torch.utils._pytree.tree_leaves
    scripted = torch.jit.script(m)
    for train in (True, False):
        m.train(train)
        scripted.train(train)
        torch.manual_seed(4)
        want = m(*args)
        torch.manual_seed(4)
        got = scripted(*args)
        assert all(torch.equal(a, b) for a, b in zip(leaves(got), leaves(want), strict=True))
