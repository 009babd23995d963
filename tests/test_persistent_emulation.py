"""The persistent CUDA kernel's logic, run on the CPU: the CUDA driver with the persistent launch emulated block by
block and thread by thread, every block's shared memory kept for the whole launch and a grid barrier between steps
(testing/cuda_emulation.cpp). LSTM_FUSED_EMU_SMS / LSTM_FUSED_EMU_SMEM shape the emulated device, so the tests reach
several units per block, more work items than threads (rounds), a reduction split in k chunks, and one block per
unit. Compared with the CPU kernels and with the per-step CUDA kernels (LSTM_FUSED_CUDA_ALGO=step)."""
import pytest
import torch

from helpers import (CELLS, VARIANT_IDS, VARIANTS, assert_nested_close, bwd_cpu, bwd_emu, cast_args, cell_gates,
                     cell_layer_args, check_half_layer, check_layer, fwd_cpu, fwd_emu, gru_fwd_emu, gru_layer_args,
                     layer_args, paths_taken)

plan = torch.ops.lstm_fused_testing.persistent_plan.default

CASES = [  # T, B, I, H (no projection: projection layers always take the per-step kernels)
    (1, 1, 1, 1),
    (3, 2, 5, 7),
    (5, 9, 33, 33),
    (4, 17, 3, 40),
    (7, 10, 4, 9),
    (3, 70, 4, 65),
]
DEVICES = {  # name: (multiprocessors, shared memory per block)
    "h200": (132, 232448),
    "5sm": (5, 232448),
    "1sm": (1, 232448),
    "small-smem": (3, 60000),
}


def _device(monkeypatch, name, algo="persistent"):
    sms, smem = DEVICES[name]
    monkeypatch.setenv("LSTM_FUSED_EMU_SMS", str(sms))
    monkeypatch.setenv("LSTM_FUSED_EMU_SMEM", str(smem))
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)


def _plans(case, directions, gates, device, elem=8):
    T, B, I, H = case
    sms, smem = DEVICES[device]
    return (plan(4, H, H, B, directions, elem, elem, sms, smem),
            plan(1, H, gates * H, B, directions, elem, elem, sms, smem))


