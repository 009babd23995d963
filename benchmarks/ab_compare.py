"""Compares two builds of lstm_fused on the benchmark suite's CPU grid (a change that must not cost speed).

    python benchmarks/ab_compare.py BEFORE.json [BEFORE2.json ...] -- AFTER.json [AFTER2.json ...]

Each file is a suite result (`benchmarks/suite.py --baselines nn --out DIR` writes DIR/results_cpu.json); give each
build's runs alternately taken in one sitting. Per row (case, mode) it takes each build's best speedup over nn.LSTM
in the same run — dividing by nn's time in that run cancels the machine's drift between runs — or, for the variants
nn has no twin of, the best lstm_fused time itself, and prints after / before as a speed ratio (> 1: faster after);
rows below 0.97 are flagged. Exit status 1 when any row is.
"""
import json
import sys


def best_speedups(paths):
    best = {}
    for p in paths:
        with open(p) as f:
            for r in json.load(f)["rows"]:
                key = (r["kind"], r["T"], r["B"], r["I"], r["H"], r["layers"], r["bidir"], r["packed"], r["mode"])
                # Speed relative to nn where nn has a twin, else absolute speed (1 / ms).
                speed = r["speedup_vs_nn"] if "speedup_vs_nn" in r else 1.0 / r["fused_ms"]
                best[key] = max(best.get(key, 0.0), speed)
    return best


def main(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    before, after = best_speedups(argv[:cut]), best_speedups(argv[cut + 1:])
    print("| case | mode | before (vs nn, or 1/ms) | after | after / before |")
    print("|---|---|---|---|---|")
    slow = 0
    ratios = []
    for key in sorted(before.keys() & after.keys()):
        kind, T, B, I, H, layers, bidir, packed, mode = key
        case = f"{kind} T{T} B{B} H{H}" + (f" I{I}" if I != H else "") + (f" L{layers}" if layers > 1 else "") + \
               (" bi" if bidir else "") + (" packed" if packed else "")
        ratio = after[key] / before[key]
        ratios.append(ratio)
        flag = " **slower**" if ratio < 0.97 else ""
        slow += ratio < 0.97
        print(f"| {case} | {mode} | {before[key]:.2f}x | {after[key]:.2f}x | {ratio:.3f}{flag} |")
    gm = 1.0
    for r in ratios:
        gm *= r
    print(f"\n{len(ratios)} rows; geometric mean after / before {gm ** (1 / max(1, len(ratios))):.3f}; "
          f"min {min(ratios):.3f}; {slow} rows below 0.97")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
