"""The CUDA path's logic, run on the CPU: the CUDA driver (buffers, GEMMs, step loop) with each step kernel's
phase functions executed block by block and thread by thread (lstm_fused_testing::emu_lstm_layer_*). Compared with the CPU
kernels at odd sizes that cross the kernels' 32-unit, 8-row and 32-k tiles, padded and packed, both
directions, with and without projection, in every dtype the GPU path supports."""
import pytest
import torch

import lstm_fused  # noqa: F401  (registers the ops)

fwd_cpu = torch.ops.lstm_fused.lstm_layer_fwd.default
bwd_cpu = torch.ops.lstm_fused.lstm_layer_bwd.default
fwd_emu = torch.ops.lstm_fused_testing.emu_lstm_layer_fwd.default
bwd_emu = torch.ops.lstm_fused_testing.emu_lstm_layer_bwd.default

CASES = [  # T, B, I, H, proj
    (1, 1, 1, 1, 0),
    (3, 2, 5, 7, 0),
    (5, 9, 33, 33, 0),
    (4, 17, 3, 40, 0),
    (6, 3, 70, 65, 13),
    (2, 8, 8, 32, 31),
    (7, 10, 4, 9, 4),
]


def _args(T, B, I, H, proj, packed, dtype, seed, directions=1, peephole=False, coupled=False):
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


def _close(a, b, tol, name):
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), name
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, tol, f"{name}[{i}]")
        return
    assert a.shape == b.shape, name
    torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=name)


def _cast(a, dtype):
    if isinstance(a, list):
        return [_cast(x, dtype) for x in a]
    return a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a


def check_half_layer(args64, dtype, tol, backward=True, ws_float32=False):
    """The emulated layer at `dtype` against the CPU kernels in float64: outputs within tol, and (backward) every
    gradient within 4·tol of its scale. ws_float32: also check the half-type workspace is kept in float32."""
    args = _cast(args64, dtype)
    ref = fwd_cpu(*args64, True)
    emu = fwd_emu(*args, True)
    if ws_float32:
        assert emu[3].dtype == torch.float32
    for a, b in zip(emu[:3], ref[:3]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)
    if not backward:
        return
    grads64 = [torch.randn(t.shape, dtype=torch.float64) for t in ref[:3]]
    grads = [t.to(dtype) for t in grads64]
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    x6, _, h06, c06, w_ih6, w_hh6, _, _, w_hr6, w_ph6, _ = args64
    r = bwd_cpu(*grads64, x6, bs, h06, c06, w_ih6, w_hh6, w_hr6, w_ph6, cpl, ref[0], ref[3], True, True)
    e = bwd_emu(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, emu[0], emu[3], True, True)
    flat_e = [e[0], e[1], e[2], *e[3], *e[4], *e[5], *e[6], *e[7]]
    flat_r = [r[0], r[1], r[2], *r[3], *r[4], *r[5], *r[6], *r[7]]
    for a, b in zip(flat_e, flat_r):
        assert a.dtype == dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol * 4, atol=tol * 4 * scale)


VARIANTS = [(False, False), (True, False), (False, True), (True, True)]  # (peephole, coupled)

LSTM_GRAD_NAMES = ("grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias", "grad_w_hr", "grad_w_ph")
GRU_GRAD_NAMES = ("grad_input", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh")


def check_lstm_layer(args, inference=False, need_grad_inputs=(True,)):
    """float64 layer: the emulated CUDA path (whatever LSTM_FUSED_CUDA_ALGO selects) equals the CPU kernels in
    outputs, workspace and every gradient; `inference` also runs the forward without a workspace."""
    ref = fwd_cpu(*args, True)
    emu = fwd_emu(*args, True)
    for name, a, b in zip(("output", "h_n", "c_n", "workspace"), emu, ref):
        _close(a, b, 1e-12, name)
    if inference:
        _close(list(fwd_emu(*args, False)[:3]), list(ref[:3]), 1e-12, "inference")
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, w_ph, coupled = args
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref[:3]]
    common = (x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, coupled)
    for need_grad_input in need_grad_inputs:
        r = bwd_cpu(*grads, *common, ref[0], ref[3], True, need_grad_input)
        e = bwd_emu(*grads, *common, emu[0], emu[3], True, need_grad_input)
        for name, a, b in zip(LSTM_GRAD_NAMES, e, r):
            _close(a, b, 1e-10, name)


def check_gru_layer(args, bias, inference=False, need_grad_inputs=(True,)):
    """The GRU counterpart of check_lstm_layer."""
    ref = gru_fwd_cpu(*args, True)
    emu = gru_fwd_emu(*args, True)
    for name, a, b in zip(("output", "h_n", "workspace"), emu, ref):
        _close(a, b, 1e-12, name)
    if inference:
        _close(list(gru_fwd_emu(*args, False)[:2]), list(ref[:2]), 1e-12, "inference")
    x, bs, h0, w_ih, w_hh, _, _ = args
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref[:2]]
    for need_grad_input in need_grad_inputs:
        r = gru_bwd_cpu(*grads, x, bs, h0, w_ih, w_hh, ref[0], ref[2], bias, need_grad_input)
        e = gru_bwd_emu(*grads, x, bs, h0, w_ih, w_hh, emu[0], emu[2], bias, need_grad_input)
        for name, a, b in zip(GRU_GRAD_NAMES, e, r):
            _close(a, b, 1e-10, name)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, ids=["lstm", "peephole", "coupled", "peephole+coupled"])