def test_emulated_devices_reach_every_tiling():
    # The device shapes are only worth testing if, over the grid below, the kernel meets every tiling it must
    # handle with both passes runnable: one unit per block, several, more work items than threads (rounds),
    # forward and backward reductions staged in k chunks, two directions.
    seen = set()
    for device in DEVICES:
        for case in CASES:
            for directions in (1, 2):
                for coupled in (False, True):
                    f, b = _plans(case, directions, 3 if coupled else 4, device)
                    if not (f[0] and b[0]):
                        continue
                    H, B = case[3], case[1]
                    G = (3 if coupled else 4) * H
                    seen.add("one unit" if f[2] == 1 else "several units")
                    seen |= {"rounds"} if f[2] * ((B + 3) // 4) > 256 else set()
                    seen |= {"forward chunks"} if f[3] < H else set()
                    seen |= {"backward chunks"} if b[3] < G else set()
                    seen.add(f"{directions} directions")
    assert seen == {"one unit", "several units", "rounds", "forward chunks", "backward chunks", "1 directions",
                    "2 directions"}
    assert plan(4, 300, 300, 2, 1, 8, 8, *DEVICES["small-smem"])[0] == 0  # the weights alone do not fit
    assert plan(4, 8, 8, 4, 2, 4, 4, 1, 232448)[0] == 0  # one multiprocessor cannot serve two directions


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_persistent_matches_cpu_kernels(monkeypatch, device, case, packed, directions, cell):
    T, B, I, H = case
    fits = all(p[0] for p in _plans(case, directions, cell_gates(cell), device))
    _device(monkeypatch, device)
    args = cell_layer_args(cell, T, B, I, H, 0, packed, torch.float64, seed=hash((case, packed, directions)) % 1000,
                           directions=directions)
    if not fits:
        with pytest.raises(RuntimeError, match="LSTM_FUSED_CUDA_ALGO=persistent"):
            (fwd_emu if len(args) == 11 else gru_fwd_emu)(*args, True)
        return
    # Inference too: two alternating step buffers, h_n (and c_n) written by the kernel.
    with paths_taken() as taken:
        check_layer(args, inference=True)
    assert taken["persistent"] > 0 and taken["step"] == taken["gemm_step"] == 0, taken


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("packed", [False, True])
def test_persistent_half_types_track_float64(monkeypatch, dtype, tol, packed):
    # Half types stay half in the resident slice and the outputs; staging, sums and cells are float32.
    _device(monkeypatch, "5sm")
    args64 = layer_args(6, 5, 12, 20, 0, packed, torch.float64, seed=3, directions=2, peephole=True)
    check_half_layer(args64, dtype, tol)


@pytest.mark.parametrize("packed", [False, True])
def test_persistent_and_step_kernels_agree_in_float32(monkeypatch, packed):
    args = layer_args(8, 13, 6, 45, 0, packed, torch.float32, seed=11, directions=2, peephole=True)
    results = {}
    for algo in ("step", "persistent"):
        _device(monkeypatch, "5sm", algo)
        with paths_taken() as taken:
            fwd = fwd_emu(*args, True)
            grads = [torch.ones_like(t) for t in fwd[:3]]
            x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
            bwd = bwd_emu(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd[0], fwd[3], True, True)
        assert taken == {**dict.fromkeys(taken, 0), algo: 2}, taken
        results[algo] = (fwd, bwd)
    assert_nested_close(list(results["persistent"][0]), list(results["step"][0]), 1e-5, "forward")
    assert_nested_close([results["persistent"][1][i] for i in (0, 1, 2, 3, 4, 5, 7)],
                        [results["step"][1][i] for i in (0, 1, 2, 3, 4, 5, 7)], 1e-5, "backward")


def test_forcing_persistent_where_it_cannot_run_raises(monkeypatch):
    _device(monkeypatch, "h200")
    with pytest.raises(RuntimeError, match="proj_size"):
        fwd_emu(*layer_args(3, 2, 4, 8, 5, False, torch.float32, seed=0), True)
    _device(monkeypatch, "small-smem")
    with pytest.raises(RuntimeError, match="shared memory"):
        fwd_emu(*layer_args(3, 2, 4, 300, 0, False, torch.float32, seed=0), True)
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "fastest")
    with pytest.raises(RuntimeError, match="auto, step, gemm or persistent"):
        fwd_emu(*layer_args(3, 2, 4, 8, 0, False, torch.float32, seed=0), True)


def test_auto_falls_back_where_the_persistent_kernel_cannot_run(monkeypatch):
    # Auto: projection, too little shared memory or a large batch take the per-step kernels, same results.
    for device, case, proj, path in (("h200", (3, 2, 4, 8), 5, "step"), ("small-smem", (3, 2, 4, 300), 0, "step"),
                                     ("h200", (2, 70, 3, 9), 0, "gemm_step"), ("h200", (2, 64, 3, 9), 0, "persistent")):
        _device(monkeypatch, device, "auto")
        args = layer_args(*case, proj, False, torch.float64, seed=1)
        ref = fwd_cpu(*args, True)
        with paths_taken() as taken:
            got = fwd_emu(*args, True)
        assert_nested_close(list(got), list(ref), 1e-12, str(case))
        assert taken == {**dict.fromkeys(taken, 0), path: 1}, (case, taken)


# ---- tensor-core forward (float16 / bfloat16) -----------------------------------------------------------------
mma_plan = torch.ops.lstm_fused_testing.persistent_mma_plan.default
MMA_CASES = [  # T, B, I, H: batch 1 (mostly padding), 9 (two forward N tiles), 70 (more tiles than warps);
    (5, 1, 3, 33),  # H not a multiple of the 8-unit tile; P not a multiple of the k step
    (4, 9, 7, 20),
    (3, 70, 5, 37),
    (2, 40, 3, 70),  # backward: several M tiles on 2 SMs and two N tiles
]


