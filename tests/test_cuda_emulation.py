"""The CUDA path's logic, run on the CPU: the CUDA driver (buffers, GEMMs, step loop) with each step kernel's
phase functions executed block by block and thread by thread (lstm_fused_testing::emu_*_layer_*), for every cell
(helpers.CELLS). Compared with the CPU kernels at odd sizes that cross the kernels' 32-unit, 8-row and 32-k tiles,
padded and packed, both directions, with and without projection, in every dtype the GPU path supports."""
import pytest
import torch

import lstm_fused  # noqa: F401  (registers the ops)
from helpers import (CELLS, VARIANT_IDS, VARIANTS, bwd_emu, cell_layer_args, check_half_layer, check_layer, fwd_emu,
                     gru_fwd_emu, gru_layer_args, layer_args)

CASES = [  # T, B, I, H, proj
    (1, 1, 1, 1, 0),
    (3, 2, 5, 7, 0),
    (5, 9, 33, 33, 0),
    (4, 17, 3, 40, 0),
    (6, 3, 70, 65, 13),
    (2, 8, 8, 32, 31),
    (7, 10, 4, 9, 4),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_layer_matches_cpu_kernels(case, packed, directions, cell):
    args = cell_layer_args(cell, *case, packed, torch.float64, seed=hash((case, packed, directions)) % 1000,
                           directions=directions)
    check_layer(args, need_grad_inputs=(True, False))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("cell", ["peephole", "gru"])
def test_emulated_cuda_layer_half_types_track_float64(dtype, tol, packed, cell):
    # Half types keep gates and cells in float32; their error against float64 is the storage rounding.
    T, B, I, H, proj = 6, 5, 12, 20, 7
    args64 = cell_layer_args(cell, T, B, I, H, proj, packed, torch.float64, seed=3, directions=2)
    check_half_layer(args64, dtype, tol, ws_float32=True)


def test_emulated_backward_rejects_missing_workspace():
    args = layer_args(3, 2, 4, 5, 0, False, torch.float32, seed=0)
    out, h_n, c_n, ws = fwd_emu(*args, False)
    assert ws.numel() == 0
    x, bs, h0, c0, w_ih, w_hh, _, _, w_hr, w_ph, cpl = args
    with pytest.raises(RuntimeError, match="workspace"):
        bwd_emu(torch.ones_like(out), torch.ones_like(h_n), torch.ones_like(c_n), x, bs, h0, c0, w_ih, w_hh, w_hr,
                w_ph, cpl, out, ws, True, True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_emulated_inference_without_workspace_equals_training_forward(packed, directions, variant):
    # Inference alternates two step buffers instead of keeping the whole workspace: same bits.
    args = layer_args(9, 11, 5, 40, 7, packed, torch.float32, seed=9, directions=directions, peephole=variant[0],
                      coupled=variant[1])
    full = fwd_emu(*args, True)
    lean = fwd_emu(*args, False)
    assert lean[3].numel() == 0
    for a, b in zip(lean[:3], full[:3]):
        assert torch.equal(a, b)
    gargs = gru_layer_args(9, 11, 5, 40, packed, torch.float32, seed=9, directions=directions)
    full = gru_fwd_emu(*gargs, True)
    lean = gru_fwd_emu(*gargs, False)
    assert lean[2].numel() == 0 and torch.equal(lean[0], full[0]) and torch.equal(lean[1], full[1])


@pytest.mark.parametrize("algo", ["step", "gemm"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_per_step_paths_match_cpu_kernels(monkeypatch, algo, case, packed, directions, cell):
    # The per-step launches, with the step kernel's own reduction (step) or a cuBLAS GEMM per step feeding the
    # cell (gemm, what auto runs for batches over 64), with and without projection.
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", algo)
    args = cell_layer_args(cell, *case, packed, torch.float64, seed=hash((case, packed, directions, 1)) % 1000,
                           directions=directions)
    check_layer(args, inference=True)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_gemm_path_half_types_track_float64(monkeypatch, dtype, tol):
    monkeypatch.setenv("LSTM_FUSED_CUDA_ALGO", "auto")  # batch 70 > 64: the GEMM path
    args64 = layer_args(5, 70, 12, 20, 7, True, torch.float64, seed=8, directions=2, peephole=True)
    check_half_layer(args64, dtype, tol, backward=False)
