"""lstm_fused.LSTM against nn.LSTM (oneDNN on CPU, cuDNN on CUDA) on the present device.

Inference (eval, no grad) and training (forward + backward) over a grid of shapes, padded and packed.
Both models run interleaved in the same process on the same inputs (rotated so caches do not flatter);
the reported ratio is nn.LSTM time / lstm_fused time (> 1 means lstm_fused is faster).
Results: a table on stdout, and JSON + markdown under --out (default benchmarks/out/).
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import lstm_fused

# (T, B, I, H, layers, bidirectional, packed)
FULL_GRID = [
    (100, 1, 64, 64, 1, False, False),
    (100, 1, 256, 256, 1, False, False),
    (100, 1, 512, 512, 1, False, False),
    (100, 16, 128, 128, 1, False, False),
    (100, 16, 256, 256, 1, False, False),
    (100, 16, 512, 512, 1, False, False),
    (200, 64, 64, 64, 1, False, False),
    (200, 64, 256, 256, 1, False, False),
    (100, 64, 512, 512, 1, False, False),
    (100, 16, 256, 256, 2, True, False),
    (100, 16, 256, 256, 1, False, True),
    (100, 64, 256, 256, 2, False, True),
]
QUICK_GRID = [
    (100, 1, 64, 64, 1, False, False),
    (100, 16, 256, 256, 1, False, False),
    (100, 64, 256, 256, 1, False, False),
    (100, 16, 256, 256, 2, True, False),
    (100, 16, 256, 256, 1, False, True),
]
GPU_GRID = [
    (512, 1, 256, 256, 1, False, False),
    (512, 16, 512, 512, 1, False, False),
    (512, 64, 1024, 1024, 1, False, False),
    (512, 16, 512, 512, 2, True, False),
    (512, 16, 512, 512, 1, False, True),
]


def flops_forward(T, B, I, H, layers, bidir):
    d = 2 if bidir else 1
    total = 0
    for layer in range(layers):
        inp = I if layer == 0 else d * H
        total += d * 8 * T * B * H * (inp + H)
    return total


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def bench_case(case, mode, device, dtype, min_time, max_reps, timer):
    T, B, I, H, layers, bidir, packed = case
    torch.manual_seed(0)
    ref = nn.LSTM(I, H, num_layers=layers, bidirectional=bidir, device=device, dtype=dtype)
    ours = lstm_fused.LSTM(I, H, num_layers=layers, bidirectional=bidir, device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    training = mode == "training"
    ref.train(training)
    ours.train(training)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    lengths[0] = T
    inputs = [torch.randn(T, B, I, generator=gen).to(device=device, dtype=dtype) for _ in range(3)]
    if training:
        for x in inputs:
            x.requires_grad_()

    def step(model, x):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        if training:
            out, (h, c) = model(inp)
            data = out.data if packed else out
            (data.sum() + h.sum() + c.sum()).backward()
        else:
            with torch.no_grad():
                model(inp)

    times = {"nn.LSTM": [], "lstm_fused": []}
    models = {"nn.LSTM": ref, "lstm_fused": ours}
    for name, m in models.items():  # warm-up (and oneDNN/cuDNN plan creation)
        for x in inputs[:2]:
            step(m, x)
    spent, reps = 0.0, 0
    while (spent < min_time or reps < 3) and reps < max_reps:
        x = inputs[reps % len(inputs)]
        for name in (("nn.LSTM", "lstm_fused") if reps % 2 == 0 else ("lstm_fused", "nn.LSTM")):
            dt = timer(lambda: step(models[name], x))
            times[name].append(dt)
            spent += dt
        reps += 1
    med = {k: statistics.median(v) for k, v in times.items()}
    fl = flops_forward(T, B, I, H, layers, bidir) * (3 if training else 1)
    return {
        "T": T, "B": B, "I": I, "H": H, "layers": layers, "bidirectional": bidir, "packed": packed,
        "mode": mode, "dtype": str(dtype).replace("torch.", ""), "reps": reps,
        "nn_ms": med["nn.LSTM"] * 1e3, "fused_ms": med["lstm_fused"] * 1e3,
        "speedup": med["nn.LSTM"] / med["lstm_fused"],
        "fused_gflops": fl / med["lstm_fused"] / 1e9, "nn_gflops": fl / med["nn.LSTM"] / 1e9,
    }


def geomean(xs):
    xs = list(xs)
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp()) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small grid that finishes in about a minute on 2 CPU cores")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    ap.add_argument("--modes", default="inference,training")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timed runs per case and model")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not lstm_fused.has_cuda_kernels():
        sys.exit("bench_lstm: this lstm_fused build has no CUDA kernels; rebuild with CUDA (see README) or pass --device cpu")
    dtype = getattr(torch, args.dtype)
    grid = GPU_GRID if device.type == "cuda" else (QUICK_GRID if args.quick else FULL_GRID)
    min_time = args.min_time if args.min_time is not None else (0.25 if args.quick else 1.0)
    modes = args.modes.split(",")
    timer = Timer(device)

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lstm_fused": lstm_fused.__version__,
        "dtype": args.dtype,
    }
    print(f"# lstm_fused vs nn.LSTM on {device.type} ({meta['device']}, {meta['threads']} threads), {args.dtype}, torch {torch.__version__}")
    header = "| mode | T | B | I | H | layers | dirs | packed | nn.LSTM ms | lstm_fused ms | speedup | fused GFLOP/s |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    rows = []
    total = len(grid) * len(modes)
    for i, case in enumerate(grid):
        for mode in modes:
            r = bench_case(case, mode, device, dtype, min_time, 200, timer)
            rows.append(r)
            print(f"| {mode} | {r['T']} | {r['B']} | {r['I']} | {r['H']} | {r['layers']} | {2 if r['bidirectional'] else 1} | "
                  f"{'yes' if r['packed'] else 'no'} | {r['nn_ms']:.3f} | {r['fused_ms']:.3f} | {r['speedup']:.2f}x | "
                  f"{r['fused_gflops']:.1f} |", flush=True)
            print(f"  [{len(rows)}/{total}]", file=sys.stderr, flush=True)
    summary = {mode: geomean(r["speedup"] for r in rows if r["mode"] == mode) for mode in modes}
    for mode, g in summary.items():
        print(f"geometric mean speedup ({mode}): {g:.2f}x")
    os.makedirs(args.out, exist_ok=True)
    stamp = f"{device.type}_{args.dtype}{'_quick' if args.quick else ''}"
    with open(os.path.join(args.out, f"bench_{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    print(f"results written to {os.path.join(args.out, f'bench_{stamp}.json')}")


if __name__ == "__main__":
    main()
