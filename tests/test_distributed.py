"""lstm_fused modules under torch.distributed on the CPU: DistributedDataParallel and FSDP2 (`fully_shard`) training
with 2 gloo processes over loopback equals single-process training on the same global batch.

Each test starts 2 worker processes (this file run as a script, so nothing depends on how pytest imported it)
that meet through a TCPStore the test process serves on 127.0.0.1 at a port the OS picks (no port race). Each rank
trains on its half of the global batch; rank 0 writes the parameters after the steps to a file in tmp_path, and the
test compares them with the same model trained in this process on the whole batch. Workers have a hard deadline:
a hang is killed and reported as a failure, never left to block CI.
"""
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from torch import nn

import lstm_fused

WORLD = 2
GLOBAL_BATCH, SEQ, IN, HID, OUT = 8, 5, 6, 8, 3
STEPS = 3
TIMEOUT_S = 90  # per launch; a normal launch takes a few seconds

_skip = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                           reason="torch.distributed with the gloo backend is not available")


class Net(nn.Module):
    """Every lstm_fused module kind: a 2-layer bidirectional LSTM (one layer op per layer), a 2-layer
    unidirectional LSTM (the stack op), a 2-layer GRU, and an LSTMCell and a GRUCell each applied over several
    steps (parameters used more than once per forward)."""

    def __init__(self):
        super().__init__()
        self.lstm = lstm_fused.LSTM(IN, HID, num_layers=2, bidirectional=True, batch_first=True)
        self.stack = lstm_fused.LSTM(2 * HID, HID, num_layers=2, batch_first=True)
        self.gru = lstm_fused.GRU(HID, HID, num_layers=2, batch_first=True)
        self.cell = lstm_fused.LSTMCell(HID, HID)
        self.gcell = lstm_fused.GRUCell(HID, HID)
        self.head = nn.Linear(HID, OUT)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.stack(y)
        y, h_n = self.gru(y)
        h, c = h_n[-1], torch.zeros_like(h_n[-1])
        for t in range(SEQ - 2, SEQ):
            h, c = self.cell(y[:, t], (h, c))
        g = h
        for t in range(SEQ - 2, SEQ):
            g = self.gcell(y[:, t], g)
        return self.head(g + c)


def _make_model():
    torch.manual_seed(0)
    return Net()


def _data():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(GLOBAL_BATCH, SEQ, IN, generator=g) for _ in range(STEPS)]
    ys = [torch.randn(GLOBAL_BATCH, OUT, generator=g) for _ in range(STEPS)]
    return xs, ys


def _train(model, xs, ys, sl=slice(None)):
    # The loss is a mean over the (local) batch: averaging equal halves' gradients across ranks, as DDP and FSDP
    # do, gives the gradient of the mean over the global batch.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x[sl]), y[sl])
        loss.backward()
        opt.step()


def _full(p):
    """A parameter as a plain tensor (FSDP2's are sharded DTensors: gathered, a collective on every rank)."""
    p = p.detach()
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _worker(mode, rank, port, out_path):
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model = _make_model()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard
            from torch.distributed.tensor import DTensor

            mesh = init_device_mesh("cpu", (WORLD,))
            for m in (model.lstm, model.stack, model.gru, model.cell, model.gcell):
                fully_shard(m, mesh=mesh)
            wrapped = fully_shard(model, mesh=mesh)
            unsharded = [n for n, p in model.named_parameters() if not isinstance(p, DTensor)]
            assert not unsharded, f"fully_shard left parameters unsharded: {unsharded}"
        xs, ys = _data()
        per = GLOBAL_BATCH // WORLD
        _train(wrapped, xs, ys, slice(rank * per, (rank + 1) * per))
        params = {n: _full(p).clone() for n, p in model.named_parameters()}
        if rank == 0:
            torch.save(params, out_path + ".tmp")
            os.replace(out_path + ".tmp", out_path)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave only when every rank has torn its process group down: a rank exiting while its peer is still
    # closing the gloo connections can abort the peer ("terminate called without an active exception").
    store.add("torn_down", 1)
    deadline = time.monotonic() + 30
    while store.add("torn_down", 0) < WORLD and time.monotonic() < deadline:
        time.sleep(0.01)


def _launch(mode, tmp_path):
    # The test process serves the rendezvous store on a port the OS picks: no free-port race.
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    out_path = str(tmp_path / f"{mode}_params.pt")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    logs, procs = [], []
    for rank in range(WORLD):
        log = open(tmp_path / f"{mode}_rank{rank}.log", "w+")
        logs.append(log)
        cmd = [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), mode, str(rank), str(store.port),
               out_path]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # Until both exit, one fails (its peer would only wait for it) or the deadline passes.
        while any(p.poll() is None for p in procs) and not any(p.poll() for p in procs):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        timed_out = any(p.poll() is None for p in procs) and not any(p.poll() for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        del store
    texts = []
    for rank, log in enumerate(logs):
        log.seek(0)
        texts.append(f"--- rank {rank} (rc {procs[rank].returncode}) ---\n{log.read()[-4000:]}")
        log.close()
    report = "\n".join(texts)
    assert not timed_out, f"{mode}: workers did not finish within {TIMEOUT_S} s (killed)\n{report}"
    assert all(p.returncode == 0 for p in procs), f"{mode}: a worker failed\n{report}"
    return torch.load(out_path)


def _reference():
    model = _make_model()
    xs, ys = _data()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, xs, ys)
    return initial, {n: p.detach() for n, p in model.named_parameters()}


def _compare(got, initial, expected):
    assert list(got) == list(expected)
    for name, ref in expected.items():
        # The steps must have moved every parameter, or equality would prove nothing about its gradient.
        assert not torch.equal(ref, initial[name]), f"{name} did not change in training"
        assert got[name].shape == ref.shape, name
        torch.testing.assert_close(got[name], ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@_skip
def test_ddp_matches_single_process(tmp_path):
    got = _launch("ddp", tmp_path)
    _compare(got, *_reference())


@_skip
def test_fsdp2_fully_shard_matches_single_process(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("this torch has no FSDP2 fully_shard")
    got = _launch("fsdp2", tmp_path)
    _compare(got, *_reference())


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
