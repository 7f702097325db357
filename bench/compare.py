#!/usr/bin/env python3
"""Turns ring_bench's or bus_bench's JSON output into markdown tables and ratios.

    build/bench/bus_bench --benchmark_format=json | python3 bench/compare.py     # JSON on stdin
    build/bench/ring_bench --benchmark_format=json > out.json
    python3 bench/compare.py out.json            # tables + target ratios
    python3 bench/compare.py out.json --check    # same, exit status 1 if a ring_bench target is missed

Benchmark names are PingPong/<transport>/<bytes>, Stream/<transport>/<bytes> and (bus_bench)
Invoke/<route>/<bytes>[/<mode>] (spin, parked, learned, learned_1ms, ...; PingPong may have one too:
ring_parked/64/1ms); Google Benchmark may append "/min_time:0.500/manual_time"
and, with --benchmark_repetitions, aggregate suffixes. With repetitions the "median" aggregate is
used when present, else the median of the repetitions.

Printed: the PingPong, Invoke and Stream tables; ring_bench's targets (when its transports are
there); and for bus_bench every ratio against the D-Bus peer (Invoke/dbus_method, Stream/dbus_signal):
latency p50 ours / D-Bus (below 1: faster than D-Bus) and throughput ours / D-Bus (above 1: more
messages per second than D-Bus), plus each call against the ring round trip of the same run
(every call / ring_parked, and the spinning calls also / ring_spin).
Ratios are only meaningful between numbers from the same run: give one JSON document per invocation.
"""

import argparse
import json
import signal
import statistics
import sys

KINDS = ("PingPong", "Stream", "Invoke")
# Display order; transports not listed here follow in name order.
TRANSPORTS = ["floor_spin", "futex_floor", "pipe", "uds", "boost_mq", "ring_spin", "ring_parked", "ring_parked/1ms",
              "window_to_main", "window_to_window_routed", "window_to_window_direct", "port", "dbus_signal",
              "port_stream", "routed_stream", "direct_stream", "memcpy"]
ROUTES = ["window_to_main/spin", "window_to_main/parked", "window_to_main/learned", "port/spin", "port/parked",
          "port/learned", "port_blob/default", "port_blob/spin", "window_to_main_blob/default",
          "window_to_window_direct_blob/default",
          "window_to_window_routed/spin", "window_to_window_routed/parked",
          "window_to_window_routed/learned", "window_to_window_routed/learned_1ms",
          "window_to_window_routed/parked_1ms", "window_to_window_direct/spin", "window_to_window_direct/parked",
          "window_to_window_direct/learned", "window_to_window_direct/learned_1ms",
          "window_to_window_direct/parked_1ms", "window_to_window_routed_traced/spin",
          "window_to_window_routed_traced/parked", "window_to_main_untyped/parked", "window_to_main_typed/parked",
          "dbus_method", "dbus_method/1ms"]
COUNTERS = ["p50_ns", "p99_ns", "msgs_per_s", "bytes_per_s", "full_retries", "credit_waits", "dbus_flushes"]
SENDER_WAITS = [("full_retries", "Full retries"), ("credit_waits", "credit waits"), ("dbus_flushes", "blocking flushes")]
DBUS_CALL = "dbus_method"
DBUS_STREAM = "dbus_signal"

# ring_bench targets: (label, kind, bytes or None for every size, numerator transport, denominator
# transport, counter, comparison, threshold)
TARGETS = [
    ("ring_spin RTT p50 / floor_spin RTT p50", "PingPong", None, "ring_spin", "floor_spin", "p50_ns", "<=", 1.5),
    ("ring_parked RTT p50 / futex_floor RTT p50", "PingPong", None, "ring_parked", "futex_floor", "p50_ns", "<=", 1.15),
    ("Stream ring_spin msgs/s / floor_spin msgs/s", "Stream", 64, "ring_spin", "floor_spin", "msgs_per_s", ">=", 2.0),
]


