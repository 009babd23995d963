"""The lstm_fused benchmark suite: lstm_fused against its baselines on the present device.

Baselines, all measured in the same process on the same inputs (interleaved, rotated, medians):
  nn        nn.LSTM / nn.GRU (oneDNN or PyTorch's CPU kernels on the CPU, cuDNN on CUDA); for the weight-drop
            rows nn's module called with its weight_hh dropped for the call (AWD-LSTM's WeightDrop, functionally)
  loop      the plain-PyTorch loop of lstm_fused.reference (the only option for peephole/coupled LSTMs, zoneout
            and layer norm, which nn does not have)
  loop+c    that loop under torch.compile (full grid only: it unrolls T steps and compiles slowly)
  step      (CUDA) lstm_fused itself with its per-step kernels (LSTM_FUSED_CUDA_ALGO=step): what the persistent
            kernel, which auto picks where it can run, gains over them
Speedup = baseline time / lstm_fused time (> 1: lstm_fused is faster). Modes: inference (eval, no grad) and
training (forward + backward). Peak memory is what one call adds above what was allocated before it: on CUDA the
caching allocator's peak, on the CPU (Linux) the growth of the resident set, after returning freed heap memory
to the system so the call's allocations show. Results: a table on stdout, and JSON, CSV, markdown and PNG plots
(when matplotlib is installed) under --out.
"""
import argparse
import contextlib
import csv
import ctypes
import datetime
import gc
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
from lstm_fused import reference


def case(kind, T, B, H, I=None, layers=1, bidir=False, packed=False):
    return dict(kind=kind, T=T, B=B, I=I or H, H=H, layers=layers, bidir=bidir, packed=packed)


def cpu_grid(quick):
    if quick:
        return [case("lstm", 100, 1, 64), case("lstm", 100, 16, 256), case("lstm", 100, 64, 256),
                case("lstm", 100, 16, 256, packed=True), case("gru", 100, 16, 256),
                case("lstm-peephole", 100, 16, 128), case("lstm-coupled", 100, 16, 128)]
    grid = [case("lstm", T, B, H) for T in (100,) for B in (1, 16, 64) for H in (64, 256, 512)]
    grid += [case("lstm", 200, 16, 256), case("lstm", 100, 16, 256, layers=2, bidir=True)]
    grid += [case("lstm", 100, 16, 256, I=I) for I in (32, 1024)]  # input size other than the hidden size
    grid += [case("lstm", 100, B, 256, packed=True) for B in (16, 64)]
    grid += [case("gru", 100, B, H) for B in (1, 16, 64) for H in (64, 256)]
    grid += [case(k, 100, B, H) for k in ("lstm-peephole", "lstm-coupled") for B in (1, 16) for H in (64, 256)]
    grid += [case("lstm-weightdrop", 100, B, H) for B, H in ((16, 256), (64, 512))]
    grid += [case("gru-weightdrop", 100, 16, 256)]
    grid += [case("lstm-zoneout", 100, B, H) for B, H in ((16, 256), (64, 512))]
    grid += [case("gru-zoneout", 100, 16, 256)]
    grid += [case("lstm-layernorm", 100, B, H) for B, H in ((16, 128), (16, 512), (64, 256))]
    grid += [case("gru-layernorm", 100, 16, 256)]
    return grid


def gpu_grid(quick):
    grid = [case("lstm", 512, B, H) for B in (1, 16, 64) for H in (256, 1024)]
    grid += [case("lstm", 512, 256, 1024), case("lstm", 512, 16, 512, layers=2, bidir=True),
             case("lstm", 512, 16, 512, layers=3), case("lstm", 512, 16, 1024, I=256),
             case("lstm", 512, 16, 512, packed=True), case("gru", 512, 16, 512),
             case("lstm-peephole", 512, 16, 512), case("lstm-coupled", 512, 16, 512),
             case("lstm-weightdrop", 512, 16, 512), case("lstm-zoneout", 512, 16, 512), case("gru-zoneout", 512, 16, 512)]
    return grid[:6] + [case("lstm", 512, 16, 512, layers=3), case("lstm", 512, 256, 1024)] if quick else grid


def flops_forward(c):
    d = 2 if c["bidir"] else 1
    gates = 3 if c["kind"].startswith("gru") or c["kind"] == "lstm-coupled" else 4
    total = 0
    for layer in range(c["layers"]):
        inp = c["I"] if layer == 0 else d * c["H"]
        total += d * 2 * gates * c["T"] * c["B"] * c["H"] * (inp + c["H"])
    return total