def test_emulated_cuda_layer_matches_cpu_kernels(case, packed, directions, variant):
    args = _args(*case, packed, torch.float64, seed=hash((case, packed, directions)) % 1000, directions=directions,
                 peephole=variant[0], coupled=variant[1])
    check_lstm_layer(args, need_grad_inputs=(True, False))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("packed", [False, True])
def test_emulated_cuda_layer_half_types_track_float64(dtype, tol, packed):
    # Half types keep gates and cells in float32; their error against float64 is the storage rounding.
    T, B, I, H, proj = 6, 5, 12, 20, 7
    args64 = _args(T, B, I, H, proj, packed, torch.float64, seed=3, directions=2, peephole=True)
    check_half_layer(args64, dtype, tol, ws_float32=True)


def test_emulated_backward_rejects_missing_workspace():
    args = _args(3, 2, 4, 5, 0, False, torch.float32, seed=0)
    out, h_n, c_n, ws = fwd_emu(*args, False)
    assert ws.numel() == 0
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    with pytest.raises(RuntimeError, match="workspace"):
        bwd_emu(torch.ones_like(out), torch.ones_like(h_n), torch.ones_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
                w_ph, cpl, out, ws, True, True)


# ---- GRU ----------------------------------------------------------------------------------------------------
gru_fwd_cpu = torch.ops.lstm_fused.gru_layer_fwd.default
gru_bwd_cpu = torch.ops.lstm_fused.gru_layer_bwd.default
gru_fwd_emu = torch.ops.lstm_fused_testing.emu_gru_layer_fwd.default
gru_bwd_emu = torch.ops.lstm_fused_testing.emu_gru_layer_bwd.default


def _gru_args(T, B, I, H, packed, dtype, seed, directions, bias=True):
    x, bs, h0, *_ = _args(T, B, I, H, 0, packed, dtype, seed, directions)
    g = torch.Generator().manual_seed(seed + 1)
    k = H ** -0.5

    def t(*s):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * k).to(dtype)

    D = directions
    return [x, bs, h0, [t(3 * H, I) for _ in range(D)], [t(3 * H, H) for _ in range(D)],
            [t(3 * H) for _ in range(D)] if bias else None, [t(3 * H) for _ in range(D)] if bias else None]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_emulated_cuda_gru_matches_cpu_kernels(case, packed, directions, bias):
    T, B, I, H, _ = case
    args = _gru_args(T, B, I, H, packed, torch.float64, seed=sum(case) + directions, directions=directions, bias=bias)
    check_gru_layer(args, bias, need_grad_inputs=(True, False))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_emulated_cuda_gru_half_types_track_float64(dtype, tol):
    args64 = _gru_args(6, 5, 12, 20, True, torch.float64, seed=4, directions=2)
    args = [[t.to(dtype) for t in a] if isinstance(a, list) else
            (a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a) for a in args64]
    ref = gru_fwd_cpu(*args64, True)
    emu = gru_fwd_emu(*args, True)
    assert emu[2].dtype == torch.float32
    for a, b in zip(emu[:2], ref[:2]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, ids=["lstm", "peephole", "coupled", "peephole+coupled"])
def test_emulated_inference_without_workspace_equals_training_forward(packed, directions, variant):
    # Inference alternates two step buffers instead of keeping the whole workspace: same bits.
    args = _args(9, 11, 5, 40, 7, packed, torch.float32, seed=9, directions=directions, peephole=variant[0],
                 coupled=variant[1])
    full = fwd_emu(*args, True)
    lean = fwd_emu(*args, False)
    assert lean[3].numel() == 0
    for a, b in zip(lean[:3], full[:3]):
        assert torch.equal(a, b)
    gargs = _gru_args(9, 11, 5, 40, packed, torch.float32, seed=9, directions=directions)
    full = gru_fwd_emu(*gargs, True)
    lean = gru_fwd_emu(*gargs, False)
    assert lean[2].numel() == 0 and torch.equal(lean[0], full[0]) and torch.equal(lean[1], full[1])


@pytest.mark.parametrize("algo", ["step", "gemm"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, ids=["lstm", "peephole", "coupled", "peephole+coupled"])
def test_per_step_paths_match_cpu_kernels(monkeypatch, algo, case, packed, directions, variant):
    # The per-step launches, with the step kernel's own reduction (step) or a cuBLAS GEMM per step feeding the
    # cell (gemm, what auto runs for batches over 64), with and without projection.
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)
    args = _args(*case, packed, torch.float64, seed=hash((case, packed, directions, 1)) % 1000, directions=directions,
                 peephole=variant[0], coupled=variant[1])
    check_lstm_layer(args, inference=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_gemm_path_half_types_track_float64(monkeypatch, dtype, tol):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "auto")  # batch 70 > 64: the GEMM path
    args64 = _args(5, 70, 12, 20, 7, True, torch.float64, seed=8, directions=2, peephole=True)
    check_half_layer(args64, dtype, tol, backward=False)


@pytest.mark.parametrize("algo", ["step", "gemm"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
def test_gru_per_step_paths_match_cpu_kernels(monkeypatch, algo, case, packed, directions):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)
    T, B, I, H, _ = case
    args = _gru_args(T, B, I, H, packed, torch.float64, seed=sum(case) + directions + 3, directions=directions)
    check_gru_layer(args, True, inference=True)
