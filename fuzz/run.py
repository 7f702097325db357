#!/usr/bin/env python3
"""Builds the libFuzzer tree and runs its harnesses (docs/architecture.md §8, "Test suites").

    fuzz/run.py [--seconds N] [--build-dir DIR] [--seeds] [NAME ...]   run NAME (default: all)
    fuzz/run.py --build-only [--build-dir DIR]                        configure and build only
    fuzz/run.py --report DIR                                          figures of a `meson test` run

Each harness runs for N seconds (default 60) with the command line of its `libfuzzer` test in
fuzz/meson.build (read back with `meson introspect`, so the flags live in one place); new corpus
entries go to DIR/fuzz/corpus/NAME, crash inputs are kept as DIR/fuzz/crashes/NAME-crash-<sha1>
(also -timeout-, -oom-, -leak-). Prints one line per harness: executions, new corpus entries,
crash inputs. Exits 1 when a harness failed or left a crash input. --seeds first rewrites the
seed corpora in fuzz/corpus (make_seeds, and `capnp compile -o-` for the plugin's requests).
DIR (default build-fuzz) is configured with clang when missing.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
PLUGIN_SEEDS = {"no_interfaces": "tests/codegen/no_interfaces.capnp", "calculator_v1": "tests/codegen/evolution/v1.capnp"}


def configure(build: Path) -> None:
    if not (build / "build.ninja").exists():
        env = dict(os.environ, CC="clang", CXX="clang++")
        subprocess.run(["meson", "setup", str(build), "--wrap-mode=nofallback", "-Dfuzzing=true", "-Db_lundef=false",
                        "-Dbuildtype=debugoptimized", "-Dtests=false", "-Dbenchmarks=false", "-Dexamples=false"],
                       cwd=ROOT, env=env, check=True)
    subprocess.run(["ninja", "-C", str(build), "-j2"], cwd=ROOT, check=True)


def seeds(build: Path) -> None:
    corpus = ROOT / "fuzz" / "corpus"
    subprocess.run([str(build / "fuzz" / "make_seeds"), str(corpus)], check=True)
    for name, schema in PLUGIN_SEEDS.items():
        with open(corpus / "plugin" / name, "wb") as out:
            subprocess.run(["capnp", "compile", "-I" + str(ROOT / "schemas"), "-o-", schema], cwd=ROOT, stdout=out,
                           check=True)


def in_suite(test: dict) -> bool:
    """Whether a test of `meson introspect --tests` is a libfuzzer one."""
    return any(s.split(":")[-1] == "libfuzzer" for s in test.get("suite", []))


def harnesses(build: Path) -> dict:
    """name -> command line of the harness's libfuzzer test."""
    tests = json.loads(subprocess.run(["meson", "introspect", str(build), "--tests"], capture_output=True, text=True,
                                      check=True).stdout)
    return {t["name"]: t["cmd"] for t in tests if in_suite(t)}


def crashes(build: Path, name: str) -> list:
    folder = build / "fuzz" / "crashes"
    return sorted(str(p) for p in folder.glob(name + "-*")) if folder.is_dir() else []


def corpus_size(build: Path, name: str) -> int:
    folder = build / "fuzz" / "corpus" / name
    return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0


def run(build: Path, names: list, seconds: int) -> int:
    cmds = harnesses(build)
    unknown = [n for n in names if n not in cmds]
    if unknown:
        sys.exit(f"unknown harness {', '.join(unknown)}; known: {', '.join(sorted(cmds))}")
    logs = build / "fuzz" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in names or sorted(cmds):
        before, corpus_before = set(crashes(build, name)), corpus_size(build, name)
        start = time.monotonic()
        with open(logs / (name + ".log"), "w") as log:
            rc = subprocess.run(cmds[name] + [f"-max_total_time={seconds}"], stdout=log, stderr=subprocess.STDOUT).returncode
        text = (logs / (name + ".log")).read_text(errors="replace")
        found = EXECS.findall(text)
        new = [c for c in crashes(build, name) if c not in before]
        print(f"{name}: {found[-1] if found else '?'} executions in {time.monotonic() - start:.0f} s, "
              f"{corpus_size(build, name) - corpus_before} new corpus entries, {len(new)} crash inputs"
              + (f" ({', '.join(new)}; log {logs / (name + '.log')})" if new or rc else ""))
        if rc != 0 or new:
            status = 1
    return status


def report(build: Path) -> int:
    """Executions per harness from the meson test log of a libfuzzer run."""
    status = 0
    for line in open(build / "meson-logs" / "testlog.json"):
        t = json.loads(line)
        if not t.get("command", [""])[0].endswith("_fuzzer"):  # testlog.json names no suite
            continue
        found = EXECS.findall((t.get("stdout") or "") + (t.get("stderr") or ""))
        print(f"libfuzzer {t['name']}: {t['result']}, {found[-1] if found else '?'} executions in "
              f"{t.get('duration', 0):.0f} s, crash inputs: {len(crashes(build, t['name']))}")
        status |= t["result"] != "OK"
    return status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="harnesses to run (default: all)")
    p.add_argument("--seconds", type=int, default=60, help="seconds per harness (default 60)")
    p.add_argument("--build-dir", default="build-fuzz", help="the clang build directory (default build-fuzz)")
    p.add_argument("--seeds", action="store_true", help="rewrite the seed corpora first")
    p.add_argument("--build-only", action="store_true", help="configure and build the tree, run nothing")
    p.add_argument("--report", metavar="DIR", help="only print the figures of a `meson test` run in DIR")
    a = p.parse_args()
    if a.report:
        return report(Path(a.report).resolve())
    build = (ROOT / a.build_dir).resolve()
    configure(build)
    if a.build_only:
        return 0
    if a.seeds:
        seeds(build)
    return run(build, a.names, a.seconds)


if __name__ == "__main__":
    sys.exit(main())
