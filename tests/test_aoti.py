"""AOTInductor: a torch.export'ed model holding lstm_fused modules (dynamic sequence length) compiles with
aoti_compile_and_package on the CPU, and the package, loaded in a fresh process that imports lstm_fused (which
registers the ops the package calls through its proxy executor), equals eager at two sequence lengths.

One model covers a multi-layer bidirectional LSTM with proj_size, a unidirectional stack (the lstm_stack_fwd
op, with peepholes), a bidirectional GRU and both cells, so one C++ compile (the slow part) serves all."""
import os
import subprocess
import sys
import textwrap

import torch
from torch import nn

import lstm_fused

I, H = 4, 6


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = lstm_fused.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
        self.stack = lstm_fused.LSTM(6, H, num_layers=2, peephole=True, batch_first=True)
        self.gru = lstm_fused.GRU(H, H, bidirectional=True, batch_first=True)
        self.lstm_cell = lstm_fused.LSTMCell(2 * H, H)
        self.gru_cell = lstm_fused.GRUCell(H, H)
        self.fc = nn.Linear(2 * H, 2)

    def forward(self, x, h0, c0):
        y, (h, c) = self.lstm(x, (h0, c0))
        y, (h_s, c_s) = self.stack(y)
        y, h_g = self.gru(y)
        h1, c1 = self.lstm_cell(y[:, -1], (h_s[-1], c_s[-1]))
        h2 = self.gru_cell(h1, h_g[0])
        return self.fc(y), h, c, h2, c1


_LOAD = textwrap.dedent("""
    import sys
    import torch
    import lstm_fused  # registers lstm_fused::* for the package's proxy executor
    runner = torch._inductor.aoti_load_package(sys.argv[1])
    for inputs, want in torch.load(sys.argv[2]):
        got = runner(*inputs)
        assert len(got) == len(want)
        for k, (a, b) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b, msg=lambda m: f"T={inputs[0].shape[1]} output {k}: {m}")
    print("AOTI_OK")
""")


def test_aoti_package_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = Model().eval()
    batch = 3

    def inputs(T, seed):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, T, I, generator=g), torch.randn(4, batch, 3, generator=g),
                torch.randn(4, batch, H, generator=g))

    T = torch.export.Dim("T", min=2, max=256)
    ep = torch.export.export(model, inputs(5, 0), dynamic_shapes=({1: T}, None, None))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "model.pt2"))
    cases = []
    for T_run, seed in ((3, 1), (17, 2)):  # neither is the example length
        args = inputs(T_run, seed)
        with torch.no_grad():
            want = model(*args)
        cases.append((args, want))
    torch.save(cases, tmp_path / "cases.pt")
    env = dict(os.environ)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor_cache"))
    proc = subprocess.run([sys.executable, "-c", _LOAD, path, str(tmp_path / "cases.pt")], capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0 and "AOTI_OK" in proc.stdout, proc.stdout + proc.stderr
