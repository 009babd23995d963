"""A small forward+backward over every CUDA kernel variant, for compute-sanitizer (memcheck, racecheck,
synccheck): per-step kernels (LSTM_FUSED_CUDA_ALGO=step), the persistent kernel (auto picks it for these
small batches without projection) and the per-step GEMM path (LSTM_FUSED_CUDA_ALGO=gemm), zoneout on each; layer norm
(the GEMM path's row kernels) with every option."""
import os

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused

torch.manual_seed(0)
for algo in ("step", "auto"):
    os.environ["LSTM_FUSED_CUDA_ALGO"] = algo
    for dtype in (torch.float32, torch.bfloat16):
        for proj, variant in ((0, {}), (3, {}), (0, dict(peephole=True, coupled=True))):
            m = lstm_fused.LSTM(5, 37, num_layers=2, bidirectional=True, proj_size=proj, **variant).cuda().to(dtype)
            x = torch.randn(6, 9, 5, device="cuda", dtype=dtype, requires_grad=True)
            out, (h, c) = m(x)
            (out.float().sum() + h.float().sum() + c.float().sum()).backward()
            packed = pack_padded_sequence(x, torch.tensor([6, 1, 4, 6, 2, 3, 5, 6, 1]), enforce_sorted=False)
            out, (h, c) = m(packed)
            (out.data.float().sum() + h.float().sum()).backward()
    stack = lstm_fused.LSTM(5, 37, num_layers=3).cuda()  # unidirectional stack: the wavefront launch
    out, (h, c) = stack(torch.randn(6, 9, 5, device="cuda"))
    (out.sum() + h.sum() + c.sum()).backward()
    g = lstm_fused.GRU(5, 37, bidirectional=True).cuda()
    out, h = g(torch.randn(6, 9, 5, device="cuda"))
    (out.sum() + h.sum()).backward()
# The per-step GEMM path (auto's choice above batch 64): cuBLAS for h·W_hhᵀ, then the cell launches.
os.environ["LSTM_FUSED_CUDA_ALGO"] = "gemm"
for m in (lstm_fused.LSTM(5, 37, bidirectional=True, proj_size=3).cuda(), lstm_fused.GRU(5, 37).cuda()):
    out, state = m(torch.randn(4, 70, 5, device="cuda", requires_grad=True))
    (out.sum() + (state[0] if isinstance(state, tuple) else state).sum()).backward()
# Zoneout (masks read through strides, the projection's zoneout launch, the backward's carry) on every path.
for algo in ("step", "auto", "gemm"):
    os.environ["LSTM_FUSED_CUDA_ALGO"] = algo
    for m in (lstm_fused.LSTM(5, 37, bidirectional=True, zoneout=0.2, zoneout_cell=0.3).cuda(),
              lstm_fused.LSTM(5, 37, proj_size=3, zoneout=0.2, zoneout_cell=0.3).cuda(),
              lstm_fused.GRU(5, 37, bidirectional=True, zoneout=0.2).cuda()):
        if algo == "auto" and m.proj_size:
            continue
        for training in (True, False):
            m.train(training)
            x = torch.randn(6, 9, 5, device="cuda", requires_grad=True)
            packed = pack_padded_sequence(x, torch.tensor([6, 1, 4, 6, 2, 3, 5, 6, 1]), enforce_sorted=False)
            out, state = m(packed)
            (out.data.sum() + (state[0] if isinstance(state, tuple) else state).sum()).backward()
# Layer norm: the row kernels (a block per row; H = 300 > the block's 256 threads, so every thread takes several
# elements), with a projection, the variants and zoneout, padded and packed, float32 and bfloat16, training and eval.
os.environ["LSTM_FUSED_CUDA_ALGO"] = "auto"
for dtype in (torch.float32, torch.bfloat16):
    for m in (lstm_fused.LSTM(5, 300, bidirectional=True, layer_norm=True, peephole=True, zoneout=0.2,
                              zoneout_cell=0.3),
              lstm_fused.LSTM(5, 300, proj_size=7, layer_norm=True, coupled=True, zoneout=0.2),
              lstm_fused.GRU(5, 300, bidirectional=True, layer_norm=True, zoneout=0.2)):
        m = m.cuda().to(dtype)
        for training in (True, False):
            m.train(training)
            x = torch.randn(6, 9, 5, device="cuda", dtype=dtype, requires_grad=True)
            packed = pack_padded_sequence(x, torch.tensor([6, 1, 4, 6, 2, 3, 5, 6, 1]), enforce_sorted=False)
            for inp in (x, packed):
                out, state = m(inp)
                data = out.data if inp is packed else out
                (data.float().sum() + (state[0] if isinstance(state, tuple) else state).float().sum()).backward()
torch.cuda.synchronize()
print("sanitizer case done")