class WithAlgo:
    """lstm_fused under a fixed LSTM_FUSED_CUDA_ALGO. The ops read it on every call, the backward's included, so
    a timed step enters it (`with model:`) around forward and backward alike."""

    def __init__(self, model, algo):
        self.model, self.algo = model, algo

    def __call__(self, x):
        return self.model(x)

    def __enter__(self):
        self.saved = os.environ.get("LSTM_FUSED_CUDA_ALGO")
        os.environ["LSTM_FUSED_CUDA_ALGO"] = self.algo
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            del os.environ["LSTM_FUSED_CUDA_ALGO"]
        else:
            os.environ["LSTM_FUSED_CUDA_ALGO"] = self.saved


WEIGHT_DROP = 0.5  # the weight-drop rows' probability (AWD-LSTM uses 0.5)
ZONEOUT = 0.1  # the zoneout rows' probability, on h and (LSTM) on c (Tacotron 2 uses 0.1)


class NNWeightDrop(nn.Module):
    """nn's module with each weight_hh dropped for the call in training, as AWD-LSTM's WeightDrop does it (here
    functionally, so the parameters stay as they are)."""

    def __init__(self, module, p):
        super().__init__()
        self.module, self.p = module, p

    def forward(self, x):
        params = {n: nn.functional.dropout(w, self.p, self.training) if n.startswith("weight_hh") else w
                  for n, w in self.module.named_parameters()}
        return torch.func.functional_call(self.module, params, (x,))


def make_models(c, device, dtype):
    kind, _, option = c["kind"].partition("-")
    kw = dict(num_layers=c["layers"], bidirectional=c["bidir"], device=device, dtype=dtype)
    if option == "weightdrop":
        kw["weight_drop"] = WEIGHT_DROP
    torch.manual_seed(0)
    zoneout = dict(zoneout=ZONEOUT, **(dict(zoneout_cell=ZONEOUT) if kind == "lstm" else {}))
    variant = {"peephole": dict(peephole=True), "coupled": dict(coupled=True), "zoneout": zoneout,
               "layernorm": dict(layer_norm=True)}.get(option, {})
    ours = (lstm_fused.GRU if kind == "gru" else lstm_fused.LSTM)(c["I"], c["H"], **kw, **variant)
    run_ref = reference.run_gru if kind == "gru" else reference.run_lstm
    loop = lambda x: run_ref(ours, x)  # noqa: E731
    baselines = {"loop": loop}
    if not variant:  # nn has no peephole or coupled LSTM, no zoneout and no layer norm
        kw.pop("weight_drop", None)
        ref = (nn.GRU if kind == "gru" else nn.LSTM)(c["I"], c["H"], **kw)
        ref.load_state_dict(ours.state_dict())
        baselines = {"nn": NNWeightDrop(ref, WEIGHT_DROP) if option == "weightdrop" else ref, "loop": loop}
    if device.type == "cuda":
        baselines["step"] = WithAlgo(ours, "step")
    return ours, baselines


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


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return None