def parse_name(name):
    """(kind, transport, bytes) of a benchmark name, or None when it is not one of ours.
    An Invoke's transport includes its mode: "window_to_main/parked"."""
    parts = name.split("/")
    if len(parts) < 3 or parts[0] not in KINDS or not parts[2].isdigit():
        return None
    transport = parts[1]
    # A fourth part is the mode ("parked", "learned_1ms", PingPong's "1ms"), unless it is one of
    # Google Benchmark's suffixes ("min_time:0.300", "iterations:2000", "manual_time").
    if len(parts) > 3 and ":" not in parts[3] and parts[3] not in ("manual_time", "real_time"):
        transport += "/" + parts[3]
    return parts[0], transport, int(parts[2])


def load(stream):
    """Returns ({(kind, transport, bytes): {counter: value}}, context, repetitions) from one
    Google Benchmark JSON document."""
    doc = json.load(stream)
    runs = {}        # key -> list of per-repetition counter dicts
    medians = {}     # key -> counter dict from a "median" aggregate
    reps = 1
    for b in doc.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        key = parse_name(b.get("run_name", b["name"]))
        if key is None:
            continue
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


def fmt_bandwidth(v):
    return "–" if v is None else f"{v / 1e9:.2f} GB/s"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return f"{a / b:.2f}"


def get(data, kind, transport, size, counter):
    return data.get((kind, transport, size), {}).get(counter)


def ordered(names, order):
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def latency_table(out, data, kind, title, order):
    keys = [(t, s) for (k, t, s) in data if k == kind]
    if not keys:
        return
    sizes = sorted({s for _, s in keys})
    out.append(f"### {title}\n")
    out.append("| transport | " + " | ".join(f"{s} B" for s in sizes) + " |")
    out.append("|---|" + "---|" * len(sizes))
    for t in ordered({t for t, _ in keys}, order):
        cells = []
        for s in sizes:
            p50 = get(data, kind, t, s, "p50_ns")
            p99 = get(data, kind, t, s, "p99_ns")
            rate = get(data, kind, t, s, "msgs_per_s")
            cells.append("–" if p50 is None else f"{fmt_ns(p50)} / {fmt_ns(p99)} ({fmt_rate(rate)})")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out.append("")


def stream_table(out, data):
    keys = [(t, s) for (k, t, s) in data if k == "Stream"]
    if not keys:
        return
    sizes = sorted({s for _, s in keys})
    transports = ordered({t for t, _ in keys}, TRANSPORTS)
    waits = any(c in data[("Stream", t, s)] for t, s in keys for c, _ in SENDER_WAITS)
    out.append("### Stream: one-way messages per second\n")
    out.append("| transport | " + " | ".join(f"{s} B" for s in sizes) + (" | sender waited |" if waits else " |"))
    out.append("|---|" + "---|" * (len(sizes) + (1 if waits else 0)))
    for t in transports:
        cells = [fmt_rate(get(data, "Stream", t, s, "msgs_per_s")) for s in sizes]
        if waits:
            notes = []
            for s in sizes:
                for c, label in SENDER_WAITS:
                    v = get(data, "Stream", t, s, c)
                    if v is not None:
                        notes.append(f"{v:,.0f} {label}")
            cells.append(", ".join(notes) or "–")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    out.append("")


def ratio_matrix(out, title, rows, sizes, data, show):
    """rows: [(label, (kind, transport), (kind, transport), counter)]; one cell per size:
    "ratio (numerator / denominator)". Rows without any value are left out."""
    lines = []
    for label, num, den, counter in rows:
        cells = []
        for s in sizes:
            a = get(data, num[0], num[1], s, counter)
            b = get(data, den[0], den[1], s, counter)
            r = fmt_ratio(a, b)
            cells.append("–" if r is None else f"{r} ({show(a)} / {show(b)})")
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not lines:
        return
    out.append(f"### {title}\n")
    out.append("| ratio | " + " | ".join(f"{s} B" for s in sizes) + " |")
    out.append("|---|" + "---|" * len(sizes))
    out.extend(lines)
    out.append("")