def test_mma_plans_reach_every_tiling():
    seen = set()
    for sms in (132, 2):
        for T, B, I, H in MMA_CASES:
            for D in (1, 2):
                for ng, K, n in ((4, H, 8), (1, 4 * H, 32)):  # forward: 32x8 tiles; backward: 8x32
                    ok, nb, kj, mt, kc, _ = mma_plan(ng, H, K, B, D, sms, 232448)
                    assert ok and kj % 8 == 0 and nb * kj >= H and (nb - 1) * kj < H
                    tiles = mt * ((B + n - 1) // n)
                    pass_ = "forward" if ng == 4 else "backward"
                    seen.add(f"{pass_}: {'several M tiles' if mt > 1 else 'one M tile'}")
                    seen.add(f"{pass_}: " + ("split k" if tiles < 8 else "tiles in rounds" if tiles > 8 else "8 tiles"))
    assert {f"{p}: {w}" for p in ("forward", "backward") for w in ("several M tiles", "one M tile", "split k",
                                                                    "tiles in rounds")} <= seen
    # H200, batch 64, H 1024: the forward stages all of h_{t-1}, the backward dG in k chunks.
    assert mma_plan(4, 1024, 1024, 64, 1, 132, 232448)[:5] == [1, 128, 8, 1, 1024]
    ok, nb, kj, mt, kc, _ = mma_plan(1, 1024, 4096, 64, 1, 132, 232448)
    assert ok and (nb, kj, mt) == (128, 8, 1) and 16 <= kc < 4096 and kc % 16 == 0
    assert mma_plan(4, 1024, 1024, 64, 2, 132, 232448)[0] == 1  # bidirectional: k chunks too


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("sms", [132, 2])
@pytest.mark.parametrize("case", MMA_CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_mma_forward_tracks_float64_and_the_float_path(monkeypatch, dtype, tol, sms, case, packed, directions,
                                                       variant):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "persistent")
    monkeypatch.setenv("LSTM_FUSED_EMU_SMS", str(sms))
    monkeypatch.setenv("LSTM_FUSED_EMU_SMEM", "232448")
    args64 = layer_args(*case, 0, packed, torch.float64, seed=sum(case) + sms, directions=directions,
                        peephole=variant[0], coupled=variant[1])
    args = cast_args(args64, dtype)
    ref = fwd_cpu(*args64, False)
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", "1")
    mma = fwd_emu(*args, False)
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", "0")
    flt = fwd_emu(*args, False)
    for name, a, f, r in zip(("output", "h_n", "c_n"), mma[:3], flt[:3], ref[:3]):
        assert a.dtype == dtype, name
        torch.testing.assert_close(a.double(), r, rtol=tol, atol=tol, msg=name)
        torch.testing.assert_close(a.double(), f.double(), rtol=tol / 2, atol=tol / 2, msg=name)


def test_mma_backward_with_k_chunks_and_two_batch_tiles():
    """bfloat16's tensor-core backward with its K staged in chunks and the batch over two N tiles (B > 32), as at H
    1024, B 64 on an H200: here on an emulated device of 4 SMs with 24 KB of shared memory. A wrong B-operand
    stride between the tiles or chunks is off by O(1) against float64."""
    T, B, I, H = 3, 40, 5, 40
    ok, _, _, _, kc, _ = mma_plan(1, H, 4 * H, B, 1, 4, 24000)
    assert ok and kc < 4 * H and B > 32
    args64 = layer_args(T, B, I, H, 0, False, torch.float64, seed=9)
    args = cast_args(args64, torch.bfloat16)
    ref = fwd_cpu(*args64, True)
    grads64 = [torch.randn(t.shape, dtype=torch.float64) for t in ref[:3]]
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    x6, _, h06, c06, w_ih6, w_hh6, _, _, w_hr6, w_ph6, _ = args64
    r = bwd_cpu(*grads64, x6, bs, h06, c06, w_ih6, w_hh6, w_hr6, w_ph6, cpl, ref[0], ref[3], True, True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LSTM_FUSED_EMU_SMS", "4")
        mp.setenv("LSTM_FUSED_EMU_SMEM", "24000")
        mp.setenv("LSTM_FUSED_CUDA_ALGO", "auto")  # the forward does not fit this device: per-step kernels
        fwd = fwd_emu(*args, True)
        with paths_taken() as taken:
            e = bwd_emu(*[t.to(torch.bfloat16) for t in grads64], x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd[0],
                        fwd[3], True, True)
    assert taken["persistent"] == 1, taken
    for a, b in zip([e[0], e[1], e[2], *e[3], *e[4], *e[5]], [r[0], r[1], r[2], *r[3], *r[4], *r[5]]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=0.2, atol=0.2 * scale)


MMA_DEVICES = {"h200": (132, 232448), "2sm": (2, 232448)}


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("sms,smem", [(8, 16000), (4, 21000)])
@pytest.mark.parametrize("packed", [False, True])
def test_mma_k_chunks_track_float64(monkeypatch, dtype, tol, sms, smem, packed):
    # Devices so small that both passes stage their k range in chunks (one M tile per block, or two).
    T, B, I, H = 3, 9, 5, 40
    for ng, K in ((4, H), (1, 4 * H)):
        ok, _, _, _, kc, _ = mma_plan(ng, H, K, B, 1, sms, smem)
        assert ok and kc < K
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "persistent")
    monkeypatch.setenv("LSTM_FUSED_EMU_SMS", str(sms))
    monkeypatch.setenv("LSTM_FUSED_EMU_SMEM", str(smem))
    args64 = layer_args(T, B, I, H, 0, packed, torch.float64, seed=7, peephole=True)
    args = cast_args(args64, dtype)
    ref = fwd_cpu(*args64, True)
    fwd = fwd_emu(*args, True)
    for a, r in zip(fwd[:3], ref[:3]):
        torch.testing.assert_close(a.double(), r, rtol=tol, atol=tol)
    grads64 = [torch.randn(t.shape, dtype=torch.float64) for t in ref[:3]]
    grads = [t.to(dtype) for t in grads64]
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    x6, _, h06, c06, w_ih6, w_hh6, _, _, w_hr6, w_ph6, _ = args64
    r = bwd_cpu(*grads64, x6, bs, h06, c06, w_ih6, w_hh6, w_hr6, w_ph6, cpl, ref[0], ref[3], True, True)
    e = bwd_emu(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd[0], fwd[3], True, True)
    for a, b in zip([e[0], e[1], e[2], *e[3], *e[4], *e[5], *e[7]], [r[0], r[1], r[2], *r[3], *r[4], *r[5], *r[7]]):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol * 4, atol=tol * 4 * scale)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])  # float16: float path