def cpu_peak_bytes(fn):
    """Resident-set growth during fn() (Linux): freed heap memory is handed back first (malloc_trim) and the
    high-water mark reset (clear_refs 5), so the call's own allocations fault in and show. None elsewhere."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS:")
    except (OSError, AttributeError):
        return None
    fn()
    peak = _status_kb("VmHWM:")
    return None if base is None or peak is None else max(0, peak - base) * 1024


def cuda_peak_bytes(fn):
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return torch.cuda.max_memory_allocated() - base


def bench_case(c, mode, device, dtype, min_time, timer, with_compiled_loop, wanted=("nn", "loop")):
    ours, baselines = make_models(c, device, dtype)
    baselines = {k: v for k, v in baselines.items() if k in wanted}
    if with_compiled_loop and "loop" in baselines:
        baselines["loop+c"] = torch.compile(baselines["loop"])
    training = mode == "training"
    for m in [ours, *baselines.values()]:
        if isinstance(m, nn.Module):
            m.train(training)
    gen = torch.Generator().manual_seed(1)
    T, B = c["T"], c["B"]
    lengths = torch.randint(T // 2, T + 1, (B,), generator=gen)
    lengths[0] = T
    inputs = [torch.randn(T, B, c["I"], generator=gen).to(device=device, dtype=dtype).requires_grad_(training)
              for _ in range(3)]

    def step(model, x):
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if c["packed"] else x
        with model if isinstance(model, WithAlgo) else contextlib.nullcontext():
            if training:
                out, state = model(inp)
                data = out.data if c["packed"] else out
                h = state if isinstance(state, torch.Tensor) else state[0]
                (data.float().sum() + h.float().sum()).backward()
            else:
                with torch.no_grad():
                    model(inp)

    models = {"lstm_fused": ours, **baselines}
    for m in models.values():  # warm-up (plan creation, compilation)
        for x in inputs[:2]:
            step(m, x)
    peak = {}  # one untimed call each
    for name, m in models.items():
        if timer.cuda:
            peak[name] = cuda_peak_bytes(lambda: step(m, inputs[0]))
            torch.cuda.synchronize()
        else:
            peak[name] = cpu_peak_bytes(lambda: step(m, inputs[0]))
    times = {k: [] for k in models}
    spent, reps = 0.0, 0
    names = list(models)
    while (spent < min_time or reps < 3) and reps < 200:
        x = inputs[reps % len(inputs)]
        for name in (names if reps % 2 == 0 else names[::-1]):
            dt = timer(lambda: step(models[name], x))
            times[name].append(dt)
            spent += dt
        reps += 1
    med = {k: statistics.median(v) for k, v in times.items()}
    fl = flops_forward(c) * (3 if training else 1)
    row = dict(c, mode=mode, dtype=str(dtype).replace("torch.", ""), reps=reps,
               fused_ms=med["lstm_fused"] * 1e3,
               fused_us_per_step=med["lstm_fused"] * 1e6 / (c["T"] * c["layers"]), fused_tflops=fl / med["lstm_fused"] / 1e12,
               fused_peak_mb=mb(peak["lstm_fused"]))
    for k in baselines:
        row[f"{k}_ms"] = med[k] * 1e3
        row[f"speedup_vs_{k}"] = med[k] / med["lstm_fused"]
        row[f"{k}_peak_mb"] = mb(peak[k])
    return row


def mb(nbytes):
    return None if nbytes is None else nbytes / 2**20


def geomean(xs):
    xs = [x for x in xs if x]
    return float(torch.tensor(xs, dtype=torch.float64).log().mean().exp()) if xs else float("nan")


def shape_of(r):
    s = f"{r['kind']} T{r['T']} B{r['B']} H{r['H']}" + (f" I{r['I']}" if r["I"] != r["H"] else "")
    if r["layers"] > 1 or r["bidir"]:
        s += f" L{r['layers']}{' bi' if r['bidir'] else ''}"
    return s + (" packed" if r["packed"] else "")


def fmt(v, spec, suffix=""):
    return format(v, spec) + suffix if isinstance(v, (int, float)) else "–"


def table(rows):
    lines = ["| case | mode | lstm_fused ms | µs/step | nn ms | loop ms | vs nn | vs loop | vs loop+compile | "
             "vs own step kernels | TFLOP/s | peak MB (ours / nn) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {shape_of(r)} | {r['mode']} | {r['fused_ms']:.3f} | {r['fused_us_per_step']:.1f} | "
            f"{fmt(r.get('nn_ms'), '.3f')} | "
            f"{fmt(r.get('loop_ms'), '.3f')} | {fmt(r.get('speedup_vs_nn'), '.2f', 'x')} | "
            f"{fmt(r.get('speedup_vs_loop'), '.2f', 'x')} | {fmt(r.get('speedup_vs_loop+c'), '.2f', 'x')} | "
            f"{fmt(r.get('speedup_vs_step'), '.2f', 'x')} | "
            f"{r['fused_tflops']:.3f} | {fmt(r.get('fused_peak_mb'), '.1f')} / {fmt(r.get('nn_peak_mb'), '.1f')} |")
    return "\n".join(lines)


def plots(rows, out_dir, stamp):
    """Speedup over nn.LSTM against batch and against hidden size, one pair of figures per dtype."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)")
        return []
    paths = []
    for dt in sorted({r["dtype"] for r in rows}):
        paths += dtype_plots(plt, [r for r in rows if r["dtype"] == dt], out_dir, f"{stamp}_{dt}")
    return paths