def dbus_ratios(out, data):
    invoke_sizes = sorted({s for (k, t, s) in data if k == "Invoke" and t == DBUS_CALL})
    if invoke_sizes:
        routes = ordered({t for (k, t, _) in data if k == "Invoke" and t != DBUS_CALL}, ROUTES)
        rows = [(f"Invoke/{t} ÷ D-Bus", ("Invoke", t), ("Invoke", DBUS_CALL), "p50_ns") for t in routes]
        rows += [(f"PingPong/{t} ÷ D-Bus", ("PingPong", t), ("Invoke", DBUS_CALL), "p50_ns")
                 for t in ordered({t for (k, t, _) in data if k == "PingPong"}, TRANSPORTS)]
        ratio_matrix(out, "Latency against D-Bus: p50 ours ÷ p50 D-Bus method call (below 1 = faster)",
                     rows, invoke_sizes, data, fmt_ns)
    stream_sizes = sorted({s for (k, t, s) in data if k == "Stream" and t == DBUS_STREAM})
    if stream_sizes:
        rows = [(f"Stream/{t} ÷ D-Bus signals", ("Stream", t), ("Stream", DBUS_STREAM), "msgs_per_s")
                for t in ordered({t for (k, t, _) in data if k == "Stream" and t != DBUS_STREAM}, TRANSPORTS)]
        ratio_matrix(out, "Throughput against D-Bus: msgs/s ours ÷ msgs/s D-Bus signals (above 1 = more)",
                     rows, stream_sizes, data, fmt_rate)


def baseline_ratios(out, data):
    sizes = sorted({s for (k, _, s) in data if k == "Invoke"})
    if not sizes:
        return
    rows = []
    for t in ordered({t for (k, t, _) in data if k == "Invoke"}, ROUTES):
        rows.append((f"Invoke/{t} ÷ ring_parked", ("Invoke", t), ("PingPong", "ring_parked"), "p50_ns"))
    for t in ordered({t for (k, t, _) in data if k == "Invoke" and t.endswith("/spin")}, ROUTES):
        rows.append((f"Invoke/{t} ÷ ring_spin", ("Invoke", t), ("PingPong", "ring_spin"), "p50_ns"))
    ratio_matrix(out, "Against the ring round trip of the same run: p50 ÷ p50", rows, sizes, data, fmt_ns)


def traced_ratios(out, data):
    """The cost of an attached inspector: each *_traced route ÷ the same route untraced."""
    traced = ordered({t for (k, t, _) in data if k == "Invoke" and "_traced/" in t}, ROUTES)
    if not traced:
        return
    sizes = sorted({s for (k, t, s) in data if k == "Invoke" and t in traced})
    rows = [(f"{t} ÷ {t.replace('_traced', '')}", ("Invoke", t), ("Invoke", t.replace("_traced", "")), "p50_ns")
            for t in traced]
    ratio_matrix(out, "Tracing with an inspector attached: p50 traced ÷ p50 untraced (target <= 1.1)", rows,
                 sizes, data, fmt_ns)