@pytest.mark.parametrize("device", list(MMA_DEVICES))
@pytest.mark.parametrize("case", MMA_CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=["lstm", "peephole+coupled"])
def test_mma_backward_tracks_float64_and_the_float_path(monkeypatch, dtype, tol, device, case, packed, directions,
                                                        variant):
    # The same forward (float path) feeds both backwards; dG rounded to bfloat16 is the MMA's only extra error
    # (float16 backwards always take the float path: its range cannot hold dG).
    sms, smem = MMA_DEVICES[device]
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "persistent")
    monkeypatch.setenv("LSTM_FUSED_EMU_SMS", str(sms))
    monkeypatch.setenv("LSTM_FUSED_EMU_SMEM", str(smem))
    args64 = layer_args(*case, 0, packed, torch.float64, seed=sum(case) + sms, directions=directions,
                        peephole=variant[0], coupled=variant[1])
    args = cast_args(args64, dtype)
    ref = fwd_cpu(*args64, True)
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", "0")
    fwd = fwd_emu(*args, True)
    g = torch.Generator().manual_seed(2)
    grads64 = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in ref[:3]]
    grads = [t.to(dtype) for t in grads64]
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    x6, _, h06, c06, w_ih6, w_hh6, _, _, w_hr6, w_ph6, _ = args64
    r = bwd_cpu(*grads64, x6, bs, h06, c06, w_ih6, w_hh6, w_hr6, w_ph6, cpl, ref[0], ref[3], True, True)
    flt = bwd_emu(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd[0], fwd[3], True, True)
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", "1")
    assert mma_plan(1, case[3], (3 if variant[1] else 4) * case[3], case[1], directions, sms, smem)[0]
    mma = bwd_emu(*grads, x, bs, h0, c0, w_ih, w_hh, w_hr, w_ph, cpl, fwd[0], fwd[3], True, True)

    def flat(e):
        return [e[0], e[1], e[2], *e[3], *e[4], *e[5], *(e[7] or [])]

    for i, (a, f, b) in enumerate(zip(flat(mma), flat(flt), flat(r))):
        assert a.dtype == dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol * 4, atol=tol * 4 * scale, msg=str(i))
        torch.testing.assert_close(a.double(), f.double(), rtol=tol * 2, atol=tol * 2 * scale, msg=str(i))


