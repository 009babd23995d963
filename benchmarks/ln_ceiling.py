"""What bounds layer-norm LSTM training's speed-up over the plain loop on this machine (issue 12's target).

    python benchmarks/ln_ceiling.py [--shapes 16x128,16x512,64x256] [--T 100] [--rounds 5] [--device cpu]

Per shape (batch x hidden, input = hidden, one layer, training: forward, then backward of out.sum() + h.sum()),
in interleaved rounds (best time of each), on the same input:
  ln        lstm_fused.LSTM(layer_norm=True)
  loop      the plain-PyTorch loop of lstm_fused.reference on that module (what users run today: a cell per step,
            F.layer_norm on both products and on c)
  plain     lstm_fused.LSTM() without layer norm: the same GEMMs and no norms, so `loop / plain` is the most any
            layer-norm kernel built on these GEMMs could reach against this loop
  nn        nn.LSTM (oneDNN on the CPU, cuDNN on CUDA), for scale
  floor     the six products' FLOPs (input projection and h·W_hhᵀ forward; dX, dW_ih, dh and dW_hh backward:
            12·T·B·4H·H in all) at the rate of one large torch.mm measured in the same sitting: no implementation
            doing these products runs faster, so `loop / floor` bounds every one
Prints a markdown table; --json writes the rows.
"""
import argparse
import json
import time

import torch

import lstm_fused
from lstm_fused import reference


def gemm_rate(device, n=2048, reps=5):
    """FLOP/s of one large square float32 torch.mm on `device`, best of `reps`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def training_flops(T, B, H):
    """The six products of one layer's training call, input size H: each is 2·T·B·4H·H multiply-adds' FLOPs."""
    return 6 * 2 * T * B * 4 * H * H


def measure(T, B, H, rounds, device, rate):
    torch.manual_seed(0)
    x = torch.randn(T, B, H, device=device)
    ln = lstm_fused.LSTM(H, H, layer_norm=True).to(device)
    plain = lstm_fused.LSTM(H, H).to(device)
    nn_lstm = torch.nn.LSTM(H, H).to(device)
    models = {"ln": ln, "loop": lambda x: reference.run_lstm(ln, x), "plain": plain, "nn": nn_lstm}

    def train(m):
        out, (h, _) = m(x)
        (out.sum() + h.sum()).backward()

    best = {}
    for m in models.values():
        train(m)  # warm-up: packing, allocator, first-call costs
    for _ in range(rounds):
        for name, m in models.items():
            sync(device)
            t0 = time.perf_counter()
            train(m)
            sync(device)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    row = {"T": T, "B": B, "H": H, **{f"{k}_ms": v * 1e3 for k, v in best.items()}}
    row["floor_ms"] = training_flops(T, B, H) / rate * 1e3
    row["ln_vs_loop"] = best["loop"] / best["ln"]
    row["loop_vs_plain"] = best["loop"] / best["plain"]
    row["loop_vs_floor"] = row["loop_ms"] / row["floor_ms"]
    return row


def table(rows, rate):
    lines = [f"GEMM rate (torch.mm 2048³, float32): {rate / 1e9:.1f} GFLOP/s", "",
             "| T B H | ln ms | loop ms | plain ms | nn ms | floor ms | ln vs loop | loop / plain | loop / floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| T{r['T']} B{r['B']} H{r['H']} | {r['ln_ms']:.1f} | {r['loop_ms']:.1f} | {r['plain_ms']:.1f} | "
                     f"{r['nn_ms']:.1f} | {r['floor_ms']:.1f} | {r['ln_vs_loop']:.2f}x | {r['loop_vs_plain']:.2f}x | "
                     f"{r['loop_vs_floor']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="16x128,16x512,64x128,64x256,64x512", help="BxH, comma-separated")
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    rate = gemm_rate(args.device)
    rows = []
    for shape in args.shapes.split(","):
        B, H = (int(v) for v in shape.lower().split("x"))
        rows.append(measure(args.T, B, H, args.rounds, args.device, rate))
        print(table(rows[-1:], rate).splitlines()[-1], flush=True)
    print()
    print(table(rows, rate))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gemm_flops_per_s": rate, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