# Issue 13's targets within one bus_bench run: (label, (kind, transport, bytes) numerator,
# (kind, transport, bytes) denominator, comparison, threshold); threshold None = informational.
ISSUE13_TARGETS = [
    # Window to window with direct routes on (docs/architecture.md §19): the issue's targets;
    # through the supervisor (direct routes off) for comparison.
    ("Wait policy at 64 B (p50 ÷ p50)", [
        ("direct learned, back to back ÷ D-Bus", ("Invoke", "window_to_window_direct/learned", 64),
         ("Invoke", DBUS_CALL, 64), "<=", 0.1),
        ("direct learned, 1 ms apart ÷ D-Bus 1 ms apart", ("Invoke", "window_to_window_direct/learned_1ms", 64),
         ("Invoke", DBUS_CALL + "/1ms", 64), "<=", 0.75),
        ("direct learned, 1 ms apart ÷ ring_parked 1 ms apart", ("Invoke", "window_to_window_direct/learned_1ms", 64),
         ("PingPong", "ring_parked/1ms", 64), "<=", 1.2),
        ("direct parked, 1 ms apart ÷ ring_parked 1 ms apart", ("Invoke", "window_to_window_direct/parked_1ms", 64),
         ("PingPong", "ring_parked/1ms", 64), None, None),
        ("routed learned, back to back ÷ D-Bus", ("Invoke", "window_to_window_routed/learned", 64),
         ("Invoke", DBUS_CALL, 64), None, None),
        ("routed learned, 1 ms apart ÷ D-Bus 1 ms apart", ("Invoke", "window_to_window_routed/learned_1ms", 64),
         ("Invoke", DBUS_CALL + "/1ms", 64), None, None),
        ("routed learned, 1 ms apart ÷ ring_parked 1 ms apart", ("Invoke", "window_to_window_routed/learned_1ms", 64),
         ("PingPong", "ring_parked/1ms", 64), None, None),
        ("routed parked, 1 ms apart ÷ ring_parked 1 ms apart", ("Invoke", "window_to_window_routed/parked_1ms", 64),
         ("PingPong", "ring_parked/1ms", 64), None, None),
        ("window→main learned ÷ ring_spin", ("Invoke", "window_to_main/learned", 64), ("PingPong", "ring_spin", 64),
         None, None),
    ]),
    ("Large requests over a port (blobs): p50 ÷ p50 of the 64 B request", [
        ("port invoke 1 MiB ÷ 64 B", ("Invoke", "port_blob/default", 1 << 20), ("Invoke", "port_blob/default", 64),
         "<=", 1.2),
        ("port invoke 64 MiB ÷ 64 B", ("Invoke", "port_blob/default", 64 << 20), ("Invoke", "port_blob/default", 64),
         "<=", 2.0),
        ("port invoke 1 MiB ÷ 64 B, both ends spinning", ("Invoke", "port_blob/spin", 1 << 20),
         ("Invoke", "port_blob/spin", 64), None, None),
        ("port invoke 64 MiB ÷ 64 B, both ends spinning", ("Invoke", "port_blob/spin", 64 << 20),
         ("Invoke", "port_blob/spin", 64), None, None),
    ]),
    ("Large requests to main and over a direct route (blobs): p50 ÷ p50 of the 64 B request", [
        ("window → main invoke 1 MiB ÷ 64 B", ("Invoke", "window_to_main_blob/default", 1 << 20),
         ("Invoke", "window_to_main_blob/default", 64), None, None),
        ("window → main invoke 16 MiB ÷ 64 B", ("Invoke", "window_to_main_blob/default", 16 << 20),
         ("Invoke", "window_to_main_blob/default", 64), None, None),
        ("direct-route invoke 1 MiB ÷ 64 B", ("Invoke", "window_to_window_direct_blob/default", 1 << 20),
         ("Invoke", "window_to_window_direct_blob/default", 64), None, None),
        ("direct-route invoke 16 MiB ÷ 64 B", ("Invoke", "window_to_window_direct_blob/default", 16 << 20),
         ("Invoke", "window_to_window_direct_blob/default", 64), None, None),
    ]),
    # A sixth element names the counter compared (default p50_ns).
    ("Streams of 1 GiB in 64 KiB chunks: bytes/s ÷ single-core memcpy bytes/s", [
        ("port stream ÷ memcpy", ("Stream", "port_stream", 65536), ("Stream", "memcpy", 64 << 20), ">=", 0.5,
         "bytes_per_s"),
        ("routed stream ÷ memcpy", ("Stream", "routed_stream", 65536), ("Stream", "memcpy", 64 << 20), None, None,
         "bytes_per_s"),
        ("direct-route stream ÷ memcpy", ("Stream", "direct_stream", 65536), ("Stream", "memcpy", 64 << 20), None,
         None, "bytes_per_s"),
    ]),
    ("One-way 64 B messages: messages/s ÷ D-Bus signals/s", [
        ("sendTo over a direct route ÷ D-Bus signals", ("Stream", "window_to_window_direct", 64),
         ("Stream", DBUS_STREAM, 64), ">=", 30, "msgs_per_s"),
        ("port send ÷ D-Bus signals", ("Stream", "port", 64), ("Stream", DBUS_STREAM, 64), None, None, "msgs_per_s"),
    ]),
]