@pytest.mark.parametrize("algo", ["auto", "persistent"])
def test_empty_batch_runs_without_a_launch(monkeypatch, algo):
    _device(monkeypatch, "h200", algo)
    args = layer_args(3, 0, 4, 5, 0, False, torch.float32, seed=0)
    assert plan(4, 5, 5, 0, 1, 4, 4, *DEVICES["h200"])[0] == 0
    out = fwd_emu(*args, True)
    assert out[0].shape == (3, 0, 5) and out[1].shape == (1, 0, 5)
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    grads = bwd_emu(torch.ones_like(out[0]), torch.ones_like(out[1]), torch.ones_like(out[2]), x, bs, h0, c0, w_ih,
                    w_hh, w_hr, w_ph, cpl, out[0], out[3], True, True)
    assert grads[0].shape == x.shape and not grads[4][0].any()


# ---- GRU ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("mma", ["0", "1"])
@pytest.mark.parametrize("case", MMA_CASES)
def test_persistent_gru_half_types_track_float64(monkeypatch, dtype, tol, mma, case):
    _device(monkeypatch, "5sm")
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", mma)
    T, B, I, H = case
    check_half_layer(gru_layer_args(T, B, I, H, True, torch.float64, seed=4, directions=2), dtype, tol)


# ---- layer stacks: the wavefront (lstm_stack_fwd) -------------------------------------------------------------
stack_cpu = torch.ops.lstm_fused.lstm_stack_fwd.default
stack_emu = torch.ops.lstm_fused_testing.emu_lstm_stack_fwd.default


def _stack_args(L, T, B, I, H, packed, dtype, seed, peephole=False, coupled=False):
    x, bs, *_ = layer_args(T, B, I, H, 0, packed, torch.float64, seed)
    g = torch.Generator().manual_seed(seed + 1)
    k = H ** -0.5
    G = (3 if coupled else 4) * H

    def t(*s, scale=k):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    return [x.to(dtype), bs, t(L, B, H, scale=1), t(L, B, H, scale=1), [t(G, I if l == 0 else H) for l in range(L)],
            [t(G, H) for _ in range(L)], [t(G) for _ in range(L)], [t(G) for _ in range(L)],
            [t(2 if coupled else 3, H, scale=1) for _ in range(L)] if peephole else None, coupled]


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("case", CASES[1:])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=["lstm", "peephole+coupled"])
def test_wavefront_matches_the_cpu_stack(monkeypatch, device, L, case, packed, variant):
    T, B, I, H = case
    sms, smem = DEVICES[device]
    _device(monkeypatch, device)  # forced persistent: the wavefront where it fits, else persistent layer by layer
    args = _stack_args(L, T, B, I, H, packed, torch.float64, seed=sum(case) + L, peephole=variant[0],
                       coupled=variant[1])
    G = (3 if variant[1] else 4) * H
    wavefront = plan(4, H, 2 * H, B, L, 8, 8, sms, smem)[0]
    per_layer = plan(4, H, max(H, I), B, 1, 8, 8, sms, smem)[0] and plan(1, H, G, B, 1, 8, 8, sms, smem)[0]
    if not (wavefront or per_layer):
        with pytest.raises(RuntimeError, match="LSTM_FUSED_CUDA_ALGO=persistent"):
            stack_emu(*args, True)
        return
    for need_workspace in (True, False):
        ref = stack_cpu(*args, need_workspace)
        with paths_taken() as taken:
            got = stack_emu(*args, need_workspace)
        # One wavefront launch where it fits, else a persistent launch per layer: never per-step kernels.
        assert taken == {**dict.fromkeys(taken, 0), **({"wavefront": 1} if wavefront else {"persistent": L})}, taken
        assert_nested_close(list(got[0]), list(ref[0]), 1e-12, "outputs")
        assert_nested_close([got[1], got[2]], [ref[1], ref[2]], 1e-12, "h_n, c_n")
        if need_workspace:
            assert_nested_close(list(got[3]), list(ref[3]), 1e-12, "workspaces")
        else:
            assert all(w.numel() == 0 for w in got[3])


