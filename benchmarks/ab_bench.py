"""Before/after speed of two builds of lstm_fused, interleaved case by case (for a change that must not cost speed).

    python benchmarks/ab_bench.py PYTHON_BEFORE PYTHON_AFTER [--reps 5] [--quick] [--only "LABEL|mode" ...]

Each PYTHON is an interpreter whose environment holds one build. Worker processes time the
benchmark suite's CPU grid (benchmarks/suite.py's cpu_grid: lstm_fused's inference forward and its training
forward + backward, float32); the controller asks them in turn, case by case and round by round, so the machine's
drift over the sitting falls on both builds alike, and keeps each build's best time per row. Each build runs in
two worker processes (see main). Prints after / before
as a speed ratio per row (> 1: faster after) and flags rows below 0.97; exit status 1 when any row is. --only
re-times just the rows named as printed ("lstm T100 B16 H256|inference"), e.g. the flagged ones with more rounds.
"""
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker():
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    import lstm_fused
    sys.path.insert(0, HERE)
    torch.set_grad_enabled(True)
    models = {}
    for line in sys.stdin:
        c, mode, seconds = json.loads(line)
        key = json.dumps(c, sort_keys=True)
        if key not in models:
            torch.manual_seed(0)
            variant = {"lstm-peephole": dict(peephole=True), "lstm-coupled": dict(coupled=True)}.get(c["kind"], {})
            cls = lstm_fused.GRU if c["kind"] == "gru" else lstm_fused.LSTM
            m = cls(c["I"], c["H"], num_layers=c["layers"], bidirectional=c["bidir"], **variant)
            x = torch.randn(c["T"], c["B"], c["I"])
            if c["packed"]:
                g = torch.Generator().manual_seed(1)
                lengths = torch.randint(c["T"] // 2, c["T"] + 1, (c["B"],), generator=g)
                lengths[0] = c["T"]
                x = pack_padded_sequence(x, lengths, enforce_sorted=False)
            models[key] = (m, x)
        m, x = models[key]

        def run():
            if mode == "inference":
                with torch.no_grad():
                    m.eval()
                    m(x)
            else:
                m.train()
                out = m(x)[0]
                (out.data if hasattr(out, "data") and c["packed"] else out).sum().backward()

        run()
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            run()
            n += 1
        print(json.dumps((time.perf_counter() - t0) / n * 1e3), flush=True)


def label(c):
    return f"{c['kind']} T{c['T']} B{c['B']} H{c['H']}" + (f" I{c['I']}" if c["I"] != c["H"] else "") + \
        (f" L{c['layers']}" if c["layers"] > 1 else "") + (" bi" if c["bidir"] else "") + (" packed" if c["packed"] else "")


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    reps = int(argv[argv.index("--reps") + 1]) if "--reps" in argv else 5
    sys.path.insert(0, HERE)
    from suite import cpu_grid
    grid = cpu_grid("--quick" in argv)
    # Two workers per build, in the order A B B A: on a shared VM a process can stay a few percent slower than its
    # twin for the whole sitting (measured: the same build in two processes, 2.5-5% apart), so each build gets a
    # process in both positions and keeps the better.
    builds = [0, 1, 1, 0]
    procs = [subprocess.Popen([argv[b], os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd="/") for b in builds]
    best = [{}, {}]
    rows = [(c, mode) for c in grid for mode in ("inference", "training")]
    only = [argv[i + 1] for i, a in enumerate(argv) if a == "--only"]
    if only:
        rows = [(c, mode) for c, mode in rows if f"{label(c)}|{mode}" in only]
    for r in range(reps):
        for c, mode in rows:
            for k in range(len(procs)):  # rotate which worker goes first
                i = (k + r) % len(procs)
                procs[i].stdin.write(json.dumps((c, mode, 0.2)) + "\n")
                procs[i].stdin.flush()
                ms = json.loads(procs[i].stdout.readline())
                key = (json.dumps(c, sort_keys=True), mode)
                best[builds[i]][key] = min(best[builds[i]].get(key, float("inf")), ms)
        print(f"round {r + 1}/{reps} done", file=sys.stderr, flush=True)
    for p in procs:
        p.stdin.close()
        p.wait()
    print("| case | mode | before ms | after ms | speed after / before |\n|---|---|---|---|---|")
    ratios, slow = [], 0
    for c, mode in rows:
        key = (json.dumps(c, sort_keys=True), mode)
        b, a = best[0][key], best[1][key]
        ratio = b / a
        ratios.append(ratio)
        slow += ratio < 0.97
        print(f"| {label(c)} | {mode} | {b:.3f} | {a:.3f} | {ratio:.3f}{' **slower**' if ratio < 0.97 else ''} |")
    gm = 1.0
    for r in ratios:
        gm *= r
    print(f"\n{len(ratios)} rows, best of {reps} interleaved rounds each; geometric mean {gm ** (1 / len(ratios)):.3f}; "
          f"min {min(ratios):.3f}; {slow} rows below 0.97")
    return 1 if slow else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        worker()
    else:
        sys.exit(main(sys.argv[1:]))
