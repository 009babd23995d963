"""A small forward+backward over every CUDA kernel variant, for compute-sanitizer (memcheck, racecheck)."""
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    for proj in (0, 3):
        m = lstm_fused.LSTM(5, 37, num_layers=2, bidirectional=True, proj_size=proj).cuda().to(dtype)
        x = torch.randn(6, 9, 5, device="cuda", dtype=dtype, requires_grad=True)
        out, (h, c) = m(x)
        (out.float().sum() + h.float().sum() + c.float().sum()).backward()
        packed = pack_padded_sequence(x, torch.tensor([6, 1, 4, 6, 2, 3, 5, 6, 1]), enforce_sorted=False)
        out, (h, c) = m(packed)
        (out.data.float().sum() + h.float().sum()).backward()
torch.cuda.synchronize()
print("sanitizer case done")