def test_wavefront_devices_reach_the_wavefront():
    # Over the grid above, some runs take the wavefront and some fall back to layer-by-layer launches.
    seen = set()
    for device, (sms, smem) in DEVICES.items():
        for L in (2, 3):
            for T, B, I, H in CASES[1:]:
                seen.add(bool(plan(4, H, 2 * H, B, L, 8, 8, sms, smem)[0]))
    assert seen == {True, False}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("mma", ["0", "1"])
@pytest.mark.parametrize("packed", [False, True])
def test_wavefront_half_types_track_float64(monkeypatch, dtype, tol, mma, packed):
    _device(monkeypatch, "5sm")
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", mma)
    args64 = _stack_args(3, 6, 9, 5, 20, packed, torch.float64, seed=2, peephole=True)
    args = cast_args(args64, dtype)
    ref = stack_cpu(*args64, False)
    got = stack_emu(*args, False)
    for a, b in zip([*got[0], got[1], got[2]], [*ref[0], ref[1], ref[2]]):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


def test_wavefront_step_mode_and_empty_batch(monkeypatch):
    _device(monkeypatch, "h200", "step")
    args = _stack_args(2, 4, 3, 5, 6, False, torch.float64, seed=3)
    assert_nested_close(list(stack_emu(*args, True)[0]), list(stack_cpu(*args, True)[0]), 1e-12, "step mode")
    _device(monkeypatch, "h200", "persistent")
    empty = _stack_args(2, 4, 0, 5, 6, False, torch.float64, seed=3)
    outs, h_n, c_n, _ = stack_emu(*empty, True)
    assert [o.shape for o in outs] == [(4, 0, 6), (4, 0, 6)] and h_n.shape == (2, 0, 6)


stack_bwd_cpu = torch.ops.lstm_fused.lstm_stack_bwd.default
stack_bwd_emu = torch.ops.lstm_fused_testing.emu_lstm_stack_bwd.default


def _stack_grads(args, fwd, seed=5, top_only=False):
    x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ph, coupled = args
    g = torch.Generator().manual_seed(seed)

    def r(t):
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)

    outs, h_n, c_n, wss = fwd
    grad_outs = [r(o) if (not top_only or i == len(outs) - 1) else torch.zeros_like(o) for i, o in enumerate(outs)]
    return [grad_outs, r(h_n), r(c_n), x, bs, h0, c0, w_ih, w_hh, w_ph, coupled, list(outs), list(wss), True, True]


