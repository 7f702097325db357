#!/usr/bin/env python3
"""Turns ring_bench's JSON output into markdown tables and checks the issue-2 targets.

    build/bench/ring_bench --benchmark_format=json > out.json
    python3 bench/compare.py out.json            # tables + target ratios
    python3 bench/compare.py out.json --check    # same, exit status 1 if a target is missed

Benchmark names are PingPong/<transport>/<bytes> and Stream/<transport>/<bytes>; Google Benchmark
may append "/min_time:0.500/manual_time" and, with --benchmark_repetitions, aggregate suffixes.
With repetitions the "median" aggregate is used when present, else the median of the repetitions.
Ratios are only meaningful between numbers from the same run: give one JSON file per invocation.
"""

import argparse
import json
import signal
import statistics
import sys

TRANSPORTS = ["floor_spin", "futex_floor", "pipe", "uds", "boost_mq", "ring_spin", "ring_parked"]
COUNTERS = ["p50_ns", "p99_ns", "msgs_per_s"]

# (label, kind, bytes or None for every size, numerator transport, denominator transport, counter,
#  comparison, threshold)
TARGETS = [
    ("ring_spin RTT p50 / floor_spin RTT p50", "PingPong", None, "ring_spin", "floor_spin", "p50_ns", "<=", 1.5),
    ("ring_parked RTT p50 / futex_floor RTT p50", "PingPong", None, "ring_parked", "futex_floor", "p50_ns", "<=", 1.15),
    ("Stream ring_spin msgs/s / floor_spin msgs/s", "Stream", 64, "ring_spin", "floor_spin", "msgs_per_s", ">=", 2.0),
]


def load(path):
    """Returns {(kind, transport, bytes): {counter: value}} from one Google Benchmark JSON file."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    runs = {}        # key -> list of per-repetition counter dicts
    medians = {}     # key -> counter dict from a "median" aggregate
    reps = 1
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        parts = b.get("run_name", b["name"]).split("/")
        if len(parts) < 3 or parts[0] not in ("PingPong", "Stream") or not parts[2].isdigit():
            continue
        key = (parts[0], parts[1], int(parts[2]))
        values = {c: float(b[c]) for c in COUNTERS if c in b}
        reps = max(reps, int(b.get("repetitions", 1)))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[key] = values
        else:
            runs.setdefault(key, []).append(values)
    result = {}
    for key, samples in runs.items():
        if key in medians:
            result[key] = medians[key]
        else:
            result[key] = {c: statistics.median(r[c] for r in samples) for c in COUNTERS
                           if all(c in r for r in samples)}
    for key, values in medians.items():
        result.setdefault(key, values)
    return result, doc.get("context", {}), reps


def fmt_ns(v):
    if v is None:
        return "–"
    if v >= 10000:
        return f"{v / 1000:,.1f} µs"
    return f"{v:,.0f} ns"


def fmt_rate(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M/s"
    return f"{v / 1e3:.1f} k/s"


def get(data, kind, transport, size, counter):
    return data.get((kind, transport, size), {}).get(counter)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json_file")
    ap.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    args = ap.parse_args()

    data, context, reps = load(args.json_file)
    if not data:
        print(f"{args.json_file}: no PingPong/ or Stream/ results", file=sys.stderr)
        return 2

    out = []
    ctx = ", ".join(f"{k}: {context[k]}" for k in ("date", "host_name", "num_cpus", "mhz_per_cpu", "pinning")
                    if k in context)
    if reps > 1:
        ctx += f"{', ' if ctx else ''}values: median of {reps} repetitions"
    if ctx:
        out.append(f"Run: {ctx}\n")

    sizes = sorted({s for (k, _, s) in data if k == "PingPong"})
    if sizes:
        out.append("### PingPong: round trip, p50 / p99 (round trips/s)\n")
        header = "| transport | " + " | ".join(f"{s} B" for s in sizes) + " |"
        out.append(header)
        out.append("|---|" + "---|" * len(sizes))
        for t in TRANSPORTS:
            cells = []
            for s in sizes:
                p50 = get(data, "PingPong", t, s, "p50_ns")
                p99 = get(data, "PingPong", t, s, "p99_ns")
                rate = get(data, "PingPong", t, s, "msgs_per_s")
                cells.append("–" if p50 is None else f"{fmt_ns(p50)} / {fmt_ns(p99)} ({fmt_rate(rate)})")
            if any(c != "–" for c in cells):
                out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")

    ssizes = sorted({s for (k, _, s) in data if k == "Stream"})
    if ssizes:
        out.append("### Stream: one-way messages per second\n")
        out.append("| transport | " + " | ".join(f"{s} B" for s in ssizes) + " |")
        out.append("|---|" + "---|" * len(ssizes))
        for t in TRANSPORTS:
            cells = [fmt_rate(get(data, "Stream", t, s, "msgs_per_s")) for s in ssizes]
            if any(c != "–" for c in cells):
                out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")

    out.append("### Targets (ratios within this run)\n")
    out.append("| ratio | bytes | numerator | denominator | ratio | target | met |")
    out.append("|---|---|---|---|---|---|---|")
    missed = 0
    for label, kind, size, num, den, counter, op, threshold in TARGETS:
        for s in ([size] if size is not None else sizes):
            a = get(data, kind, num, s, counter)
            b = get(data, kind, den, s, counter)
            show = fmt_rate if counter == "msgs_per_s" else fmt_ns
            if a is None or b is None or b == 0:
                out.append(f"| {label} | {s} | {show(a)} | {show(b)} | – | {op} {threshold} | missing |")
                missed += 1
                continue
            r = a / b
            ok = r <= threshold if op == "<=" else r >= threshold
            missed += not ok
            out.append(f"| {label} | {s} | {show(a)} | {show(b)} | {r:.2f} | {op} {threshold} | "
                       f"{'yes' if ok else '**no**'} |")
    print("\n".join(out))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `compare.py out.json | head` ends quietly
    sys.exit(main())