def dtype_plots(plt, rows, out_dir, stamp):
    paths = []
    lstm = [r for r in rows if r["kind"] == "lstm" and not r["packed"] and r["layers"] == 1 and r["I"] == r["H"]
            and "speedup_vs_nn" in r]
    if not lstm:
        return paths
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("inference", "training")):
        for H in sorted({r["H"] for r in lstm}):
            pts = sorted((r["B"], r["speedup_vs_nn"]) for r in lstm if r["mode"] == mode and r["H"] == H)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"H={H}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("speedup vs nn.LSTM")
        ax.set_title(f"LSTM {mode} ({rows[0]['dtype']})")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f"speedup_vs_batch_{stamp}.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in ("inference", "training"):
        for B in sorted({r["B"] for r in lstm}):
            pts = sorted((r["H"], r["speedup_vs_nn"]) for r in lstm if r["mode"] == mode and r["B"] == B)
            if pts:
                ax.plot(*zip(*pts), marker="o" if mode == "training" else "s", label=f"{mode} B={B}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("hidden size")
    ax.set_ylabel("speedup vs nn.LSTM")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f"speedup_vs_hidden_{stamp}.png")
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small grid (about a minute on 2 CPU cores)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (default), float64, bfloat16, float16; comma-separated")
    ap.add_argument("--modes", default="inference,training")
    ap.add_argument("--kinds", default=None, help="subset of lstm,gru,lstm-peephole,lstm-coupled,lstm-weightdrop,"
                    "gru-weightdrop,lstm-zoneout,gru-zoneout,lstm-layernorm,gru-layernorm")
    ap.add_argument("--min-time", type=float, default=None, help="seconds of timed runs per case and model")
    ap.add_argument("--baselines", default="nn,loop,step", help="which baselines to run: nn, loop (loop+c follows loop), step (CUDA)")
    ap.add_argument("--no-compiled-loop", action="store_true",
                    help="skip loop+c on the full grid too (compiling a T-step loop takes minutes per row)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not lstm_fused.has_cuda_kernels():
        sys.exit("suite: this lstm_fused build has no CUDA kernels; rebuild with CUDA (see README) or pass --device cpu")
    dtypes = (args.dtype or ("float32,bfloat16,float16" if device.type == "cuda" and not args.quick else "float32")).split(",")
    grid = gpu_grid(args.quick) if device.type == "cuda" else cpu_grid(args.quick)
    if args.kinds:
        grid = [c for c in grid if c["kind"] in args.kinds.split(",")]
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.6)
    modes = args.modes.split(",")
    timer = Timer(device)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lstm_fused": lstm_fused.__version__,
    }
    print(f"# lstm_fused benchmark on {device.type} ({meta['device']}, {meta['threads']} threads), torch {torch.__version__}")
    os.makedirs(args.out, exist_ok=True)
    rows = []
    total = len(grid) * len(modes) * len(dtypes)
    start = time.time()
    for dt_name in dtypes:
        dtype = getattr(torch, dt_name)
        for c in grid:
            for mode in modes:
                compiled_loop = (not args.quick and not args.no_compiled_loop and c["T"] <= 100 and c["B"] == 16
                                 and c["layers"] == 1 and not c["packed"])
                rows.append(bench_case(c, mode, device, dtype, min_time, timer, compiled_loop,
                                       tuple(args.baselines.split(","))))
                done = len(rows)
                eta = (time.time() - start) / done * (total - done)
                bar = "#" * (30 * done // total)
                print(f"\r[{bar:<30}] {done}/{total} {shape_of(c)} {mode} {dt_name}  eta {eta:4.0f}s",
                      end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    md = table(rows)
    print(md)
    summary = {}
    for dt_name in dtypes:
        for mode in modes:
            sel = [r for r in rows if r["mode"] == mode and r["dtype"] == dt_name]
            for base in ("nn", "loop", "step"):
                for kind in sorted({r["kind"] for r in sel}):
                    g = geomean(r.get(f"speedup_vs_{base}") for r in sel if r["kind"] == kind)
                    if g == g:
                        summary[f"{dt_name} {mode} {kind} vs {base}"] = g
    # Packed input against the same shape padded (the packed rows' lengths are drawn from [T/2, T]).
    for r in rows:
        if r["packed"]:
            padded = [p for p in rows if not p["packed"] and p["mode"] == r["mode"] and p["dtype"] == r["dtype"]
                      and all(p[k] == r[k] for k in ("kind", "T", "B", "I", "H", "layers", "bidir"))]
            if padded:
                summary[f"{r['dtype']} {r['mode']} {shape_of(r)}: time / padded time"] = r["fused_ms"] / padded[0]["fused_ms"]
    for k, v in summary.items():
        print(f"geometric mean speedup, {k}: {v:.2f}x" if " vs " in k else f"{k}: {v:.2f}")
    stamp = f"{device.type}{'_quick' if args.quick else ''}"
    with open(os.path.join(args.out, f"results_{stamp}.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    keys = sorted({k for r in rows for k in r})
    with open(os.path.join(args.out, f"results_{stamp}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(args.out, f"results_{stamp}.md"), "w") as f:
        f.write(f"lstm_fused benchmark, {meta['date']}, {device.type} ({meta['device']}), torch {meta['torch']}\n\n")
        f.write(md + "\n\n" + "\n".join(f"- {k}: {v:.2f}{'x' if ' vs ' in k else ''}" for k, v in summary.items()) + "\n")
    paths = plots(rows, args.out, stamp)
    print(f"results written to {args.out} (json, csv, md{', png' if paths else ''})")


if __name__ == "__main__":
    main()