def issue13_targets(out, data):
    """One table per ISSUE13_TARGETS group, with the rows this run has both sides of."""
    for title, rows in ISSUE13_TARGETS:
        lines = []
        for label, num, den, op, threshold, *counter in rows:
            counter = counter[0] if counter else "p50_ns"
            show = {"bytes_per_s": fmt_bandwidth, "msgs_per_s": fmt_rate}.get(counter, fmt_ns)
            a = get(data, num[0], num[1], num[2], counter)
            b = get(data, den[0], den[1], den[2], counter)
            if a is None or not b:
                continue
            r = a / b
            met = "–" if threshold is None else ("yes" if (r <= threshold if op == "<=" else r >= threshold) else "**no**")
            goal = "–" if threshold is None else f"{op} {threshold}"
            lines.append(f"| {label} | {show(a)} | {show(b)} | {r:.2f} | {goal} | {met} |")
        if lines:
            out.append(f"### {title}\n")
            out.append("| ratio | numerator | denominator | ratio | target | met |")
            out.append("|---|---|---|---|---|---|")
            out.extend(lines)
            out.append("")


def targets(out, data):
    """ring_bench's targets; returns the number missed. Left out for bus_bench's JSON (it has
    Invoke results and none of the floors)."""
    if any(k == "Invoke" for (k, _, _) in data):
        return 0
    wanted = TARGETS
    sizes = sorted({s for (k, _, s) in data if k == "PingPong"})
    out.append("### Targets (ratios within this run)\n")
    out.append("| ratio | bytes | numerator | denominator | ratio | target | met |")
    out.append("|---|---|---|---|---|---|---|")
    missed = 0
    for label, kind, size, num, den, counter, op, threshold in wanted:
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
    out.append("")
    return missed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json_file", nargs="?", default="-", help="Google Benchmark JSON (default: stdin)")
    ap.add_argument("--check", action="store_true", help="exit with status 1 if a ring_bench target is missed")
    args = ap.parse_args()

    if args.json_file == "-":
        data, context, reps = load(sys.stdin)
    else:
        with open(args.json_file, encoding="utf-8") as f:
            data, context, reps = load(f)
    if not data:
        print(f"{args.json_file}: no PingPong/, Invoke/ or Stream/ results", file=sys.stderr)
        return 2

    out = []
    ctx = ", ".join(f"{k}: {context[k]}" for k in ("date", "host_name", "num_cpus", "mhz_per_cpu", "pinning")
                    if k in context)
    if reps > 1:
        ctx += f"{', ' if ctx else ''}values: median of {reps} repetitions"
    if ctx:
        out.append(f"Run: {ctx}\n")

    latency_table(out, data, "PingPong", "PingPong: round trip, p50 / p99 (round trips/s)", TRANSPORTS)
    latency_table(out, data, "Invoke", "Invoke: call round trip, p50 / p99 (calls/s)", ROUTES)
    stream_table(out, data)
    dbus_ratios(out, data)
    baseline_ratios(out, data)
    traced_ratios(out, data)
    issue13_targets(out, data)
    missed = targets(out, data)
    print("\n".join(out).rstrip("\n"))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `compare.py out.json | head` ends quietly
    sys.exit(main())