@pytest.mark.parametrize("device", list(DEVICES))
@pytest.mark.parametrize("L", [2, 3])
@pytest.mark.parametrize("case", CASES[1:])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("variant", VARIANTS[::3], ids=["lstm", "peephole+coupled"])
def test_wavefront_backward_matches_the_cpu_stack(monkeypatch, device, L, case, packed, variant):
    T, B, I, H = case
    sms, smem = DEVICES[device]
    G = (3 if variant[1] else 4) * H
    wavefront = plan(1, H, 2 * G, B, L, 8, 8, sms, smem)[0]
    per_layer = plan(1, H, G, B, 1, 8, 8, sms, smem)[0]
    args = _stack_args(L, T, B, I, H, packed, torch.float64, seed=sum(case) + 7 * L, peephole=variant[0],
                       coupled=variant[1])
    fwd = stack_cpu(*args, True)
    _device(monkeypatch, device)
    if not (wavefront or per_layer):
        with pytest.raises(RuntimeError, match="LSTM_FUSED_CUDA_ALGO=persistent"):
            stack_bwd_emu(*_stack_grads(args, fwd))
        return
    for top_only in (False, True):
        gargs = _stack_grads(args, fwd, top_only=top_only)
        ref = stack_bwd_cpu(*gargs)
        with paths_taken() as taken:
            got = stack_bwd_emu(*gargs)
        assert taken == {**dict.fromkeys(taken, 0), **({"wavefront": 1} if wavefront else {"persistent": L})}, taken
        names = ("grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias", "grad_w_ph")
        for name, a, b in zip(names, got, ref):
            assert_nested_close(a, b, 1e-10, name)


def test_wavefront_backward_devices_reach_the_wavefront():
    seen = set()
    for device, (sms, smem) in DEVICES.items():
        for L in (2, 3):
            for T, B, I, H in CASES[1:]:
                seen.add(bool(plan(1, H, 8 * H, B, L, 8, 8, sms, smem)[0]))
    assert seen == {True, False}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("mma", ["0", "1"])
def test_wavefront_backward_half_types_track_float64(monkeypatch, dtype, tol, mma):
    _device(monkeypatch, "5sm")
    monkeypatch.setenv("LSTM_FUSED_EMU_MMA", mma)
    args64 = _stack_args(3, 6, 9, 5, 20, True, torch.float64, seed=2, peephole=True)
    args = cast_args(args64, dtype)
    fwd64 = stack_cpu(*args64, True)
    ref = stack_bwd_cpu(*_stack_grads(args64, fwd64))
    fwd = stack_emu(*args, True)
    gargs = _stack_grads(args64, fwd64)
    gargs = [cast_args(a, dtype) if i < 3 else a for i, a in enumerate(gargs)]
    gargs[3:] = _stack_grads(args, fwd)[3:]
    got = stack_bwd_emu(*gargs)
    flat_g = [got[0], got[1], got[2], *got[3], *got[4], *got[5], *got[6]]
    flat_r = [ref[0], ref[1], ref[2], *ref[3], *ref[4], *ref[5], *ref[6]]
    for a, b in zip(flat_g, flat_r):
        assert a.dtype == dtype
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.double(), b, rtol=tol * 4, atol=tol * 4 * scale)


def test_stack_with_malformed_weights_reports_like_the_layer_op(monkeypatch):
    _device(monkeypatch, "h200")
    args = _stack_args(2, 3, 2, 4, 5, False, torch.float32, seed=0)
    args[5] = [args[5][0][0], args[5][1]]  # W_hh of layer 0 as a vector
    with pytest.raises(RuntimeError):
        stack_emu(*args, True)
    with pytest.raises(RuntimeError):
        stack_cpu(*args, True)


def test_wavefront_backward_empty_output_gradients(monkeypatch):
    _device(monkeypatch, "h200")
    args = _stack_args(3, 5, 4, 3, 7, True, torch.float64, seed=4)
    fwd = stack_cpu(*args, True)
    gargs = _stack_grads(args, fwd, top_only=True)
    empty = list(gargs)
    empty[0] = [g.new_empty(0) for g in gargs[0][:-1]] + [gargs[0][-1]]
    assert plan(1, 7, 56, 4, 3, 8, 8, *DEVICES["h200"])[0]  # the wavefront runs
    ref = stack_bwd_cpu(*gargs)
    got = stack_bwd_emu(*empty)
    for name, a, b in zip(("grad_input", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_bias"), got, ref):
        assert_nested_close(a, b, 1e-10, name)
